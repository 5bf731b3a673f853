//! glTF 2.0 binary (GLB) for a triangle mesh with per-vertex normals and optional colours.
//!
//! Hand-written rather than through a crate: the container is three headers and two padded
//! chunks, the JSON is a dozen objects built with `serde_json` (already a dependency), and the
//! glTF crates on crates.io are readers (`gltf`) or a full document model (`gltf-json`) whose
//! GLB writing still leaves padding, bounds and buffer layout to the caller. The test suite
//! parses the output back with the `gltf` crate, which validates it.
//!
//! Layout: one buffer (the BIN chunk) holding, tightly packed and each 4-byte aligned,
//! positions, normals, colours (when present) and the u32 indices, one bufferView each;
//! one mesh with one triangle primitive, one node, one scene. Units are metres, Y up (the
//! reference's `to_glb` frame, see `export`'s module docs).

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::pipeline::Mesh;

use super::{check_mesh, CheckedMesh};

/// "glTF", little-endian.
const MAGIC: u32 = 0x4654_6C67;
const VERSION: u32 = 2;
/// "JSON" and "BIN\0", little-endian.
const CHUNK_JSON: u32 = 0x4E4F_534A;
const CHUNK_BIN: u32 = 0x004E_4942;
/// glTF enums: component type FLOAT / UNSIGNED_INT, bufferView targets, primitive mode.
const FLOAT: u32 = 5126;
const UNSIGNED_INT: u32 = 5125;
const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;
const TRIANGLES: u32 = 4;

/// Encodes a mesh as GLB.
///
/// - `POSITION` (with the `min`/`max` bounds glTF requires), Y-up.
/// - `NORMAL`: per vertex, the area-weighted sum of the adjacent faces' normals, normalised
///   (see [`vertex_normals`]).
/// - `COLOR_0` (float RGB) when the mesh has colours. glTF defines vertex colours as *linear*
///   multipliers, while the decoder's colours are display (sRGB-encoded) values, learnt from
///   ordinary images; they are converted with the sRGB transfer function so a viewer shows the
///   colours the model predicted. (The reference bakes them into a texture, which glTF
///   declares sRGB, so it also displays them unchanged.)
/// - indices as u32; a material that is white, non-metallic and fully rough, so the colours are
///   not darkened by glTF's default metallic 1.0.
///
/// A mesh without triangles gives a valid GLB whose scene holds one empty node (glTF forbids
/// empty accessors).
pub fn mesh_to_glb(mesh: &Mesh) -> Result<Vec<u8>> {
    let mesh = check_mesh(mesh)?;
    let (json, bin) = if mesh.face_count() == 0 {
        (empty_document(), Vec::new())
    } else {
        document_with_mesh(&mesh)
    };
    let json = serde_json::to_vec(&json)
        .map_err(|e| Error::internal(format!("serialising the glTF JSON failed: {e}")))?;
    assemble(json, bin)
}

fn asset() -> Value {
    json!({ "version": "2.0", "generator": "recon" })
}

/// A scene holding one empty node: a scene without nodes is valid glTF, but some readers
/// (the `gltf` crate among them) require `scene.nodes`, and some viewers require a scene.
fn empty_document() -> Value {
    json!({
        "asset": asset(),
        "scene": 0,
        "scenes": [{ "nodes": [0] }],
        "nodes": [{ "name": "recon" }],
    })
}

/// The glTF JSON and the BIN chunk's bytes (unpadded) for a mesh with at least one triangle.
fn document_with_mesh(mesh: &CheckedMesh<'_>) -> (Value, Vec<u8>) {
    let vertices = mesh.vertex_count();
    let positions: Vec<[f32; 3]> = (0..vertices).map(|i| mesh.position(i)).collect();
    let normals = vertex_normals(&positions, mesh.indices);
    let colors: Option<Vec<[f32; 3]>> = mesh.colors.map(|_| {
        (0..vertices)
            .filter_map(|i| mesh.color(i))
            .map(|c| c.map(srgb_to_linear))
            .collect()
    });

    let mut bin = Vec::new();
    let mut views = Vec::new();
    let mut accessors = Vec::new();
    let mut attributes = serde_json::Map::new();

    let (min, max) = bounds(&positions);
    let view = push_view(&mut bin, &mut views, vec3_bytes(&positions), ARRAY_BUFFER);
    attributes.insert("POSITION".into(), json!(accessors.len()));
    accessors.push(json!({
        "bufferView": view, "componentType": FLOAT, "count": vertices, "type": "VEC3",
        "min": min, "max": max,
    }));
    let view = push_view(&mut bin, &mut views, vec3_bytes(&normals), ARRAY_BUFFER);
    attributes.insert("NORMAL".into(), json!(accessors.len()));
    accessors.push(json!({
        "bufferView": view, "componentType": FLOAT, "count": vertices, "type": "VEC3",
    }));
    if let Some(colors) = &colors {
        let view = push_view(&mut bin, &mut views, vec3_bytes(colors), ARRAY_BUFFER);
        attributes.insert("COLOR_0".into(), json!(accessors.len()));
        accessors.push(json!({
            "bufferView": view, "componentType": FLOAT, "count": vertices, "type": "VEC3",
        }));
    }
    let index_bytes: Vec<u8> = mesh.indices.iter().flat_map(|i| i.to_le_bytes()).collect();
    let view = push_view(&mut bin, &mut views, index_bytes, ELEMENT_ARRAY_BUFFER);
    let indices = accessors.len();
    accessors.push(json!({
        "bufferView": view, "componentType": UNSIGNED_INT, "count": mesh.indices.len(),
        "type": "SCALAR",
    }));

    let document = json!({
        "asset": asset(),
        "scene": 0,
        "scenes": [{ "nodes": [0] }],
        "nodes": [{ "mesh": 0, "name": "recon" }],
        "meshes": [{
            "name": "recon",
            "primitives": [{
                "attributes": attributes,
                "indices": indices,
                "material": 0,
                "mode": TRIANGLES,
            }],
        }],
        "materials": [{
            "name": "vertex colours",
            "pbrMetallicRoughness": {
                "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                "metallicFactor": 0.0,
                "roughnessFactor": 1.0,
            },
        }],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{ "byteLength": bin.len() }],
    });
    (document, bin)
}

