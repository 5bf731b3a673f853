//! Export writers (src/export/): every format is written from small hand-built results, read
//! back with an independent reader (the `gltf` crate, a PLY reader and an OBJ parser below)
//! and checked for counts, values, bounds, the axis conventions and the inverse activations.
//! File exports are checked for atomicity.

use std::collections::BTreeMap;
use std::path::Path;

use recon::export::{
    export_code, export_to_bytes, export_to_bytes_with, export_to_path, export_to_path_with,
    from_export_code, ExportFormat, ExportOptions,
};
use recon::pipeline::{Camera, Gaussians, Mesh, Output};
use recon::ErrorKind;

// ---------------------------------------------------------------------------------------------
// Inputs

/// An axis-aligned box with distinct extents on every axis and off-centre, so a swapped or
/// negated axis changes the bounds. Z-up native frame.
const BOX_MIN: [f32; 3] = [-0.1, -0.2, 0.0];
const BOX_MAX: [f32; 3] = [0.3, 0.4, 0.5];

/// The box as 8 shared corners (index = x + 2y + 4z bits) and 12 triangles wound
/// counter-clockwise seen from outside, with per-corner colours when `colored`.
fn box_mesh(colored: bool) -> Mesh {
    let mut positions = Vec::new();
    let mut colors = Vec::new();
    for corner in 0..8 {
        let bits = [corner & 1, (corner >> 1) & 1, (corner >> 2) & 1];
        for k in 0..3 {
            positions.push(if bits[k] == 1 { BOX_MAX[k] } else { BOX_MIN[k] });
        }
        colors.extend([
            0.1 + 0.8 * bits[0] as f32,
            0.25 + 0.5 * bits[1] as f32,
            0.9 - 0.7 * bits[2] as f32,
        ]);
    }
    // Quads (outward counter-clockwise), two triangles each.
    let quads: [[u32; 4]; 6] = [
        [0, 2, 3, 1], // z = min, normal -Z
        [4, 5, 7, 6], // z = max, normal +Z
        [0, 1, 5, 4], // y = min, normal -Y
        [2, 6, 7, 3], // y = max, normal +Y
        [0, 4, 6, 2], // x = min, normal -X
        [1, 3, 7, 5], // x = max, normal +X
    ];
    let indices = quads
        .iter()
        .flat_map(|q| [q[0], q[1], q[2], q[0], q[2], q[3]])
        .collect();
    Mesh {
        positions,
        colors: if colored { colors } else { Vec::new() },
        indices,
    }
}

fn box_center() -> [f64; 3] {
    [0, 1, 2].map(|k| (f64::from(BOX_MIN[k]) + f64::from(BOX_MAX[k])) / 2.0)
}

/// A few Gaussians with varied, non-trivial rotations, scales and opacities.
fn some_gaussians() -> Gaussians {
    let rotations: [[f32; 4]; 4] = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        normalized([0.3, -0.5, 0.7, 0.2]),
        normalized([-0.8, 0.1, 0.1, -0.3]),
    ];
    Gaussians {
        xyz: vec![
            0.1, 0.2, 0.3, -0.4, 0.0, 0.45, 0.25, -0.3, -0.1, 0.0, 0.0, -0.5,
        ],
        features_dc: vec![
            0.5, -0.25, 1.5, -1.0, 0.0, 0.75, 2.0, 0.1, -0.2, 0.3, 0.3, 0.3,
        ],
        scaling: vec![
            0.01, 0.02, 0.03, 9e-4, 0.1, 0.005, 0.2, 0.2, 0.2, 0.0011, 0.05, 0.013,
        ],
        rotation: rotations.concat(),
        opacity: vec![0.1, 0.5, 0.93, 0.999],
    }
}

fn normalized(q: [f32; 4]) -> [f32; 4] {
    let n = q.iter().map(|c| c * c).sum::<f32>().sqrt();
    q.map(|c| c / n)
}

fn mesh_output(mesh: Mesh) -> Output {
    Output {
        mesh: Some(mesh),
        ..Default::default()
    }
}

fn gaussian_output(gaussians: Gaussians) -> Output {
    Output {
        gaussians: Some(gaussians),
        ..Default::default()
    }
}

/// The mesh export frame: Z-up → Y-up as the reference's `to_glb`, `(x, y, z) → (x, z, −y)`.
fn y_up(p: [f32; 3]) -> [f32; 3] {
    [p[0], p[2], -p[1]]
}

fn native_vertex(mesh: &Mesh, i: usize) -> [f32; 3] {
    [
        mesh.positions[3 * i],
        mesh.positions[3 * i + 1],
        mesh.positions[3 * i + 2],
    ]
}

fn srgb_to_linear(v: f32) -> f32 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

// ---------------------------------------------------------------------------------------------
// Format codes

