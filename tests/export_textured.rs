//! Textured exports (src/export/textured.rs and the `export_textured_*` entry points): a mesh
//! baked from a small synthetic scene is written as GLB (PNG, JPEG, WebP textures) and as
//! OBJ + MTL + PNG, and read back with the `gltf` crate, the `image` crate and a small OBJ
//! reader: texture present and decodable, UVs in [0, 1], few degenerate UV triangles, unit
//! normals, a non-metallic material, the Y-up frame.

use recon::export::textured::{textured_mesh_to_glb, write_textured_obj, ImageFormat};
use recon::export::{
    export_textured_to_bytes, export_textured_to_path, mesh_frame, ExportFormat,
    TexturedExportOptions,
};
use recon::pipeline::Output;
use recon::postprocessing::{postprocess, BakeMode, PostprocessOptions, TexturedMesh};
use recon::ErrorKind;
use tch::Device;

mod common;
use common::{color_at, icosphere, sphere_gaussians};

/// Documented bound on UV triangles of (numerically) zero area: xatlas gives every mapped
/// triangle a chart area, so this only allows for faces it leaves unmapped.
const MAX_DEGENERATE_UV_FRACTION: f64 = 0.01;

const R: f32 = 0.35;

fn small_options() -> PostprocessOptions {
    PostprocessOptions {
        simplify: 0.5,
        fill_holes_views: 16,
        fill_holes_resolution: 64,
        texture_size: 64,
        bake_mode: BakeMode::Fast,
        views: 16,
        render_resolution: 96,
        ..PostprocessOptions::default()
    }
}

fn scene_output() -> Output {
    Output {
        gaussians: Some(sphere_gaussians(R, 4000, 0.012)),
        mesh: Some(icosphere(R, 3)),
        cameras: vec![],
    }
}

fn baked_mesh() -> TexturedMesh {
    let output = scene_output();
    let (mesh, report) = postprocess(
        output.gaussians.as_ref().unwrap(),
        output.mesh.as_ref().unwrap(),
        &small_options(),
        Device::Cpu,
    )
    .unwrap();
    println!("baked: {report:?}");
    mesh
}

fn degenerate_uv_fraction(uvs: &[[f32; 2]], indices: &[u32]) -> f64 {
    let degenerate = indices
        .chunks(3)
        .filter(|t| {
            let [a, b, c] = [t[0], t[1], t[2]].map(|i| uvs[i as usize].map(f64::from));
            ((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])).abs() < 1e-12
        })
        .count();
    degenerate as f64 / (indices.len() / 3) as f64
}

/// Parses a GLB and checks the textured primitive; returns the document, the BIN chunk and
/// the decoded texture (when `decode` knows the image format).
fn check_textured_glb(
    bytes: &[u8],
    mesh: &TexturedMesh,
    mime: &str,
) -> (gltf::Gltf, Vec<u8>, image::DynamicImage) {
    let gltf = gltf::Gltf::from_slice(bytes).expect("the gltf crate parses and validates the GLB");
    let blob = gltf.blob.clone().expect("a BIN chunk");
    let doc = &gltf.document;
    let primitive = doc.meshes().next().unwrap().primitives().next().unwrap();
    let reader = primitive.reader(|_| Some(&blob));
    let positions: Vec<[f32; 3]> = reader.read_positions().unwrap().collect();
    assert_eq!(positions.len(), mesh.vertex_count());
    for (i, p) in positions.iter().enumerate() {
        let q = &mesh.positions[3 * i..3 * i + 3];
        assert_eq!(*p, mesh_frame([q[0], q[1], q[2]]), "Y-up position {i}");
    }
    let normals: Vec<[f32; 3]> = reader.read_normals().unwrap().collect();
    assert_eq!(normals.len(), positions.len());
    for n in &normals {
        let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
        assert!((length - 1.0).abs() < 1e-4, "normal {n:?}");
    }
    let uvs: Vec<[f32; 2]> = reader.read_tex_coords(0).unwrap().into_f32().collect();
    assert_eq!(uvs.len(), positions.len());
    assert!(
        uvs.iter().flatten().all(|v| (0.0..=1.0).contains(v)),
        "UVs in [0, 1]"
    );
    let indices: Vec<u32> = reader.read_indices().unwrap().into_u32().collect();
    assert_eq!(indices, mesh.indices);
    let fraction = degenerate_uv_fraction(&uvs, &indices);
    println!("degenerate UV triangles: {:.3} %", 100.0 * fraction);
    assert!(fraction <= MAX_DEGENERATE_UV_FRACTION);

    let material = primitive.material();
    let pbr = material.pbr_metallic_roughness();
    assert_eq!(pbr.metallic_factor(), 0.0, "non-metallic");
    assert_eq!(pbr.roughness_factor(), 1.0);
    assert_eq!(pbr.base_color_factor(), [1.0; 4]);
    let info = pbr.base_color_texture().expect("a base colour texture");
    assert_eq!(info.tex_coord(), 0);
    let sampler = info.texture().sampler();
    assert_eq!(
        sampler.min_filter(),
        Some(gltf::texture::MinFilter::LinearMipmapLinear)
    );
    let image = doc.images().next().expect("one image");
    let gltf::image::Source::View { view, mime_type } = image.source() else {
        panic!("the image is not in the BIN chunk");
    };
    assert_eq!(mime_type, mime);
    let data = &blob[view.offset()..view.offset() + view.length()];
    let decoded = image::load_from_memory(data).expect("the texture decodes");
    let texture = mesh.texture.as_ref().unwrap();
    assert_eq!((decoded.width(), decoded.height()), texture.dimensions());
    (gltf, blob, decoded)
}

