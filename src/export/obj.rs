//! Wavefront OBJ text: `v x y z [r g b]` per vertex and `f a b c` (1-based) per triangle.
//! Vertex colours use the widespread `v x y z r g b` extension (0..1 floats), read by
//! MeshLab, Blender and trimesh; readers without it ignore the extra numbers.

use std::fmt::Write;

use crate::error::{Error, Result};
use crate::pipeline::Mesh;

use super::check_mesh;

/// Encodes a mesh as OBJ, Y-up like the GLB (see the module docs of `export`). Floats are
/// written in Rust's shortest round-trip form, so reading the file back gives the same f32s.
pub fn mesh_to_obj(mesh: &Mesh) -> Result<Vec<u8>> {
    let mesh = check_mesh(mesh)?;
    let vertices = mesh.vertex_count();
    let faces = mesh.face_count();
    // Roughly 40 bytes a vertex line and 25 a face line.
    let mut text = String::with_capacity(64 + vertices * 40 + faces * 25);
    let written = (|| -> std::fmt::Result {
        writeln!(
            text,
            "# recon: {vertices} vertices, {faces} triangles, Y up, metres"
        )?;
        for i in 0..vertices {
            let [x, y, z] = mesh.position(i);
            match mesh.color(i) {
                Some([r, g, b]) => writeln!(text, "v {x} {y} {z} {r} {g} {b}")?,
                None => writeln!(text, "v {x} {y} {z}")?,
            }
        }
        for triangle in mesh.indices.chunks_exact(3) {
            let [a, b, c] = [triangle[0], triangle[1], triangle[2]].map(|i| u64::from(i) + 1);
            writeln!(text, "f {a} {b} {c}")?;
        }
        Ok(())
    })();
    written.map_err(|_| Error::internal("formatting OBJ text failed"))?;
    Ok(text.into_bytes())
}
