//! `recon generate` and `recon demo` end to end through the built binary, on the bundled tiny
//! model (random weights: the shapes are meaningless, the files must still be well formed), and
//! the CLI's refusals: each names what was wrong, exits non-zero and writes no file.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::{recon_cli as recon, text};

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
    let out = recon(all);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected '{expected}' in:\n{stderr}"
    );
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