#[test]
fn format_codes_match_the_c_header() {
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/recon.h"))
            .unwrap();
    let mut seen = 0;
    for (name, format) in [
        ("GLB", ExportFormat::Glb),
        ("PLY_GAUSSIANS", ExportFormat::PlyGaussians),
        ("PLY_MESH", ExportFormat::PlyMesh),
        ("OBJ", ExportFormat::Obj),
    ] {
        let prefix = format!("#define RECON_EXPORT_{name} ");
        let line = header.lines().find(|l| l.starts_with(&prefix)).unwrap();
        let code: i32 = line[prefix.len()..].trim().parse().unwrap();
        assert_eq!(format.code(), code, "{name}");
        assert_eq!(ExportFormat::from_code(code).unwrap(), format);
        assert_eq!(ExportFormat::try_from(code).unwrap(), format);
        let plain = ExportOptions::default();
        assert_eq!(from_export_code(code).unwrap(), (format, plain));
        assert_eq!(export_code(format, &plain), Some(code));
        seen += 1;
    }
    assert_eq!(seen, ExportFormat::ALL.len());
    // GLB with cameras: a format plus an option, a code of its own.
    let prefix = "#define RECON_EXPORT_GLB_WITH_CAMERAS ";
    let line = header.lines().find(|l| l.starts_with(prefix)).unwrap();
    let code: i32 = line[prefix.len()..].trim().parse().unwrap();
    let cameras = ExportOptions { cameras: true };
    assert_eq!(
        from_export_code(code).unwrap(),
        (ExportFormat::Glb, cameras)
    );
    assert_eq!(export_code(ExportFormat::Glb, &cameras), Some(code));
    assert_eq!(export_code(ExportFormat::Obj, &cameras), None);
    let err = ExportFormat::from_code(code).unwrap_err();
    assert!(err.message().contains("from_export_code"), "{err}");
    // Every RECON_EXPORT_* define is one of the above.
    let defines = header
        .lines()
        .filter(|l| l.starts_with("#define RECON_EXPORT_"))
        .count();
    assert_eq!(defines, ExportFormat::ALL.len() + 1);
    for bad in [0, 6, -1, i32::MAX] {
        let err = ExportFormat::from_code(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains(&bad.to_string()), "{err}");
        let err = from_export_code(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("5 GLB_WITH_CAMERAS"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// GLB

/// The chunks of a GLB, checked against the container rules of the glTF 2.0 spec.
struct GlbChunks {
    json: serde_json::Value,
    bin: Vec<u8>,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn parse_glb_container(bytes: &[u8]) -> GlbChunks {
    assert_eq!(&bytes[0..4], b"glTF");
    assert_eq!(u32_at(bytes, 4), 2, "GLB version");
    assert_eq!(u32_at(bytes, 8) as usize, bytes.len(), "header length");
    let json_len = u32_at(bytes, 12) as usize;
    assert_eq!(u32_at(bytes, 16), 0x4E4F_534A, "first chunk is JSON");
    assert_eq!(json_len % 4, 0, "JSON chunk length is 4-byte aligned");
    let json_bytes = &bytes[20..20 + json_len];
    let text = std::str::from_utf8(json_bytes).unwrap();
    // Padding is trailing spaces only (no NULs, which JSON parsers reject).
    assert!(!text.contains('\0'));
    let json: serde_json::Value = serde_json::from_str(text.trim_end_matches(' ')).unwrap();
    let mut at = 20 + json_len;
    let mut bin = Vec::new();
    if at < bytes.len() {
        let bin_len = u32_at(bytes, at) as usize;
        assert_eq!(u32_at(bytes, at + 4), 0x004E_4942, "second chunk is BIN");
        assert_eq!(bin_len % 4, 0, "BIN chunk length is 4-byte aligned");
        assert_eq!((at + 8) % 4, 0, "BIN chunk data starts aligned");
        bin = bytes[at + 8..at + 8 + bin_len].to_vec();
        at += 8 + bin_len;
    }
    assert_eq!(at, bytes.len(), "nothing after the chunks");
    GlbChunks { json, bin }
}

/// The JSON-level rules glTF puts on buffers, views and accessors that this writer uses.
fn check_gltf_layout(chunks: &GlbChunks) {
    let json = &chunks.json;
    assert_eq!(json["asset"]["version"], "2.0");
    assert_eq!(json["asset"]["generator"], "recon");
    let Some(buffers) = json["buffers"].as_array() else {
        assert!(chunks.bin.is_empty());
        return;
    };
    assert_eq!(buffers.len(), 1);
    assert!(buffers[0].get("uri").is_none(), "the GLB buffer has no uri");
    let buffer_len = buffers[0]["byteLength"].as_u64().unwrap() as usize;
    // byteLength may be up to 3 bytes shorter than the (padded) BIN chunk.
    assert!(buffer_len <= chunks.bin.len() && chunks.bin.len() - buffer_len < 4);
    let views = json["bufferViews"].as_array().unwrap();
    for view in views {
        let offset = view["byteOffset"].as_u64().unwrap_or(0) as usize;
        let length = view["byteLength"].as_u64().unwrap() as usize;
        assert_eq!(
            offset % 4,
            0,
            "bufferView offset aligned for 4-byte components"
        );
        assert!(length >= 1 && offset + length <= buffer_len);
    }
    for accessor in json["accessors"].as_array().unwrap() {
        let view = &views[accessor["bufferView"].as_u64().unwrap() as usize];
        let count = accessor["count"].as_u64().unwrap() as usize;
        assert!(count >= 1);
        let components = match accessor["type"].as_str().unwrap() {
            "SCALAR" => 1,
            "VEC3" => 3,
            "VEC4" => 4,
            other => panic!("unexpected accessor type {other}"),
        };
        // FLOAT and UNSIGNED_INT are both 4 bytes; views are tightly packed.
        assert!([5126, 5125].contains(&accessor["componentType"].as_u64().unwrap()));
        assert_eq!(
            view["byteLength"].as_u64().unwrap() as usize,
            count * components * 4
        );
    }
}

fn read_glb(bytes: &[u8]) -> gltf::Gltf {
    gltf::Gltf::from_slice(bytes).expect("the gltf crate parses and validates the GLB")
}

#[test]
fn glb_box_with_colours_round_trips() {
    let mesh = box_mesh(true);
    let bytes = export_to_bytes(&mesh_output(mesh.clone()), ExportFormat::Glb).unwrap();
    let chunks = parse_glb_container(&bytes);
    check_gltf_layout(&chunks);

    let gltf = read_glb(&bytes);
    assert_eq!(gltf.scenes().count(), 1);
    assert_eq!(gltf.default_scene().unwrap().nodes().count(), 1);
    assert_eq!(gltf.meshes().count(), 1);
    let gmesh = gltf.meshes().next().unwrap();
    assert_eq!(gmesh.primitives().count(), 1);
    let primitive = gmesh.primitives().next().unwrap();
    assert_eq!(primitive.mode(), gltf::mesh::Mode::Triangles);
    let material = primitive.material();
    assert_eq!(material.pbr_metallic_roughness().metallic_factor(), 0.0);
    let blob = gltf.blob.clone().unwrap();
    let reader = primitive.reader(|_| Some(blob.as_slice()));

    // Positions: exactly the Y-up turn of the input.
    let positions: Vec<[f32; 3]> = reader.read_positions().unwrap().collect();
    assert_eq!(positions.len(), 8);
    for (i, p) in positions.iter().enumerate() {
        assert_eq!(*p, y_up(native_vertex(&mesh, i)), "vertex {i}");
    }
    // Bounds: the accessor's min/max equal the data, and show the axes convention: the
    // native Z extent (the height) is now Y, and native +Y (depth) is now −Z.
    let bbox = primitive.bounding_box();
    assert_eq!(bbox.min, [BOX_MIN[0], BOX_MIN[2], -BOX_MAX[1]]);
    assert_eq!(bbox.max, [BOX_MAX[0], BOX_MAX[2], -BOX_MIN[1]]);
    let data_min = [0, 1, 2].map(|k| positions.iter().map(|p| p[k]).fold(f32::INFINITY, f32::min));
    let data_max = [0, 1, 2].map(|k| {
        positions
            .iter()
            .map(|p| p[k])
            .fold(f32::NEG_INFINITY, f32::max)
    });
    assert_eq!(bbox.min, data_min);
    assert_eq!(bbox.max, data_max);

    // Indices: unchanged (a rotation keeps the winding).
    let indices: Vec<u32> = reader.read_indices().unwrap().into_u32().collect();
    assert_eq!(indices, mesh.indices);
    // Winding: every triangle's geometric normal points away from the box centre.
    let center = y_up(box_center().map(|c| c as f32)).map(f64::from);
    for t in indices.chunks_exact(3) {
        let [a, b, c] = [t[0], t[1], t[2]].map(|i| positions[i as usize].map(f64::from));
        let n = cross(sub(b, a), sub(c, a));
        let centroid = [0, 1, 2].map(|k| (a[k] + b[k] + c[k]) / 3.0);
        assert!(
            dot(n, sub(centroid, center)) > 0.0,
            "triangle {t:?} faces inward"
        );
    }

    // Normals: unit length, pointing outward at every corner.
    let normals: Vec<[f32; 3]> = reader.read_normals().unwrap().collect();
    assert_eq!(normals.len(), 8);
    for (i, n) in normals.iter().enumerate() {
        let n = n.map(f64::from);
        assert!(
            (dot(n, n).sqrt() - 1.0).abs() < 1e-6,
            "normal {i} is not unit: {n:?}"
        );
        let outward = sub(positions[i].map(f64::from), center);
        // Each corner's normal lies in the open octant of its outward diagonal.
        for k in 0..3 {
            assert!(
                n[k] * outward[k] > 0.0,
                "normal {i} = {n:?}, corner direction {outward:?}"
            );
        }
    }

    // Colours: the decoder's sRGB-encoded values as glTF's linear COLOR_0.
    let colors: Vec<[f32; 3]> = reader.read_colors(0).unwrap().into_rgb_f32().collect();
    for (i, c) in colors.iter().enumerate() {
        for (k, found) in c.iter().enumerate() {
            let expected = srgb_to_linear(mesh.colors[3 * i + k]);
            assert!(
                (found - expected).abs() < 1e-6,
                "colour {i}.{k}: {found} vs {expected}"
            );
        }
    }
}

#[test]
fn glb_area_weighted_normals_of_a_flat_fan() {
    // A fan of two coplanar triangles of very different areas plus a degenerate one (three
    // collinear points) and an unreferenced vertex, in the native z = 0.1 plane facing +Z.
    let mesh = Mesh {
        positions: vec![
            0.0, 0.0, 0.1, 0.4, 0.0, 0.1, 0.0, 0.4, 0.1, -0.01, 0.0, 0.1, // fan
            0.1, 0.1, 0.1, 0.2, 0.2, 0.1, 0.3, 0.3, 0.1, // collinear
            0.2, -0.2, -0.2, // unreferenced
        ],
        colors: Vec::new(),
        indices: vec![0, 1, 2, 0, 2, 3, 4, 5, 6],
    };
    let bytes = export_to_bytes(&mesh_output(mesh), ExportFormat::Glb).unwrap();
    check_gltf_layout(&parse_glb_container(&bytes));
    let gltf = read_glb(&bytes);
    let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
    assert!(
        primitive.get(&gltf::Semantic::Colors(0)).is_none(),
        "no colours, no COLOR_0"
    );
    let blob = gltf.blob.clone().unwrap();
    let reader = primitive.reader(|_| Some(blob.as_slice()));
    let normals: Vec<[f32; 3]> = reader.read_normals().unwrap().collect();
    // Native +Z is glTF +Y; the degenerate and unreferenced vertices also get +Y (unit).
    for (i, n) in normals.iter().enumerate() {
        assert!(n.iter().all(|c| c.is_finite()), "normal {i}");
        assert!(
            (n[0].abs() + n[2].abs()) < 1e-6 && (n[1] - 1.0).abs() < 1e-6,
            "normal {i} = {n:?}"
        );
    }
}

#[test]
fn glb_area_weighting_favours_large_faces() {
    // Two triangles meeting at vertex 0 with perpendicular normals: a large one facing native
    // +Z and a small one facing native +X. The shared normal leans towards the large face.
    let mesh = Mesh {
        positions: vec![
            0.0, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0, 0.4, 0.0, // large, +Z
            0.0, 0.1, 0.0, 0.0, 0.0, 0.1, // small with vertices 0, 3, 4: +X
        ],
        colors: Vec::new(),
        indices: vec![0, 1, 2, 0, 3, 4],
    };
    let bytes = export_to_bytes(&mesh_output(mesh), ExportFormat::Glb).unwrap();
    let gltf = read_glb(&bytes);
    let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
    let blob = gltf.blob.clone().unwrap();
    let normals: Vec<[f32; 3]> = primitive
        .reader(|_| Some(blob.as_slice()))
        .read_normals()
        .unwrap()
        .collect();
    // Cross products: large (0,0,0.16), small (0.01,0,0); their sum normalised, then Y-up.
    let length = (0.16f64 * 0.16 + 0.01 * 0.01).sqrt();
    let expected = y_up([(0.01 / length) as f32, 0.0, (0.16 / length) as f32]);
    for k in 0..3 {
        assert!(
            (normals[0][k] - expected[k]).abs() < 1e-6,
            "{:?} vs {expected:?}",
            normals[0]
        );
    }
}

#[test]
fn glb_of_an_empty_mesh_is_a_valid_empty_scene() {
    for mesh in [
        Mesh::default(),
        Mesh {
            positions: vec![0.0, 0.0, 0.0],
            colors: vec![0.5, 0.5, 0.5],
            indices: Vec::new(),
        },
    ] {
        let bytes = export_to_bytes(&mesh_output(mesh), ExportFormat::Glb).unwrap();
        let chunks = parse_glb_container(&bytes);
        check_gltf_layout(&chunks);
        assert!(chunks.bin.is_empty());
        let gltf = read_glb(&bytes);
        assert_eq!(gltf.meshes().count(), 0);
        assert_eq!(gltf.scenes().count(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// PLY reader

#[derive(Debug, Clone)]
enum PlyProperty {
    Scalar {
        name: String,
        ty: String,
    },
    List {
        name: String,
        count_ty: String,
        item_ty: String,
    },
}

#[derive(Debug)]
struct PlyElement {
    name: String,
    count: usize,
    properties: Vec<PlyProperty>,
    /// One row per item: the scalar values, or a list's items, in property order.
    rows: Vec<Vec<Vec<f64>>>,
}

/// A minimal binary little-endian PLY reader (header, then every element's rows).
fn read_ply(bytes: &[u8]) -> (Vec<String>, Vec<PlyElement>) {
    let end = b"end_header\n";
    let header_len = bytes.windows(end.len()).position(|w| w == end).unwrap() + end.len();
    let header = std::str::from_utf8(&bytes[..header_len]).unwrap();
    let lines: Vec<String> = header.lines().map(str::to_string).collect();
    assert_eq!(lines[0], "ply");
    assert_eq!(lines[1], "format binary_little_endian 1.0");
    let mut elements: Vec<PlyElement> = Vec::new();
    for line in &lines[2..] {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[0] {
            "element" => elements.push(PlyElement {
                name: words[1].into(),
                count: words[2].parse().unwrap(),
                properties: Vec::new(),
                rows: Vec::new(),
            }),
            "property" if words[1] == "list" => {
                elements
                    .last_mut()
                    .unwrap()
                    .properties
                    .push(PlyProperty::List {
                        count_ty: words[2].into(),
                        item_ty: words[3].into(),
                        name: words[4].into(),
                    })
            }
            "property" => elements
                .last_mut()
                .unwrap()
                .properties
                .push(PlyProperty::Scalar {
                    ty: words[1].into(),
                    name: words[2].into(),
                }),
            "comment" | "end_header" => {}
            other => panic!("unexpected header line {other}"),
        }
    }
    let mut at = header_len;
    let mut read = |ty: &str| -> f64 {
        let size = match ty {
            "char" | "uchar" | "int8" | "uint8" => 1,
            "short" | "ushort" | "int16" | "uint16" => 2,
            "int" | "uint" | "float" | "int32" | "uint32" | "float32" => 4,
            "double" | "float64" => 8,
            other => panic!("unknown PLY type {other}"),
        };
        let b = &bytes[at..at + size];
        at += size;
        match ty {
            "char" | "int8" => b[0] as i8 as f64,
            "uchar" | "uint8" => b[0] as f64,
            "short" | "int16" => i16::from_le_bytes([b[0], b[1]]) as f64,
            "ushort" | "uint16" => u16::from_le_bytes([b[0], b[1]]) as f64,
            "int" | "int32" => i32::from_le_bytes(b.try_into().unwrap()) as f64,
            "uint" | "uint32" => u32::from_le_bytes(b.try_into().unwrap()) as f64,
            "float" | "float32" => f32::from_le_bytes(b.try_into().unwrap()) as f64,
            _ => f64::from_le_bytes(b.try_into().unwrap()),
        }
    };
    for element in &mut elements {
        for _ in 0..element.count {
            let row = element
                .properties
                .iter()
                .map(|p| match p {
                    PlyProperty::Scalar { ty, .. } => vec![read(ty)],
                    PlyProperty::List {
                        count_ty, item_ty, ..
                    } => {
                        let n = read(count_ty) as usize;
                        (0..n).map(|_| read(item_ty)).collect()
                    }
                })
                .collect();
            element.rows.push(row);
        }
    }
    assert_eq!(at, bytes.len(), "body size matches the header");
    (lines, elements)
}

fn property_names(element: &PlyElement) -> Vec<String> {
    element
        .properties
        .iter()
        .map(|p| match p {
            PlyProperty::Scalar { name, ty } => format!("{ty} {name}"),
            PlyProperty::List {
                name,
                count_ty,
                item_ty,
            } => format!("list {count_ty} {item_ty} {name}"),
        })
        .collect()
}

/// Row `i` of `element` as a name → value map (scalars only).
fn row_map(element: &PlyElement, i: usize) -> BTreeMap<String, f64> {
    element
        .properties
        .iter()
        .zip(&element.rows[i])
        .filter_map(|(p, v)| match p {
            PlyProperty::Scalar { name, .. } => Some((name.clone(), v[0])),
            PlyProperty::List { .. } => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Gaussian PLY

/// Rotation matrix of a (w, x, y, z) quaternion, normalised first.
fn quat_matrix(q: [f64; 4]) -> [[f64; 3]; 3] {
    let n = q.iter().map(|c| c * c).sum::<f64>().sqrt();
    let [w, x, y, z] = q.map(|c| c / n);
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

fn matmul(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// The reference's `save_ply` transform.
const T: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]];

const GAUSSIAN_HEADER: [&str; 17] = [
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
    "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
];

#[test]
fn gaussian_ply_matches_the_reference_layout_and_inverts_the_activations() {
    let g = some_gaussians();
    let bytes = export_to_bytes(&gaussian_output(g.clone()), ExportFormat::PlyGaussians).unwrap();
    let (lines, elements) = read_ply(&bytes);
    // The header plyfile writes for the reference: no comments, one float vertex element.
    let mut expected_lines = vec![
        "ply".to_string(),
        "format binary_little_endian 1.0".to_string(),
        format!("element vertex {}", g.len()),
    ];
    expected_lines.extend(
        GAUSSIAN_HEADER
            .iter()
            .map(|n| format!("property float {n}")),
    );
    expected_lines.push("end_header".into());
    assert_eq!(lines, expected_lines);
    assert_eq!(elements.len(), 1);
    let vertex = &elements[0];
    assert_eq!(vertex.count, 4);
    assert_eq!(
        bytes.len()
            - bytes
                .windows(11)
                .position(|w| w == b"end_header\n")
                .unwrap()
            - 11,
        4 * 17 * 4
    );

    for i in 0..g.len() {
        let r = row_map(vertex, i);
        let [x, y, z] = [0, 1, 2].map(|k| f64::from(g.xyz[3 * i + k]));
        // Centres: T·p = (x, −z, y), exactly.
        assert_eq!([r["x"], r["y"], r["z"]], [x, -z, y], "Gaussian {i} centre");
        // Undoing the transform (the reference's load_ply: p @ T) gives the native centre back.
        let back = [0, 1, 2].map(|j| r["x"] * T[0][j] + r["y"] * T[1][j] + r["z"] * T[2][j]);
        assert_eq!(back, [x, y, z]);
        assert_eq!([r["nx"], r["ny"], r["nz"]], [0.0; 3]);
        for k in 0..3 {
            assert_eq!(r[&format!("f_dc_{k}")], f64::from(g.features_dc[3 * i + k]));
            // Scale: log, so exp gives the activated scale back.
            let s = f64::from(g.scaling[3 * i + k]);
            let back = r[&format!("scale_{k}")].exp();
            assert!(
                ((back - s) / s).abs() < 1e-6,
                "scale {i}.{k}: {back} vs {s}"
            );
        }
        // Opacity: logit, so sigmoid gives the activated opacity back.
        let o = f64::from(g.opacity[i]);
        let back = 1.0 / (1.0 + (-r["opacity"]).exp());
        assert!((back - o).abs() < 1e-6, "opacity {i}: {back} vs {o}");
        // Rotation: unit quaternion of T·R(q), with its largest component positive.
        let q_file = [r["rot_0"], r["rot_1"], r["rot_2"], r["rot_3"]];
        let norm = q_file.iter().map(|c| c * c).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "rotation {i} norm {norm}");
        let largest = q_file
            .iter()
            .fold(0f64, |m, c| if c.abs() > m.abs() { *c } else { m });
        assert!(largest > 0.0, "rotation {i} = {q_file:?}");
        let q = [0, 1, 2, 3].map(|k| f64::from(g.rotation[4 * i + k]));
        let expected = matmul(T, quat_matrix(q));
        let found = quat_matrix(q_file);
        for a in 0..3 {
            for b in 0..3 {
                assert!(
                    (found[a][b] - expected[a][b]).abs() < 1e-6,
                    "rotation {i}: {found:?} vs {expected:?}"
                );
            }
        }
    }
    // The identity orientation becomes T's own quaternion, a +90° turn about X.
    let r0 = row_map(vertex, 0);
    let c = std::f64::consts::FRAC_1_SQRT_2;
    for (k, e) in [c, c, 0.0, 0.0].iter().enumerate() {
        assert!((r0[&format!("rot_{k}")] - e).abs() < 1e-7);
    }
}

#[test]
fn gaussian_ply_normalises_rotations_and_keeps_saturated_opacities_finite() {
    let g = Gaussians {
        xyz: vec![0.0; 6],
        features_dc: vec![0.0; 6],
        scaling: vec![0.01; 6],
        rotation: vec![2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -3.0],
        opacity: vec![1.0, 0.0],
    };
    let bytes = export_to_bytes(&gaussian_output(g), ExportFormat::PlyGaussians).unwrap();
    let (_, elements) = read_ply(&bytes);
    let r0 = row_map(&elements[0], 0);
    let r1 = row_map(&elements[0], 1);
    let c = std::f64::consts::FRAC_1_SQRT_2;
    let q0 = [r0["rot_0"], r0["rot_1"], r0["rot_2"], r0["rot_3"]];
    assert!(
        q0.iter()
            .zip([c, c, 0.0, 0.0])
            .all(|(a, b)| (a - b).abs() < 1e-7),
        "{q0:?}"
    );
    let q1 = [r1["rot_0"], r1["rot_1"], r1["rot_2"], r1["rot_3"]];
    let norm = q1.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-6);
    assert!(
        r0["opacity"].is_finite() && r0["opacity"] > 15.0,
        "{}",
        r0["opacity"]
    );
    assert!(
        r1["opacity"].is_finite() && r1["opacity"] < -80.0,
        "{}",
        r1["opacity"]
    );
}

#[test]
fn gaussian_ply_of_no_gaussians_is_valid() {
    let bytes = export_to_bytes(
        &gaussian_output(Gaussians::default()),
        ExportFormat::PlyGaussians,
    )
    .unwrap();
    let (_, elements) = read_ply(&bytes);
    assert_eq!(elements[0].count, 0);
}

// ---------------------------------------------------------------------------------------------
// Mesh PLY

#[test]
fn mesh_ply_round_trips_with_and_without_colours() {
    for colored in [true, false] {
        let mesh = box_mesh(colored);
        let bytes = export_to_bytes(&mesh_output(mesh.clone()), ExportFormat::PlyMesh).unwrap();
        let (_, elements) = read_ply(&bytes);
        assert_eq!(elements.len(), 2);
        let (vertex, face) = (&elements[0], &elements[1]);
        assert_eq!(
            (vertex.name.as_str(), face.name.as_str()),
            ("vertex", "face")
        );
        let mut expected = vec!["float x", "float y", "float z"];
        if colored {
            expected.extend(["uchar red", "uchar green", "uchar blue"]);
        }
        assert_eq!(property_names(vertex), expected);
        assert_eq!(property_names(face), ["list uchar int vertex_indices"]);
        assert_eq!(vertex.count, 8);
        assert_eq!(face.count, 12);
        for i in 0..8 {
            let r = row_map(vertex, i);
            assert_eq!(
                [r["x"], r["y"], r["z"]],
                y_up(native_vertex(&mesh, i)).map(f64::from),
                "vertex {i}"
            );
            if colored {
                for (k, name) in ["red", "green", "blue"].iter().enumerate() {
                    let expected = (mesh.colors[3 * i + k] * 255.0).round() as f64;
                    assert_eq!(r[*name], expected, "vertex {i} {name}");
                }
            }
        }
        let indices: Vec<u32> = face
            .rows
            .iter()
            .flat_map(|row| row[0].iter().map(|v| *v as u32))
            .collect();
        assert!(face.rows.iter().all(|row| row[0].len() == 3));
        assert_eq!(indices, mesh.indices);
    }
}

// ---------------------------------------------------------------------------------------------
// OBJ

#[test]
fn obj_round_trips_with_and_without_colours() {
    for colored in [true, false] {
        let mesh = box_mesh(colored);
        let bytes = export_to_bytes(&mesh_output(mesh.clone()), ExportFormat::Obj).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let mut positions = Vec::new();
        let mut colors = Vec::new();
        let mut indices = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("v") => {
                    let values: Vec<f32> = words.map(|w| w.parse().unwrap()).collect();
                    assert_eq!(values.len(), if colored { 6 } else { 3 }, "{line}");
                    positions.push([values[0], values[1], values[2]]);
                    colors.extend_from_slice(&values[3..]);
                }
                Some("f") => {
                    let face: Vec<u32> = words.map(|w| w.parse().unwrap()).collect();
                    assert_eq!(face.len(), 3);
                    assert!(
                        face.iter().all(|&i| (1..=8).contains(&i)),
                        "1-based: {line}"
                    );
                    indices.extend(face.iter().map(|i| i - 1));
                }
                Some(w) if w.starts_with('#') => {}
                None => {}
                Some(other) => panic!("unexpected OBJ line {other}"),
            }
        }
        assert_eq!(positions.len(), 8);
        for (i, p) in positions.iter().enumerate() {
            // Shortest round-trip formatting: exactly the same floats.
            assert_eq!(*p, y_up(native_vertex(&mesh, i)), "vertex {i}");
        }
        assert_eq!(colors, mesh.colors);
        assert_eq!(indices, mesh.indices);
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn exports_name_what_is_missing_or_inconsistent() {
    let gaussians_only = gaussian_output(some_gaussians());
    for format in [ExportFormat::Glb, ExportFormat::PlyMesh, ExportFormat::Obj] {
        let err = export_to_bytes(&gaussians_only, format).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(
            err.message()
                .contains("this result has no mesh: ask for RECON_FORMAT_MESH"),
            "{err}"
        );
    }
    let err =
        export_to_bytes(&mesh_output(box_mesh(true)), ExportFormat::PlyGaussians).unwrap_err();
    assert!(
        err.message()
            .contains("no Gaussians: ask for RECON_FORMAT_GAUSSIANS"),
        "{err}"
    );

    let mesh_error = |edit: &dyn Fn(&mut Mesh), format| {
        let mut mesh = box_mesh(true);
        edit(&mut mesh);
        let err = export_to_bytes(&mesh_output(mesh), format).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        err.message().to_string()
    };
    for format in [ExportFormat::Glb, ExportFormat::PlyMesh, ExportFormat::Obj] {
        let m = mesh_error(&|m| m.positions[7] = f32::NAN, format);
        assert!(
            m.contains("mesh.positions[7]") && m.contains("vertex 2") && m.contains("NaN"),
            "{m}"
        );
        let m = mesh_error(&|m| m.indices[5] = 8, format);
        assert!(
            m.contains("mesh.indices[5]") && m.contains("8 vertices"),
            "{m}"
        );
        let m = mesh_error(&|m| m.colors.truncate(21), format);
        assert!(
            m.contains("mesh.colors has 21 values, expected 0 or 24"),
            "{m}"
        );
        let m = mesh_error(&|m| m.positions.push(0.0), format);
        assert!(m.contains("mesh.positions has 25 values"), "{m}");
        let m = mesh_error(&|m| m.indices.truncate(35), format);
        assert!(m.contains("mesh.indices has 35 values"), "{m}");
        let m = mesh_error(&|m| m.colors[0] = f32::INFINITY, format);
        assert!(m.contains("mesh.colors[0]"), "{m}");
    }

    let gaussian_error = |edit: &dyn Fn(&mut Gaussians)| {
        let mut g = some_gaussians();
        edit(&mut g);
        let err = export_to_bytes(&gaussian_output(g), ExportFormat::PlyGaussians).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        err.message().to_string()
    };
    let m = gaussian_error(&|g| g.scaling.push(0.1));
    assert!(
        m.contains("gaussians.scaling has 13 values, expected 12"),
        "{m}"
    );
    let m = gaussian_error(&|g| g.rotation.truncate(12));
    assert!(
        m.contains("gaussians.rotation has 12 values, expected 16"),
        "{m}"
    );
    let m = gaussian_error(&|g| g.xyz[4] = f32::NAN);
    assert!(
        m.contains("gaussians.xyz[4]") && m.contains("Gaussian 1"),
        "{m}"
    );
    let m = gaussian_error(&|g| g.scaling[2] = 0.0);
    assert!(m.contains("gaussians.scaling[2]"), "{m}");
    let m = gaussian_error(&|g| g.opacity[3] = 1.5);
    assert!(m.contains("gaussians.opacity[3]"), "{m}");
    let m = gaussian_error(&|g| g.rotation[4..8].fill(0.0));
    assert!(m.contains("Gaussian 1 is the zero quaternion"), "{m}");
}

// ---------------------------------------------------------------------------------------------
// Atomic file writes

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn file_exports_match_the_bytes_and_replace_existing_files_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh_output(box_mesh(true));
    let gaussians = gaussian_output(some_gaussians());
    for (format, output, name) in [
        (ExportFormat::Glb, &mesh, "asset.glb"),
        (ExportFormat::PlyMesh, &mesh, "mesh.ply"),
        (ExportFormat::Obj, &mesh, "mesh.obj"),
        (ExportFormat::PlyGaussians, &gaussians, "splats.ply"),
    ] {
        let path = dir.path().join(name);
        // An existing, longer file is replaced completely (no stale tail).
        std::fs::write(&path, vec![b'x'; 1 << 16]).unwrap();
        export_to_path(output, format, &path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            export_to_bytes(output, format).unwrap(),
            "{name}"
        );
        assert_eq!(format.extension(), name.rsplit('.').next().unwrap());
    }
    assert_eq!(
        dir_entries(dir.path()),
        ["asset.glb", "mesh.obj", "mesh.ply", "splats.ply"]
    );
}

#[test]
fn failed_file_exports_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh_output(box_mesh(true));

    // A missing directory: an I/O error naming it, and nothing created.
    let missing = dir.path().join("no-such-dir");
    let err = export_to_path(&mesh, ExportFormat::Glb, &missing.join("asset.glb")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(
        err.message().contains("does not exist") && err.message().contains("no-such-dir"),
        "{err}"
    );
    assert!(dir_entries(dir.path()).is_empty());

    // Invalid data over an existing file: the file keeps its old content, no temp file remains.
    let path = dir.path().join("asset.glb");
    std::fs::write(&path, b"old").unwrap();
    let mut broken = box_mesh(true);
    broken.indices[0] = 99;
    let err = export_to_path(&mesh_output(broken), ExportFormat::Glb, &path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    // A missing mesh: same.
    let err = export_to_path(&Output::default(), ExportFormat::Obj, &path).unwrap_err();
    assert!(err.message().contains("no mesh"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(dir_entries(dir.path()), ["asset.glb"]);

    // A directory as the target: refused, the directory untouched, no temp file.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let err = export_to_path(&mesh, ExportFormat::Obj, &sub).unwrap_err();
    assert!(err.message().contains("directory"), "{err}");
    assert!(dir_entries(&sub).is_empty());
    assert_eq!(dir_entries(dir.path()), ["asset.glb", "sub"]);

    // A failure after the temporary file was written (the final rename is refused: a trailing
    // slash asks for a directory) removes the temporary file. Works even as root.
    #[cfg(unix)]
    {
        let slashed = format!("{}/", sub.join("new.obj").display());
        let err = export_to_path(&mesh, ExportFormat::Obj, Path::new(&slashed)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(
            err.message().contains("replacing it with"),
            "failed at the rename: {err}"
        );
        assert!(dir_entries(&sub).is_empty(), "{:?}", dir_entries(&sub));
    }
}

#[cfg(unix)]
#[test]
fn an_unwritable_directory_fails_cleanly() {
    // A read-only directory cannot take the temporary file: the export fails cleanly and the
    // directory stays as it was. (Skipped when running as root, which ignores permissions.)
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("asset.obj"), b"old").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(locked.join("probe"), b"").is_ok() {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        eprintln!("skipped: permissions are not enforced for this user");
        return;
    }
    let result = export_to_path(
        &mesh_output(box_mesh(false)),
        ExportFormat::Obj,
        &locked.join("asset.obj"),
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert_eq!(dir_entries(&locked), ["asset.obj"]);
    assert_eq!(std::fs::read(locked.join("asset.obj")).unwrap(), b"old");
}

/// Set in the child process of `a_full_disk_fails_the_export_and_leaves_no_file`.
#[cfg(target_os = "linux")]
const DISK_FULL_CHILD: &str = "RECON_TEST_DISK_FULL_DIR";

/// A write that runs out of space mid-file fails with an I/O error naming the file and leaves
/// neither a partial file nor the temporary one. Simulated with a 4 KiB file-size limit
/// (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it fail with EFBIG, the same code path as
/// ENOSPC) in a child process, so no other test shares the limit; works as root, needs no
/// mount.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_fails_the_export_and_leaves_no_file() {
    if let Some(dir) = std::env::var_os(DISK_FULL_CHILD) {
        export_past_a_file_size_limit(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("asset.glb"), b"old").unwrap();
    // The child's output goes to pipes: under its file-size limit, writing to a redirected
    // log file (as CI does) would fail too.
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_full_disk_fails_the_export_and_leaves_no_file",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(DISK_FULL_CHILD, dir.path())
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "the child's checks failed: {}\n{}{}",
        child.status,
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(dir_entries(dir.path()), ["asset.glb"]);
    assert_eq!(std::fs::read(dir.path().join("asset.glb")).unwrap(), b"old");
}

#[cfg(target_os = "linux")]
fn export_past_a_file_size_limit(dir: &Path) {
    const LIMIT: u64 = 4096;
    // SAFETY: plain libc calls on this (single-threaded: --test-threads=1) child process.
    unsafe {
        assert_ne!(libc::signal(libc::SIGXFSZ, libc::SIG_IGN), libc::SIG_ERR);
        let limit = libc::rlimit {
            rlim_cur: LIMIT,
            rlim_max: LIMIT,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    let mesh = mesh_output(dense_grid_mesh(40));
    let bytes = export_to_bytes(&mesh, ExportFormat::Glb).unwrap();
    assert!(bytes.len() as u64 > 4 * LIMIT, "{} bytes", bytes.len());
    for (format, name) in [
        (ExportFormat::Glb, "asset.glb"),
        (ExportFormat::Obj, "mesh.obj"),
    ] {
        let err = export_to_path(&mesh, format, &dir.join(name)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(
            err.message().contains(".tmp") || err.message().contains(name),
            "{err}"
        );
        assert!(err.message().contains("too large"), "EFBIG named: {err}");
    }
    eprintln!("disk full: both exports failed cleanly");
}

/// An `n`×`n` grid of quads in the z = 0 plane: a mesh with a few thousand triangles.
#[cfg(target_os = "linux")]
fn dense_grid_mesh(n: u32) -> Mesh {
    let side = n + 1;
    let mut vertices = Vec::new();
    for j in 0..side {
        for i in 0..side {
            vertices.extend([i as f32 / n as f32, j as f32 / n as f32, 0.0]);
        }
    }
    let mut indices = Vec::new();
    for j in 0..n {
        for i in 0..n {
            let a = j * side + i;
            indices.extend([a, a + 1, a + side + 1, a, a + side + 1, a + side]);
        }
    }
    Mesh {
        positions: vertices,
        colors: Vec::new(),
        indices,
    }
}

// ---------------------------------------------------------------------------------------------
// Cameras in the GLB

/// An OpenCV camera-from-world camera at `centre` (native Z-up frame) looking at `target`,
/// upright (its image "up", −y, towards native +Z).
fn look_at(centre: [f64; 3], target: [f64; 3], k: [f32; 4], size: (u32, u32)) -> Camera {
    let normalize = |v: [f64; 3]| {
        let n = dot(v, v).sqrt();
        v.map(|c| c / n)
    };
    let z = normalize(sub(target, centre));
    let x = normalize(cross(z, [0.0, 0.0, 1.0]));
    let y = cross(z, x);
    let r = [x, y, z];
    let t = r.map(|row| -dot(row, centre));
    let mut extrinsic = [0f32; 12];
    for i in 0..3 {
        for j in 0..3 {
            extrinsic[4 * i + j] = r[i][j] as f32;
        }
        extrinsic[4 * i + 3] = t[i] as f32;
    }
    let [fx, fy, cx, cy] = k;
    Camera {
        extrinsic,
        intrinsic: [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        width: size.0,
        height: size.1,
    }
}

/// Two cameras: fx ≠ fy with a centred principal point, and fx = fy off-centre.
fn two_cameras() -> Vec<Camera> {
    vec![
        look_at(
            [1.2, -1.5, 0.8],
            [0.05, 0.0, 0.1],
            [600.0, 620.0, 320.0, 240.0],
            (640, 480),
        ),
        look_at(
            [-0.5, 1.8, -0.3],
            [0.0, 0.1, 0.2],
            [500.0, 500.0, 250.0, 262.0],
            (512, 512),
        ),
    ]
}

/// Native frame pieces of an OpenCV camera: R's rows and t.
fn rotation_rows(camera: &Camera) -> ([[f64; 3]; 3], [f64; 3]) {
    let e = camera.extrinsic.map(f64::from);
    (
        [[e[0], e[1], e[2]], [e[4], e[5], e[6]], [e[8], e[9], e[10]]],
        [e[3], e[7], e[11]],
    )
}

fn y_up64(p: [f64; 3]) -> [f64; 3] {
    [p[0], p[2], -p[1]]
}

fn assert_close(got: [f64; 3], want: [f64; 3], tolerance: f64, what: &str) {
    let error = sub(got, want).iter().fold(0f64, |m, d| m.max(d.abs()));
    assert!(error <= tolerance, "{what}: {got:?} vs {want:?}");
}

#[test]
fn glb_with_cameras_places_one_camera_node_per_view() {
    let cameras = two_cameras();
    let output = Output {
        mesh: Some(box_mesh(true)),
        cameras: cameras.clone(),
        ..Default::default()
    };
    let options = ExportOptions { cameras: true };
    let bytes = export_to_bytes_with(&output, ExportFormat::Glb, &options).unwrap();
    let chunks = parse_glb_container(&bytes);
    check_gltf_layout(&chunks);
    let gltf = read_glb(&bytes);
    assert_eq!(gltf.cameras().count(), 2);
    // The mesh node first, then camera_0, camera_1, all children of the scene.
    let scene_nodes: Vec<_> = gltf.default_scene().unwrap().nodes().collect();
    assert_eq!(scene_nodes.len(), 3);
    assert!(scene_nodes[0].mesh().is_some() && scene_nodes[0].camera().is_none());
    // The mesh itself is unchanged by the cameras.
    let plain = export_to_bytes(&output, ExportFormat::Glb).unwrap();
    assert_eq!(
        parse_glb_container(&plain).bin,
        chunks.bin,
        "same buffers with or without cameras"
    );

    for (i, camera) in cameras.iter().enumerate() {
        let node = &scene_nodes[i + 1];
        let json_node = &chunks.json["nodes"][node.index()];
        assert_eq!(json_node["name"], format!("camera_{i}"));
        assert_eq!(chunks.json["cameras"][i]["name"], format!("camera_{i}"));
        assert!(node.children().next().is_none());
        let gcam = node.camera().expect("a camera node");
        assert_eq!(gcam.index(), i);
        let gltf::camera::Projection::Perspective(p) = gcam.projection() else {
            panic!("camera {i} is not perspective");
        };
        let [fx, fy, cx, cy] = [0, 4, 2, 5].map(|k| f64::from(camera.intrinsic[k]));
        let (w, h) = (f64::from(camera.width), f64::from(camera.height));
        let yfov = 2.0 * (h / 2.0 / fy).atan();
        assert!((f64::from(p.yfov()) - yfov).abs() < 1e-6, "yfov {i}");
        // glTF's aspect ratio is that of the field of view: tan(xfov/2) / tan(yfov/2).
        let aspect = (w / fx) / (h / fy);
        assert!((f64::from(p.aspect_ratio().unwrap()) - aspect).abs() < 1e-6);
        if fx == fy {
            assert!((f64::from(p.aspect_ratio().unwrap()) - w / h).abs() < 1e-6);
        }
        assert!(p.znear() > 0.0 && p.zfar().is_none());

        // The node's transform (TRS, a unit quaternion) as a column-major matrix.
        let gltf::scene::Transform::Decomposed {
            rotation, scale, ..
        } = node.transform()
        else {
            panic!("camera {i}: a matrix transform, expected TRS");
        };
        assert_eq!(scale, [1.0; 3]);
        let norm: f32 = rotation.iter().map(|c| c * c).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        let m = node.transform().matrix().map(|col| col.map(f64::from));
        let column = |k: usize| [m[k][0], m[k][1], m[k][2]];
        let (r, t) = rotation_rows(camera);
        // Origin: the camera centre −Rᵀt, turned Y-up.
        let centre = [0, 1, 2].map(|j| -(0..3).map(|k| r[k][j] * t[k]).sum::<f64>());
        assert_close(column(3), y_up64(centre), 1e-5, "camera centre");
        // −Z: the OpenCV viewing direction (R's third row), turned Y-up; +Y: OpenCV −y;
        // +X: OpenCV x.
        assert_close(
            column(2).map(|c| -c),
            y_up64(r[2]),
            1e-5,
            "viewing direction",
        );
        assert_close(column(1), y_up64(r[1].map(|c| -c)), 1e-5, "up");
        assert_close(column(0), y_up64(r[0]), 1e-5, "right");
        // look_at cameras are upright: their up has a positive Y-up component.
        assert!(column(1)[1] > 0.0, "camera {i} is upside down");

        // A world point projects to the same pixel through OpenCV and through glTF (the
        // principal point aside, which glTF cannot express: compare offsets from it).
        let x_native = [0.1, -0.2, 0.3];
        let cam = [0, 1, 2].map(|k| dot(r[k], x_native) + t[k]);
        let (u, v) = (fx * cam[0] / cam[2], fy * cam[1] / cam[2]);
        let rel = sub(y_up64(x_native), column(3));
        let local = [0, 1, 2].map(|k| dot(column(k), rel)); // Rᵀ(x − c), R orthonormal
        let tan_half = (f64::from(p.yfov()) / 2.0).tan();
        let a = f64::from(p.aspect_ratio().unwrap());
        let ndc = [
            local[0] / -local[2] / (a * tan_half),
            local[1] / -local[2] / tan_half,
        ];
        assert!((ndc[0] * w / 2.0 - u).abs() < 1e-3, "u {i}");
        assert!((-ndc[1] * h / 2.0 - v).abs() < 1e-3, "v {i}");

        // Extras keep the OpenCV intrinsics and the extrinsic as given.
        let extras = &json_node["extras"];
        assert_eq!(extras["view"], i);
        for (key, value) in [("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy), ("width", w)] {
            assert_eq!(extras[key].as_f64().unwrap(), value, "{key}");
        }
        assert_eq!(extras["height"].as_u64().unwrap(), u64::from(camera.height));
        let extrinsic: Vec<f32> = extras["extrinsic"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(extrinsic, camera.extrinsic);
    }

    // The file export writes the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cameras.glb");
    export_to_path_with(&output, ExportFormat::Glb, &options, &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn glb_without_the_option_or_without_cameras_has_none() {
    let with_cameras = Output {
        mesh: Some(box_mesh(false)),
        cameras: two_cameras(),
        ..Default::default()
    };
    let plain = export_to_bytes(&with_cameras, ExportFormat::Glb).unwrap();
    let gltf = read_glb(&plain);
    assert_eq!(gltf.cameras().count(), 0);
    assert_eq!(gltf.nodes().count(), 1);
    assert!(parse_glb_container(&plain).json.get("cameras").is_none());
    // Asking for cameras when the result has none: the plain GLB, byte for byte.
    let options = ExportOptions { cameras: true };
    let no_cameras = mesh_output(box_mesh(false));
    assert_eq!(
        export_to_bytes_with(&no_cameras, ExportFormat::Glb, &options).unwrap(),
        plain
    );
    // A mesh without triangles still carries the cameras.
    let empty = Output {
        mesh: Some(Mesh {
            positions: Vec::new(),
            colors: Vec::new(),
            indices: Vec::new(),
        }),
        cameras: two_cameras(),
        ..Default::default()
    };
    let bytes = export_to_bytes_with(&empty, ExportFormat::Glb, &options).unwrap();
    let gltf = read_glb(&bytes);
    assert_eq!(gltf.cameras().count(), 2);
    assert_eq!(gltf.default_scene().unwrap().nodes().count(), 3);
}

#[test]
fn cameras_are_refused_where_they_cannot_go() {
    let options = ExportOptions { cameras: true };
    let output = Output {
        gaussians: Some(some_gaussians()),
        mesh: Some(box_mesh(true)),
        cameras: two_cameras(),
    };
    for format in [
        ExportFormat::PlyGaussians,
        ExportFormat::PlyMesh,
        ExportFormat::Obj,
    ] {
        let err = export_to_bytes_with(&output, format, &options).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("cameras"), "{err}");
    }
    // No mesh: no GLB, cameras or not.
    let gaussians_only = Output {
        mesh: None,
        ..output.clone()
    };
    let err = export_to_bytes_with(&gaussians_only, ExportFormat::Glb, &options).unwrap_err();
    assert!(err.message().contains("no mesh"), "{err}");
    // A camera that is not a rigid pose is named.
    let mut broken = output;
    broken.cameras[1].extrinsic[5] = 3.0;
    let err = export_to_bytes_with(&broken, ExportFormat::Glb, &options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("cameras[1]"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Small vector helpers

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