#[test]
fn baked_glb_round_trips_with_texture_uvs_and_normals() {
    let mesh = baked_mesh();
    let bytes = textured_mesh_to_glb(&mesh, ImageFormat::Png, &[]).unwrap();
    let (_, _, decoded) = check_textured_glb(&bytes, &mesh, "image/png");
    // PNG is lossless: the texels are the baked ones, unchanged (no colour conversion).
    assert_eq!(decoded.to_rgb8(), *mesh.texture.as_ref().unwrap());
    // The texture shows the scene's colours, not black: mean well above 0.
    let mean = decoded
        .to_rgb8()
        .pixels()
        .map(|p| u32::from(p[0]))
        .sum::<u32>() as f64
        / f64::from(decoded.width() * decoded.height());
    assert!(mean > 60.0, "mean red level {mean}");
}

#[test]
fn jpeg_and_webp_textures_are_written_too() {
    let mesh = baked_mesh();
    let jpeg = textured_mesh_to_glb(&mesh, ImageFormat::Jpeg { quality: 90 }, &[]).unwrap();
    check_textured_glb(&jpeg, &mesh, "image/jpeg");

    // WebP goes through EXT_texture_webp: the texture has no core `source`.
    let webp = textured_mesh_to_glb(&mesh, ImageFormat::WebP, &[]).unwrap();
    let gltf = gltf::Gltf::from_slice(&webp).expect("parses with EXT_texture_webp");
    let required: Vec<&str> = gltf.document.extensions_required().collect();
    assert_eq!(required, ["EXT_texture_webp"]);
    let json: serde_json::Value = {
        let length = u32::from_le_bytes(webp[12..16].try_into().unwrap()) as usize;
        serde_json::from_slice(&webp[20..20 + length]).unwrap()
    };
    assert_eq!(
        json["textures"][0]["extensions"]["EXT_texture_webp"]["source"],
        0
    );
    assert_eq!(json["images"][0]["mimeType"], "image/webp");
    let view = &json["bufferViews"][json["images"][0]["bufferView"].as_u64().unwrap() as usize];
    let (offset, length) = (
        view["byteOffset"].as_u64().unwrap() as usize,
        view["byteLength"].as_u64().unwrap() as usize,
    );
    let blob = gltf.blob.as_ref().unwrap();
    let decoded = image::load_from_memory(&blob[offset..offset + length]).unwrap();
    assert_eq!(
        decoded.to_rgb8(),
        *mesh.texture.as_ref().unwrap(),
        "lossless WebP"
    );
}

/// What [`parse_obj`] reads.
struct ObjContent {
    v: usize,
    vt: Vec<[f32; 2]>,
    vn: usize,
    faces: Vec<[u32; 3]>,
    mtllib: Option<String>,
}

/// Parses the OBJ lines we write: `v`, `vt`, `vn` counts, faces and the `mtllib`.
fn parse_obj(text: &str) -> ObjContent {
    let (mut v, mut vt, mut vn, mut faces, mut mtllib) = (0, Vec::new(), 0, Vec::new(), None);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("v") => v += 1,
            Some("vn") => vn += 1,
            Some("vt") => {
                let uv: Vec<f32> = parts.map(|x| x.parse().unwrap()).collect();
                vt.push([uv[0], uv[1]]);
            }
            Some("f") => {
                let corners: Vec<[u32; 3]> = parts
                    .map(|c| {
                        let ids: Vec<u32> = c.split('/').map(|x| x.parse().unwrap()).collect();
                        [ids[0], ids[1], ids[2]]
                    })
                    .collect();
                assert_eq!(corners.len(), 3);
                for c in &corners {
                    assert!(c[0] == c[1] && c[1] == c[2], "one index per corner");
                }
                faces.push([corners[0][0], corners[1][0], corners[2][0]]);
            }
            Some("mtllib") => mtllib = parts.next().map(str::to_owned),
            _ => {}
        }
    }
    ObjContent {
        v,
        vt,
        vn,
        faces,
        mtllib,
    }
}

