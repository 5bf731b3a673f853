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
//! reference's `to_glb` frame, see `export`'s module docs). With cameras
//! ([`mesh_to_glb_with_cameras`]), one perspective camera and one node per camera follow,
//! the nodes children of the scene beside the mesh node.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::pipeline::{Camera, Mesh};

use super::{check_mesh, CheckedMesh};

/// "glTF", little-endian.
const MAGIC: u32 = 0x4654_6C67;
const VERSION: u32 = 2;
/// "JSON" and "BIN\0", little-endian.
const CHUNK_JSON: u32 = 0x4E4F_534A;
const CHUNK_BIN: u32 = 0x004E_4942;
/// glTF enums: component type FLOAT / UNSIGNED_INT, bufferView targets, primitive mode.
pub(super) const FLOAT: u32 = 5126;
pub(super) const UNSIGNED_INT: u32 = 5125;
pub(super) const ARRAY_BUFFER: u32 = 34962;
pub(super) const ELEMENT_ARRAY_BUFFER: u32 = 34963;
pub(super) const TRIANGLES: u32 = 4;

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
    mesh_to_glb_with_cameras(mesh, &[])
}

/// Encodes a mesh as GLB, as [`mesh_to_glb`], plus one glTF camera per entry of `cameras`
/// (none: the same bytes as [`mesh_to_glb`]).
///
/// Camera `i` becomes a perspective camera and a node named `camera_<i>` in the scene:
/// - The node's transform is the camera-to-world pose in glTF terms. recon's cameras are
///   OpenCV camera-from-world `[R | t]` (x right, y down, z forward) in the native Z-up frame;
///   glTF cameras look down their local −Z with +Y up. So the node's rotation is
///   `Y · Rᵀ · diag(1, −1, −1)` and its translation `Y · (−Rᵀ t)`, the camera centre, where
///   `Y` is the mesh's Z-up → Y-up turn ([`super::mesh_frame`]). Written as translation + unit
///   quaternion (glTF requires node matrices to be rigid; TRS states it exactly).
/// - `yfov = 2·atan(height / (2·fy))`; `aspectRatio = (width / fx) / (height / fy)`, the
///   ratio of the tangents of the half fields of view, which is what glTF's projection uses
///   (`width / height` when fx = fy; a different fx keeps the horizontal field of view
///   right). `znear` is 1 cm, `zfar` absent (an infinite projection).
/// - glTF has no principal point, so the node's `extras` keep the OpenCV intrinsics (`fx`,
///   `fy`, `cx`, `cy`, `width`, `height`, in pixels), the view index and the original
///   `extrinsic` (3×4 row-major camera-from-world, in the native Z-up frame): nothing is lost.
///
/// Fails naming the camera when its numbers are not finite, its size or focal lengths are
/// not positive, or the 3×3 part of its extrinsic is not a rotation.
pub fn mesh_to_glb_with_cameras(mesh: &Mesh, cameras: &[Camera]) -> Result<Vec<u8>> {
    let mesh = check_mesh(mesh)?;
    let cameras = cameras
        .iter()
        .enumerate()
        .map(|(i, camera)| GltfCamera::new(i, camera))
        .collect::<Result<Vec<_>>>()?;
    let (mut json, bin) = if mesh.face_count() == 0 {
        (empty_document(), Vec::new())
    } else {
        document_with_mesh(&mesh)
    };
    add_cameras(&mut json, &cameras)?;
    let json = serde_json::to_vec(&json)
        .map_err(|e| Error::internal(format!("serialising the glTF JSON failed: {e}")))?;
    assemble(json, bin)
}

pub(super) fn asset() -> Value {
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

    let Primitive {
        mut bin,
        mut views,
        mut accessors,
        mut attributes,
    } = Primitive::with_positions_and_normals(&positions, &normals);
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

    let mut document = one_mesh_document(attributes, indices);
    document["materials"] = json!([{
            "name": "vertex colours",
            "pbrMetallicRoughness": {
                "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                "metallicFactor": 0.0,
                "roughnessFactor": 1.0,
            },
    }]);
    document["accessors"] = json!(accessors);
    document["bufferViews"] = json!(views);
    document["buffers"] = json!([{ "byteLength": bin.len() }]);
    (document, bin)
}

/// A scene of one node holding one mesh with one triangle primitive using material 0; the
/// writers add the materials, accessors and buffers.
pub(super) fn one_mesh_document(
    attributes: serde_json::Map<String, Value>,
    indices: usize,
) -> Value {
    json!({
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
    })
}