/// Appends `bytes` to the BIN chunk as a new bufferView (4-byte aligned: every view holds
/// 4-byte components) and returns its index.
fn push_view(bin: &mut Vec<u8>, views: &mut Vec<Value>, bytes: Vec<u8>, target: u32) -> usize {
    pad_to_4(bin, 0);
    views.push(json!({
        "buffer": 0, "byteOffset": bin.len(), "byteLength": bytes.len(), "target": target,
    }));
    bin.extend_from_slice(&bytes);
    views.len() - 1
}

fn vec3_bytes(values: &[[f32; 3]]) -> Vec<u8> {
    values
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Per-component min and max (the values written, so they match the data exactly).
fn bounds(positions: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
    let mut min = [f32::INFINITY; 3];
    let mut max = [f32::NEG_INFINITY; 3];
    for p in positions {
        for k in 0..3 {
            min[k] = min[k].min(p[k]);
            max[k] = max[k].max(p[k]);
        }
    }
    (min, max)
}

/// Per-vertex normals: each triangle adds its cross product, whose length is twice its area,
/// to its three corners, so large faces weigh more than slivers; the sums are normalised.
/// Vertices with no (or only degenerate) triangles get +Y, since glTF requires unit normals.
/// Every index must be below `positions.len()` (`check_mesh` ensures it).
pub(crate) fn vertex_normals(positions: &[[f32; 3]], indices: &[u32]) -> Vec<[f32; 3]> {
    let mut sums = vec![[0f64; 3]; positions.len()];
    for triangle in indices.chunks_exact(3) {
        let [a, b, c] = [triangle[0], triangle[1], triangle[2]].map(|i| i as usize);
        let [pa, pb, pc] = [a, b, c].map(|i| positions[i].map(f64::from));
        let u = [pb[0] - pa[0], pb[1] - pa[1], pb[2] - pa[2]];
        let v = [pc[0] - pa[0], pc[1] - pa[1], pc[2] - pa[2]];
        let n = [
            u[1] * v[2] - u[2] * v[1],
            u[2] * v[0] - u[0] * v[2],
            u[0] * v[1] - u[1] * v[0],
        ];
        for corner in [a, b, c] {
            for k in 0..3 {
                sums[corner][k] += n[k];
            }
        }
    }
    sums.into_iter()
        .map(|n| {
            let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            if length > 1e-30 && length.is_finite() {
                n.map(|c| (c / length) as f32)
            } else {
                [0.0, 1.0, 0.0]
            }
        })
        .collect()
}

/// The sRGB electro-optical transfer function: display value → linear intensity.
pub fn srgb_to_linear(v: f32) -> f32 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn pad_to_4(bytes: &mut Vec<u8>, fill: u8) {
    while !bytes.len().is_multiple_of(4) {
        bytes.push(fill);
    }
}

/// The GLB container: a 12-byte header, the JSON chunk padded with spaces, and (when there is
/// binary data) the BIN chunk padded with zeros; every chunk starts 4-byte aligned.
fn assemble(mut json: Vec<u8>, mut bin: Vec<u8>) -> Result<Vec<u8>> {
    pad_to_4(&mut json, b' ');
    pad_to_4(&mut bin, 0);
    let bin_chunk = if bin.is_empty() { 0 } else { 8 + bin.len() };
    let total = 12 + 8 + json.len() + bin_chunk;
    let too_large = || {
        Error::unsupported(format!(
            "the mesh needs a {total}-byte GLB, over glTF's 4 GiB limit; export OBJ or PLY"
        ))
    };
    let total32 = u32::try_from(total).map_err(|_| too_large())?;
    let mut out = Vec::with_capacity(total);
    for word in [MAGIC, VERSION, total32] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    // Both lengths are below `total`, which fits u32.
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&CHUNK_JSON.to_le_bytes());
    out.extend_from_slice(&json);
    if !bin.is_empty() {
        out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
        out.extend_from_slice(&CHUNK_BIN.to_le_bytes());
        out.extend_from_slice(&bin);
    }
    Ok(out)
}