#[test]
fn textured_obj_is_written_as_a_set() {
    let mesh = baked_mesh();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("asset.obj");
    let written = write_textured_obj(&mesh, &path, ImageFormat::Png).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["asset.png", "asset.mtl", "asset.obj"]);
    // Nothing else (no temporary files) is left in the directory.
    let mut present: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(present, ["asset.mtl", "asset.obj", "asset.png"]);

    let text = std::fs::read_to_string(&path).unwrap();
    let ObjContent {
        v,
        vt,
        vn,
        faces,
        mtllib,
    } = parse_obj(&text);
    assert_eq!(mtllib.as_deref(), Some("asset.mtl"));
    assert_eq!(
        (v, vt.len(), vn),
        (
            mesh.vertex_count(),
            mesh.vertex_count(),
            mesh.vertex_count()
        )
    );
    assert_eq!(faces.len(), mesh.face_count());
    // OBJ's v points up the image: vt = (u, 1 − v).
    for (i, t) in vt.iter().enumerate() {
        assert!((t[0] - mesh.uvs[2 * i]).abs() < 1e-6);
        assert!((t[1] - (1.0 - mesh.uvs[2 * i + 1])).abs() < 1e-6);
    }
    let mtl = std::fs::read_to_string(dir.path().join("asset.mtl")).unwrap();
    assert!(
        mtl.contains("map_Kd asset.png") && mtl.contains("Pm 0"),
        "{mtl}"
    );
    let png = image::open(dir.path().join("asset.png")).unwrap();
    assert_eq!(png.to_rgb8(), *mesh.texture.as_ref().unwrap());

    // A failed export leaves nothing behind: a missing directory.
    let missing = dir.path().join("nope").join("asset.obj");
    assert!(write_textured_obj(&mesh, &missing, ImageFormat::Png).is_err());
}

#[test]
fn export_entry_points_run_the_post_processing() {
    let output = scene_output();
    let options = TexturedExportOptions {
        postprocess: small_options(),
        ..TexturedExportOptions::default()
    };
    let glb = export_textured_to_bytes(&output, &options, Device::Cpu).unwrap();
    let gltf = gltf::Gltf::from_slice(&glb).unwrap();
    assert_eq!(gltf.document.textures().count(), 1);

    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("scene.obj");
    let files =
        export_textured_to_path(&output, ExportFormat::Obj, &options, Device::Cpu, &obj).unwrap();
    assert_eq!(files.len(), 3);
    let glb_path = dir.path().join("scene.glb");
    let files =
        export_textured_to_path(&output, ExportFormat::Glb, &options, Device::Cpu, &glb_path)
            .unwrap();
    assert_eq!(files, std::slice::from_ref(&glb_path));
    assert!(gltf::Gltf::from_slice(&std::fs::read(&glb_path).unwrap()).is_ok());

    // No textures in PLY; no texture without Gaussians; cameras only in GLB.
    let err = export_textured_to_path(&output, ExportFormat::PlyMesh, &options, Device::Cpu, &obj)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let no_gaussians = Output {
        gaussians: None,
        ..scene_output()
    };
    let err = export_textured_to_bytes(&no_gaussians, &options, Device::Cpu).unwrap_err();
    assert!(err.message().contains("Gaussians"), "{err}");
    let with_cameras = TexturedExportOptions {
        cameras: true,
        ..options
    };
    assert!(
        export_textured_to_path(&output, ExportFormat::Obj, &with_cameras, Device::Cpu, &obj)
            .is_err()
    );
}

#[test]
fn vertex_colours_only_gives_a_colour_glb_without_texture() {
    let mut output = scene_output();
    // The mesh's own colours are used as they are; no Gaussians needed.
    let mesh = output.mesh.as_mut().unwrap();
    mesh.colors = mesh
        .positions
        .chunks(3)
        .flat_map(|p| color_at([p[0], p[1], p[2]]))
        .collect();
    output.gaussians = None;
    let options = TexturedExportOptions {
        postprocess: PostprocessOptions {
            vertex_colors_only: true,
            ..small_options()
        },
        ..TexturedExportOptions::default()
    };
    let glb = export_textured_to_bytes(&output, &options, Device::Cpu).unwrap();
    let gltf = gltf::Gltf::from_slice(&glb).unwrap();
    let blob = gltf.blob.clone().unwrap();
    let primitive = gltf
        .document
        .meshes()
        .next()
        .unwrap()
        .primitives()
        .next()
        .unwrap();
    assert!(primitive.get(&gltf::Semantic::TexCoords(0)).is_none());
    assert_eq!(gltf.document.images().count(), 0);
    let colors: Vec<[f32; 3]> = primitive
        .reader(|_| Some(&blob))
        .read_colors(0)
        .unwrap()
        .into_rgb_f32()
        .collect();
    assert!(!colors.is_empty());
    let pbr = primitive.material().pbr_metallic_roughness();
    assert_eq!(pbr.metallic_factor(), 0.0);
}