/// Largest deviation of `RᵀR` from the identity that still counts as a rotation: VGGT's
/// rotations come from unit quaternions in f32, orthonormal to about 1e-6.
const ROTATION_TOLERANCE: f64 = 1e-3;
/// The near plane of the exported cameras, in metres (the object spans about one metre).
const ZNEAR: f64 = 0.01;

/// One camera in glTF terms (see [`mesh_to_glb_with_cameras`]).
pub(super) struct GltfCamera {
    name: String,
    yfov: f64,
    aspect_ratio: f64,
    /// The camera centre, Y-up.
    translation: [f64; 3],
    /// Unit quaternion (x, y, z, w) of the camera-to-world rotation, Y-up, glTF camera axes.
    rotation: [f64; 4],
    extras: Value,
}

impl GltfCamera {
    pub(super) fn new(index: usize, camera: &Camera) -> Result<Self> {
        let bad = |why: String| Error::invalid_argument(format!("cameras[{index}]: {why}"));
        if let Some(v) = camera
            .extrinsic
            .iter()
            .chain(&camera.intrinsic)
            .find(|v| !v.is_finite())
        {
            return Err(bad(format!("holds {v}, expected finite numbers")));
        }
        if camera.width == 0 || camera.height == 0 {
            return Err(bad(format!(
                "is {}x{} pixels, expected a positive size",
                camera.width, camera.height
            )));
        }
        let k = camera.intrinsic.map(f64::from);
        let (fx, fy, cx, cy) = (k[0], k[4], k[2], k[5]);
        if fx <= 0.0 || fy <= 0.0 {
            return Err(bad(format!(
                "focal lengths fx {fx}, fy {fy}, expected both > 0"
            )));
        }
        let e = camera.extrinsic.map(f64::from);
        let r = [[e[0], e[1], e[2]], [e[4], e[5], e[6]], [e[8], e[9], e[10]]];
        let t = [e[3], e[7], e[11]];
        check_rotation(&r).map_err(bad)?;

        // Camera-to-world: rotation Rᵀ, centre −Rᵀt.
        let rt = transpose(&r);
        let centre = mat_vec(&rt, t).map(|c| -c);
        // Columns of the node's rotation: the glTF camera's x, y, z axes in the Y-up world.
        // glTF x = OpenCV x, glTF y = −OpenCV y, glTF z = −OpenCV z (diag(1, −1, −1)).
        let column =
            |k: usize, sign: f64| y_up([rt[0][k] * sign, rt[1][k] * sign, rt[2][k] * sign]);
        let axes = [column(0, 1.0), column(1, -1.0), column(2, -1.0)];
        let rotation = quaternion_from_columns(&axes);

        let (width, height) = (f64::from(camera.width), f64::from(camera.height));
        let mut extras = json!({
            "view": index,
            "fx": fx, "fy": fy, "cx": cx, "cy": cy,
            "width": camera.width, "height": camera.height,
            "extrinsic": e,
            "convention": "OpenCV intrinsics in pixels; extrinsic: 3x4 row-major [R|t], \
                           camera-from-world (x right, y down, z forward) in the asset's \
                           native Z-up frame, before the glTF Y-up turn",
        });
        if k[1] != 0.0 {
            extras["skew"] = json!(k[1]);
        }
        Ok(Self {
            name: format!("camera_{index}"),
            yfov: 2.0 * (height / (2.0 * fy)).atan(),
            aspect_ratio: (width / fx) / (height / fy),
            translation: y_up(centre),
            rotation,
            extras,
        })
    }
}

/// Appends the cameras to a document: `cameras[i]` and a node per camera, listed in the
/// scene after the nodes already there.
pub(super) fn add_cameras(document: &mut Value, cameras: &[GltfCamera]) -> Result<()> {
    if cameras.is_empty() {
        return Ok(());
    }
    let missing = || Error::internal("the glTF document lacks nodes or scenes[0].nodes");
    let first_node = document["nodes"].as_array().ok_or_else(missing)?.len();
    let mut gltf_cameras = Vec::new();
    let mut nodes = Vec::new();
    for (i, camera) in cameras.iter().enumerate() {
        gltf_cameras.push(json!({
            "name": camera.name,
            "type": "perspective",
            "perspective": {
                "yfov": camera.yfov,
                "aspectRatio": camera.aspect_ratio,
                "znear": ZNEAR,
            },
        }));
        nodes.push(json!({
            "name": camera.name,
            "camera": i,
            "translation": camera.translation,
            "rotation": camera.rotation,
            "extras": camera.extras,
        }));
    }
    let object = document.as_object_mut().ok_or_else(missing)?;
    object.insert("cameras".into(), Value::Array(gltf_cameras));
    let node_list = object
        .get_mut("nodes")
        .and_then(Value::as_array_mut)
        .ok_or_else(missing)?;
    node_list.extend(nodes);
    let scene_nodes = object
        .get_mut("scenes")
        .and_then(|scenes| scenes.get_mut(0))
        .and_then(|scene| scene.get_mut("nodes"))
        .and_then(Value::as_array_mut)
        .ok_or_else(missing)?;
    scene_nodes.extend((first_node..first_node + cameras.len()).map(|n| json!(n)));
    Ok(())
}

