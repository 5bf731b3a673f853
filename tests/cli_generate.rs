//! `recon generate` and `recon demo` end to end through the built binary, on the bundled tiny
//! model (random weights: the shapes are meaningless, the files must still be well formed), and
//! the CLI's refusals: each names what was wrong, exits non-zero and writes no file.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::{assert_cli_refuses, recon_cli as recon, text};

fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn tiny_model() -> PathBuf {
    fixture("tests/fixtures/model_tiny")
}

fn example_image() -> PathBuf {
    fixture("tests/fixtures/images/example.png")
}

/// Command-line arguments from strings and paths alike.
macro_rules! args {
    ($($arg:expr),* $(,)?) => { vec![$(OsString::from($arg)),*] };
}

/// A run that generates every file format at once: the GLB must be glTF binary, the PLYs
/// must start with a PLY header, the OBJ with vertices; the summary must name the files.
#[test]
fn generate_writes_every_requested_format() {
    let dir = tempfile::tempdir().unwrap();
    let glb = dir.path().join("asset.glb");
    let splats = dir.path().join("splats.ply");
    let mesh_ply = dir.path().join("mesh.ply");
    let obj = dir.path().join("mesh.obj");
    let started = std::time::Instant::now();
    let out = recon(args![
        "generate",
        &example_image(),
        "-o",
        &glb,
        "--gaussians",
        &splats,
        "--mesh-ply",
        &mesh_ply,
        "--obj",
        &obj,
        "--steps",
        "2",
        "--seed",
        "7",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
    ]);
    println!(
        "recon generate (4 formats, 2+2 steps): {:.1?}",
        started.elapsed()
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");

    let glb_bytes = std::fs::read(&glb).unwrap();
    assert_eq!(&glb_bytes[..4], b"glTF", "GLB magic");
    let declared = u32::from_le_bytes(glb_bytes[8..12].try_into().unwrap()) as usize;
    assert_eq!(declared, glb_bytes.len(), "GLB header length");
    for ply in [&splats, &mesh_ply] {
        let bytes = std::fs::read(ply).unwrap();
        assert!(bytes.starts_with(b"ply\n"), "{}", ply.display());
        assert!(bytes.len() > 200, "{}", ply.display());
    }
    let splat_header = text(&std::fs::read(&splats).unwrap()[..200]);
    assert!(splat_header.contains("element vertex"), "{splat_header}");
    let obj_text = std::fs::read_to_string(&obj).unwrap();
    assert!(
        obj_text.lines().any(|l| l.starts_with("v ")),
        "OBJ vertices"
    );
    assert!(obj_text.lines().any(|l| l.starts_with("f ")), "OBJ faces");

    for expected in [
        "timings:",
        "sparse structure",
        "structured latent",
        "total",
        "voxels",
    ] {
        assert!(
            stdout.contains(expected),
            "summary lacks '{expected}':\n{stdout}"
        );
    }
    for path in [&glb, &splats, &mesh_ply, &obj] {
        assert!(
            stdout.contains(&format!("wrote {}", path.display())),
            "summary lacks {}:\n{stdout}",
            path.display()
        );
    }
    // Nothing else (no temporary files) is left beside the outputs.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}

/// Gaussians only: the mesh decoder is neither loaded nor run.
#[test]
fn generate_gaussians_only_skips_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let splats = dir.path().join("splats.ply");
    let started = std::time::Instant::now();
    let out = recon(args![
        "generate",
        "--image",
        &example_image(),
        "--gaussians",
        &splats,
        "--steps",
        "2",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
    ]);
    println!(
        "recon generate (Gaussians, 2+2 steps): {:.1?}",
        started.elapsed()
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("mesh: none"), "{stdout}");
    assert!(stdout.contains("(1 decoder(s))"), "{stdout}");
    assert!(std::fs::read(&splats).unwrap().starts_with(b"ply\n"));
}

/// `--turntable` with the Gaussians into an MP4 (PNG frames in a build without the encoder),
/// then the mesh's normals into a folder of PNG frames as the only output.
#[test]
fn generate_writes_turntables() {
    let dir = tempfile::tempdir().unwrap();
    let splats = dir.path().join("splats.ply");
    let mp4 = dir.path().join("spin.mp4");
    let started = std::time::Instant::now();
    let out = recon(args![
        "generate",
        &example_image(),
        "--gaussians",
        &splats,
        "--turntable",
        &mp4,
        "--turntable-frames",
        "3",
        "--turntable-resolution",
        "32",
        "--turntable-fps",
        "12",
        "--steps",
        "2",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
    ]);
    println!(
        "recon generate (Gaussians + turntable of 3 frames, 2+2 steps): {:.1?}",
        started.elapsed()
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("mesh: none"), "{stdout}");
    assert!(
        stdout.contains("turntable of the gaussians") && stdout.contains("3 frames of 32x32"),
        "{stdout}"
    );
    if recon::render::video::MP4_SUPPORTED {
        let bytes = std::fs::read(&mp4).unwrap();
        assert_eq!(&bytes[4..8], b"ftyp", "an MP4 file");
        assert!(stdout.contains("at 12 fps"), "{stdout}");
    } else {
        assert!(stderr.contains("without the MP4 encoder"), "{stderr}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("spin")).unwrap().count(),
            3
        );
    }
    assert!(std::fs::read(&splats).unwrap().starts_with(b"ply\n"));

    let frames = dir.path().join("normals");
    let out = recon(args![
        "generate",
        &example_image(),
        "--turntable",
        format!("{}/", frames.display()),
        "--turntable-content",
        "normals",
        "--turntable-frames",
        "3",
        "--turntable-resolution",
        "24",
        "--steps",
        "2",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("turntable of the normals"), "{stdout}");
    assert!(
        stdout.contains("(1 decoder(s))"),
        "only the mesh decoder: {stdout}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&frames)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    );
    let png = std::fs::read(frames.join("frame_0000.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
}

/// `--textured` options: TRELLIS's to_glb with small settings (fast bake from 4 views of
/// 64², no hole filling) into a GLB with a base-colour texture and an OBJ + MTL + PNG.
#[test]
fn generate_writes_textured_meshes() {
    let dir = tempfile::tempdir().unwrap();
    let glb = dir.path().join("asset.glb");
    let obj = dir.path().join("asset.obj");
    let started = std::time::Instant::now();
    let out = recon(args![
        "generate",
        &example_image(),
        "-o",
        &glb,
        "--obj",
        &obj,
        "--texture-size",
        "64",
        "--bake",
        "fast",
        "--bake-views",
        "4",
        "--bake-resolution",
        "64",
        "--simplify",
        "0.9",
        "--no-fill-holes",
        "--steps",
        "2",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
    ]);
    println!(
        "recon generate (textured GLB + OBJ, 2+2 steps): {:.1?}",
        started.elapsed()
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    assert!(
        stdout.contains("textured mesh:") && stdout.contains("64x64 texture"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(2 decoder(s))"),
        "the Gaussians are baked: {stdout}"
    );

    let bytes = std::fs::read(&glb).unwrap();
    let gltf = gltf::Gltf::from_slice(&bytes).unwrap();
    let material = gltf.materials().next().expect("a material");
    let texture = material
        .pbr_metallic_roughness()
        .base_color_texture()
        .expect("a base-colour texture");
    assert_eq!(texture.tex_coord(), 0);
    let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
    assert!(primitive.get(&gltf::Semantic::TexCoords(0)).is_some());
    assert!(primitive.get(&gltf::Semantic::Normals).is_some());

    let obj_text = std::fs::read_to_string(&obj).unwrap();
    assert!(obj_text.contains("mtllib asset.mtl"), "OBJ names its MTL");
    assert!(
        obj_text.lines().any(|l| l.starts_with("vt ")),
        "OBJ has UVs"
    );
    let mtl = std::fs::read_to_string(dir.path().join("asset.mtl")).unwrap();
    assert!(mtl.contains("map_Kd asset.png"), "{mtl}");
    let png = std::fs::read(dir.path().join("asset.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}

#[test]
fn generate_refuses_bad_texture_options() {
    let image = example_image();
    let image = image.to_str().unwrap();
    for (flag, value, expected) in [
        ("--texture-size", "0", "--texture-size '0'"),
        ("--simplify", "1", "--simplify '1'"),
        ("--simplify", "-0.5", "--simplify '-0.5'"),
        ("--bake", "slow", "--bake 'slow'"),
        ("--bake-views", "0", "--bake-views '0'"),
    ] {
        assert_refused(&[image, flag, value], "out.glb", expected);
    }
    // Textures go into GLB or OBJ meshes only.
    let dir = tempfile::tempdir().unwrap();
    let out = recon(args![
        "generate",
        image,
        "--gaussians",
        dir.path().join("splats.ply"),
        "--textured",
        "--model",
        &tiny_model(),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--textured makes a textured mesh"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn generate_refuses_bad_turntable_options() {
    let image = example_image();
    let image = image.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/spin.mp4");
    let missing = missing.to_str().unwrap();
    assert_refused(
        &[image, "--turntable", "spin.gif"],
        "out.glb",
        "'.gif' is not a video format",
    );
    assert_refused(
        &[image, "--turntable", missing],
        "out.glb",
        "does not exist",
    );
    assert_refused(
        &[image, "--turntable-frames", "5"],
        "out.glb",
        "give --turntable",
    );
    let frames = dir.path().join("frames");
    let frames = frames.to_str().unwrap();
    for (flag, value, expected) in [
        ("--turntable-frames", "0", "--turntable-frames '0'"),
        (
            "--turntable-resolution",
            "99999",
            "--turntable-resolution '99999'",
        ),
        (
            "--turntable-content",
            "depth",
            "--turntable-content 'depth'",
        ),
        ("--turntable-fps", "0", "--turntable-fps '0'"),
    ] {
        assert_refused(
            &[image, "--turntable", frames, flag, value],
            "out.glb",
            expected,
        );
    }
    // A folder holding other files is not overwritten.
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    assert_refused(
        &[image, "--turntable", busy.to_str().unwrap()],
        "out.glb",
        "notes.txt",
    );
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
}

/// Runs `recon generate ARGS -o DIR/out.glb` with the tiny model and expects a refusal whose
/// message contains `expected`, and no file in DIR.
fn assert_refused(args: &[&str], output_name: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join(output_name);
    let mut all = args!["generate"];
    all.extend(args.iter().map(OsString::from));
    all.extend(args!["-o", &output, "--model", &tiny_model()]);
    if !args.contains(&"--device") {
        all.extend(args!["--device", "cpu"]);
    }
    assert_cli_refuses(all, expected);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "{args:?} left a file"
    );
}

#[test]
fn generate_refuses_an_unknown_extension() {
    let image = example_image();
    let image = image.to_str().unwrap();
    assert_refused(&[image], "out.stl", "'.stl' is not a format recon writes");
    assert_refused(&[image], "out", "no extension");
}

#[test]
fn generate_refuses_a_missing_image() {
    assert_refused(
        &["no-such-image.png", "--steps", "2"],
        "out.glb",
        "input image 'no-such-image.png'",
    );
    // A file that is not an image is refused before the model loads.
    let not_an_image = fixture("Cargo.toml");
    assert_refused(
        &[not_an_image.to_str().unwrap()],
        "out.glb",
        "not PNG, JPEG or WebP",
    );
}

#[test]
fn generate_refuses_bad_numbers_and_options() {
    let image = example_image();
    let image = image.to_str().unwrap();
    assert_refused(&[image, "--seed", "abc"], "out.glb", "--seed 'abc'");
    assert_refused(&[image, "--seed", "-3"], "out.glb", "--seed '-3'");
    assert_refused(&[image, "--steps", "0"], "out.glb", "--steps '0'");
    assert_refused(&[image, "--ss-cfg", "nan"], "out.glb", "--ss-cfg 'nan'");
    assert_refused(
        &[image, "--steps", "2", "--slat-steps", "3"],
        "out.glb",
        "either --steps or the per-stage options",
    );
    assert_refused(&[image, "--mode", "average"], "out.glb", "--mode 'average'");
    assert_refused(&[image, "--sed", "1"], "out.glb", "unknown option '--sed'");
    assert_refused(&[image, "--device", "gpu"], "out.glb", "--device 'gpu'");
    assert_refused(
        &[image, "--cameras", "--no-cameras"],
        "out.glb",
        "--no-cameras skips estimating them",
    );
}

/// `recon demo` with an explicit model: the C API path (recon_load, recon_run with progress,
/// recon_result_export) writes a GLB and a splat PLY into --out.
#[test]
fn demo_runs_the_c_api_path() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = recon(args![
        "demo",
        "--model",
        &tiny_model(),
        "--image",
        &example_image(),
        "--out",
        dir.path(),
        "--steps",
        "2",
        "--device",
        "cpu",
    ]);
    println!("recon demo (2+2 steps): {:.1?}", started.elapsed());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("meaningless"), "{stdout}");
    let glb = std::fs::read(dir.path().join("example.glb")).unwrap();
    assert_eq!(&glb[..4], b"glTF");
    let splats = std::fs::read(dir.path().join("example_gaussians.ply")).unwrap();
    assert!(splats.starts_with(b"ply\n"));
}
