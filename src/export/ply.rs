//! Binary little-endian PLY: the 3D Gaussian splat layout (what TRELLIS's `Gaussian.save_ply`
//! writes and 3DGS viewers read) and a plain coloured triangle mesh.

use crate::error::{Error, Result};
use crate::pipeline::{Gaussians, Mesh};

use super::{check_gaussians, check_mesh};

/// The per-Gaussian float properties, in the order of the reference's `save_ply` (the order of
/// the original 3DGS code, which viewers look up by name but some also by position).
const GAUSSIAN_PROPERTIES: [&str; 17] = [
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
    "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
];

/// `save_ply`'s default transform T = [[1,0,0],[0,0,-1],[0,1,0]] (a +90° turn about X) applied
/// to a centre: `T·p = (x, −z, y)`.
pub fn gaussian_frame(p: [f32; 3]) -> [f32; 3] {
    [p[0], -p[2], p[1]]
}

/// The orientation `T·R(q)` as a unit quaternion (w, x, y, z).
///
/// T is the rotation by +90° about X, whose quaternion is (c, c, 0, 0) with c = √½, so the
/// product is the Hamilton product (c, c, 0, 0) ⊗ q̂ of the normalised input. The reference
/// goes through matrices (`quaternion_to_matrix`, `T @ R`, `matrix_to_quaternion`), which
/// picks the sign that makes the largest-magnitude component positive; this does the same,
/// so both write the same four numbers (up to rounding) rather than the equivalent −q.
pub fn gaussian_rotation(q: [f32; 4]) -> [f32; 4] {
    let q = q.map(f64::from);
    let norm = q.iter().map(|c| c * c).sum::<f64>().sqrt();
    let [w, x, y, z] = q.map(|c| c / norm);
    let c = std::f64::consts::FRAC_1_SQRT_2;
    let turned = [c * (w - x), c * (x + w), c * (y - z), c * (z + y)];
    // First index of the largest magnitude, as argmax breaks ties.
    let mut largest = 0;
    for i in 1..4 {
        if turned[i].abs() > turned[largest].abs() {
            largest = i;
        }
    }
    let sign = if turned[largest] < 0.0 { -1.0 } else { 1.0 };
    turned.map(|v| (sign * v) as f32)
}

/// The stored (pre-activation) opacity: the logit of the activated one, as the reference's
/// `inverse_sigmoid(get_opacity)`. Opacities of exactly 0 or 1 (a saturated sigmoid in f32)
/// are moved to the nearest representable value inside (0, 1), so the file holds a large
/// finite logit (about +16.6 or −87.3) where the reference would write ±inf, which viewers
/// mishandle.
pub fn opacity_logit(opacity: f32) -> f32 {
    let p = f64::from(opacity.clamp(f32::MIN_POSITIVE, 1.0 - f32::EPSILON / 2.0));
    (p / (1.0 - p)).ln() as f32
}

/// Encodes 3D Gaussians as the reference's `save_ply` does: one `vertex` element of 17 floats
/// with centres and orientations turned by T (see [`gaussian_frame`]), zero normals, the raw
/// SH DC coefficients, logit opacities and log scales (the inverses of the sigmoid and of the
/// scale activation, so viewers re-apply `sigmoid` and `exp`).
pub fn gaussians_to_ply(gaussians: &Gaussians) -> Result<Vec<u8>> {
    let n = check_gaussians(gaussians)?;
    let mut header = String::from("ply\nformat binary_little_endian 1.0\n");
    header.push_str(&format!("element vertex {n}\n"));
    for name in GAUSSIAN_PROPERTIES {
        header.push_str(&format!("property float {name}\n"));
    }
    header.push_str("end_header\n");

    let mut out = Vec::with_capacity(header.len() + n * GAUSSIAN_PROPERTIES.len() * 4);
    out.extend_from_slice(header.as_bytes());
    for i in 0..n {
        let xyz = &gaussians.xyz[3 * i..3 * i + 3];
        let dc = &gaussians.features_dc[3 * i..3 * i + 3];
        let scale = &gaussians.scaling[3 * i..3 * i + 3];
        let q = &gaussians.rotation[4 * i..4 * i + 4];
        let mut record = [0f32; 17];
        record[0..3].copy_from_slice(&gaussian_frame([xyz[0], xyz[1], xyz[2]]));
        // record[3..6]: normals, always zero.
        record[6..9].copy_from_slice(dc);
        record[9] = opacity_logit(gaussians.opacity[i]);
        for k in 0..3 {
            record[10 + k] = scale[k].ln();
        }
        record[13..17].copy_from_slice(&gaussian_rotation([q[0], q[1], q[2], q[3]]));
        for v in record {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

/// Encodes a mesh as binary little-endian PLY: a `vertex` element (`float x y z`, Y-up like the
/// GLB, plus `uchar red green blue` when the mesh has colours) and a `face` element with one
/// `list uchar int vertex_indices` of 3 per triangle (the types most PLY readers expect).
pub fn mesh_to_ply(mesh: &Mesh) -> Result<Vec<u8>> {
    let mesh = check_mesh(mesh)?;
    let vertices = mesh.vertex_count();
    let faces = mesh.face_count();
    if vertices > i32::MAX as usize + 1 {
        return Err(Error::unsupported(format!(
            "mesh PLY stores vertex indices as int: {vertices} vertices are too many"
        )));
    }
    let colored = mesh.colors.is_some();
    let mut header = String::from("ply\nformat binary_little_endian 1.0\ncomment recon\n");
    header.push_str(&format!(
        "element vertex {vertices}\nproperty float x\nproperty float y\nproperty float z\n"
    ));
    if colored {
        header.push_str("property uchar red\nproperty uchar green\nproperty uchar blue\n");
    }
    header.push_str(&format!(
        "element face {faces}\nproperty list uchar int vertex_indices\nend_header\n"
    ));

    let vertex_size = 12 + if colored { 3 } else { 0 };
    let mut out = Vec::with_capacity(header.len() + vertices * vertex_size + faces * 13);
    out.extend_from_slice(header.as_bytes());
    for i in 0..vertices {
        for v in mesh.position(i) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(color) = mesh.color(i) {
            out.extend(color.map(unit_to_u8));
        }
    }
    for triangle in mesh.indices.chunks_exact(3) {
        out.push(3);
        for &index in triangle {
            // Fits: index < vertices ≤ i32::MAX + 1, checked above.
            out.extend_from_slice(&(index as i32).to_le_bytes());
        }
    }
    Ok(out)
}

/// A 0..1 colour channel as the nearest 8-bit value.
fn unit_to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}