/// Fails (with the reason) unless `r` is a proper rotation: `RᵀR ≈ I` and `det R > 0`.
fn check_rotation(r: &[[f64; 3]; 3]) -> std::result::Result<(), String> {
    let mut deviation = 0f64;
    for i in 0..3 {
        for j in 0..3 {
            let dot: f64 = (0..3).map(|k| r[k][i] * r[k][j]).sum();
            let identity = if i == j { 1.0 } else { 0.0 };
            deviation = deviation.max((dot - identity).abs());
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    if deviation > ROTATION_TOLERANCE || det <= 0.0 {
        Err(format!(
            "the 3x3 part of the extrinsic is not a rotation (max |RtR - I| = {deviation:e}, \
             det = {det})"
        ))
    } else {
        Ok(())
    }
}

fn transpose(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| m[j][i]))
}

fn mat_vec(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    m.map(|row| row[0] * v[0] + row[1] * v[1] + row[2] * v[2])
}

/// [`super::mesh_frame`]'s turn, `(x, y, z) → (x, z, −y)`, in f64 (a unit test checks they agree).
fn y_up(p: [f64; 3]) -> [f64; 3] {
    [p[0], p[2], -p[1]]
}

/// The unit quaternion (x, y, z, w) of the rotation whose columns are `axes` (Shepperd's
/// method: the largest of w, x, y, z is computed from the trace, the others from it, which
/// stays accurate for every angle). Normalised, so a rotation off by rounding still gives a
/// unit quaternion.
fn quaternion_from_columns(axes: &[[f64; 3]; 3]) -> [f64; 4] {
    // m[i][j]: row i, column j.
    let m = |i: usize, j: usize| axes[j][i];
    let trace = m(0, 0) + m(1, 1) + m(2, 2);
    let q = if trace > 0.0 {
        let s = 2.0 * (1.0 + trace).sqrt();
        [
            (m(2, 1) - m(1, 2)) / s,
            (m(0, 2) - m(2, 0)) / s,
            (m(1, 0) - m(0, 1)) / s,
            s / 4.0,
        ]
    } else if m(0, 0) > m(1, 1) && m(0, 0) > m(2, 2) {
        let s = 2.0 * (1.0 + m(0, 0) - m(1, 1) - m(2, 2)).sqrt();
        [
            s / 4.0,
            (m(0, 1) + m(1, 0)) / s,
            (m(0, 2) + m(2, 0)) / s,
            (m(2, 1) - m(1, 2)) / s,
        ]
    } else if m(1, 1) > m(2, 2) {
        let s = 2.0 * (1.0 + m(1, 1) - m(0, 0) - m(2, 2)).sqrt();
        [
            (m(0, 1) + m(1, 0)) / s,
            s / 4.0,
            (m(1, 2) + m(2, 1)) / s,
            (m(0, 2) - m(2, 0)) / s,
        ]
    } else {
        let s = 2.0 * (1.0 + m(2, 2) - m(0, 0) - m(1, 1)).sqrt();
        [
            (m(0, 2) + m(2, 0)) / s,
            (m(1, 2) + m(2, 1)) / s,
            s / 4.0,
            (m(1, 0) - m(0, 1)) / s,
        ]
    };
    let norm = q.iter().map(|c| c * c).sum::<f64>().sqrt();
    q.map(|c| c / norm)
}

/// Appends `bytes` to the BIN chunk as a new bufferView (4-byte aligned: every view holds
/// 4-byte components) and returns its index.
/// The BIN bytes and the glTF bufferViews, accessors and attributes of one triangle
/// primitive, as the writers build them up.
pub(super) struct Primitive {
    pub bin: Vec<u8>,
    pub views: Vec<Value>,
    pub accessors: Vec<Value>,
    pub attributes: serde_json::Map<String, Value>,
}

impl Primitive {
    /// A primitive holding `POSITION` (with the bounds glTF requires) and `NORMAL`, one
    /// entry per vertex each, both already in the Y-up frame.
    pub(super) fn with_positions_and_normals(positions: &[[f32; 3]], normals: &[[f32; 3]]) -> Self {
        let mut p = Primitive {
            bin: Vec::new(),
            views: Vec::new(),
            accessors: Vec::new(),
            attributes: serde_json::Map::new(),
        };
        let (min, max) = bounds(positions);
        let view = push_view(
            &mut p.bin,
            &mut p.views,
            vec3_bytes(positions),
            ARRAY_BUFFER,
        );
        p.attributes
            .insert("POSITION".into(), json!(p.accessors.len()));
        p.accessors.push(json!({
            "bufferView": view, "componentType": FLOAT, "count": positions.len(), "type": "VEC3",
            "min": min, "max": max,
        }));
        let view = push_view(&mut p.bin, &mut p.views, vec3_bytes(normals), ARRAY_BUFFER);
        p.attributes
            .insert("NORMAL".into(), json!(p.accessors.len()));
        p.accessors.push(json!({
            "bufferView": view, "componentType": FLOAT, "count": normals.len(), "type": "VEC3",
        }));
        p
    }
}

pub(super) fn push_view(
    bin: &mut Vec<u8>,
    views: &mut Vec<Value>,
    bytes: Vec<u8>,
    target: u32,
) -> usize {
    pad_to_4(bin, 0);
    views.push(json!({
        "buffer": 0, "byteOffset": bin.len(), "byteLength": bytes.len(), "target": target,
    }));
    bin.extend_from_slice(&bytes);
    views.len() - 1
}

pub(super) fn vec3_bytes(values: &[[f32; 3]]) -> Vec<u8> {
    values
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Per-component min and max (the values written, so they match the data exactly).
pub(super) fn bounds(positions: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
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

pub(super) fn pad_to_4(bytes: &mut Vec<u8>, fill: u8) {
    while !bytes.len().is_multiple_of(4) {
        bytes.push(fill);
    }
}

/// The GLB container: a 12-byte header, the JSON chunk padded with spaces, and (when there is
/// binary data) the BIN chunk padded with zeros; every chunk starts 4-byte aligned.
pub(super) fn assemble(mut json: Vec<u8>, mut bin: Vec<u8>) -> Result<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::super::mesh_frame;
    use super::*;

    #[test]
    fn y_up_is_the_mesh_frame() {
        let p = [0.25f32, -0.5, 0.75];
        assert_eq!(y_up(p.map(f64::from)), mesh_frame(p).map(f64::from));
    }

    /// Rotations about each axis by angles that exercise every branch of Shepperd's method.
    #[test]
    fn quaternions_rebuild_their_rotations() {
        for (axis, angle) in [
            (0usize, 0.3f64),
            (0, 3.0),
            (1, 2.9),
            (2, -3.1),
            (1, -0.7),
            (2, 1.2),
        ] {
            let (s, c) = angle.sin_cos();
            let mut m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
            let (i, j) = ((axis + 1) % 3, (axis + 2) % 3);
            m[i][i] = c;
            m[i][j] = -s;
            m[j][i] = s;
            m[j][j] = c;
            let columns = transpose(&m);
            let [x, y, z, w] = quaternion_from_columns(&columns);
            let rebuilt = [
                [
                    1.0 - 2.0 * (y * y + z * z),
                    2.0 * (x * y - z * w),
                    2.0 * (x * z + y * w),
                ],
                [
                    2.0 * (x * y + z * w),
                    1.0 - 2.0 * (x * x + z * z),
                    2.0 * (y * z - x * w),
                ],
                [
                    2.0 * (x * z - y * w),
                    2.0 * (y * z + x * w),
                    1.0 - 2.0 * (x * x + y * y),
                ],
            ];
            for r in 0..3 {
                for k in 0..3 {
                    assert!((rebuilt[r][k] - m[r][k]).abs() < 1e-12, "{axis} {angle}");
                }
            }
        }
    }

    #[test]
    fn bad_cameras_are_refused_by_index() {
        let mut camera = Camera {
            extrinsic: [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0],
            intrinsic: [100.0, 0.0, 50.0, 0.0, 100.0, 50.0, 0.0, 0.0, 1.0],
            width: 100,
            height: 100,
        };
        assert!(GltfCamera::new(0, &camera).is_ok());
        camera.extrinsic[0] = -1.0; // a reflection
        let err = GltfCamera::new(3, &camera).err().unwrap();
        assert!(err.message().contains("cameras[3]") && err.message().contains("rotation"));
        camera.extrinsic[0] = 1.0;
        camera.intrinsic[4] = 0.0;
        let err = GltfCamera::new(1, &camera).err().unwrap();
        assert!(err.message().contains("focal"), "{err}");
        camera.intrinsic[4] = f32::NAN;
        let err = GltfCamera::new(1, &camera).err().unwrap();
        assert!(err.message().contains("finite"), "{err}");
        camera.intrinsic[4] = 100.0;
        camera.height = 0;
        assert!(GltfCamera::new(1, &camera).is_err());
    }
}
