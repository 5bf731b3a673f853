//! Helpers shared by the integration tests: fixture locations, fixture readers and numerical
//! comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use recon::weights::SafeTensorsFile;
use tch::{Kind, Tensor};

/// Our golden fixtures (tests/fixtures/golden), overridable with RECON_GOLDEN_DIR.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("RECON_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden"))
}

/// The team's shared golden data (../shared/golden), overridable with RECON_SHARED_GOLDEN_DIR.
pub fn shared_golden_dir() -> PathBuf {
    std::env::var_os("RECON_SHARED_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"))
}

pub fn fixture_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model_tiny")
}

/// Every tensor of a safetensors file, by name; panics naming the file.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    SafeTensorsFile::open(path)
        .and_then(|file| file.read_all())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// A json file; panics naming the file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The manifest of golden case `case` (under [`golden_dir`]), checked to be run by `harness`.
pub fn case_manifest(case: &str, harness: &str) -> serde_json::Value {
    let manifest = read_json(&golden_dir().join(case).join("manifest.json"));
    assert_eq!(manifest["harness"], harness, "golden case {case}");
    manifest
}

/// A model folder loaded on the CPU, offline; panics naming the folder.
pub fn load_pipeline_cpu(dir: &Path) -> recon::pipeline::Pipeline {
    let mut options = recon::pipeline::LoadOptions::new(dir.to_str().expect("UTF-8 path"));
    options.device = recon::pipeline::DeviceRequest::Cpu;
    options.offline = Some(true);
    recon::pipeline::Pipeline::load(&options)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// The harness a golden case folder is run by: its manifest's `"harness"`, `"module"` (a
/// single network, tests/golden_modules.rs) when the manifest names none; None for a folder
/// without a manifest.
fn case_harness(case: &Path) -> Option<String> {
    let manifest = case.join("manifest.json");
    if !manifest.is_file() {
        return None;
    }
    let harness = read_json(&manifest)
        .get("harness")
        .and_then(|h| h.as_str().map(str::to_string));
    Some(harness.unwrap_or_else(|| "module".to_string()))
}

/// Every golden case folder of [`golden_dir`] run by `harness`, sorted; panics when there is
/// none, so that a moved or misnamed fixture cannot make a parity test pass vacuously.
pub fn harness_cases(harness: &str) -> Vec<PathBuf> {
    let dir = golden_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("golden fixtures at {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|case| case_harness(case).as_deref() == Some(harness))
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty(),
        "no golden cases of harness \"{harness}\" in {}",
        dir.display()
    );
    cases
}

/// ‖ours − ref‖ / ‖ref‖ and max |ours − ref|, in f64.
pub fn rel_l2(ours: &Tensor, reference: &Tensor) -> (f64, f64) {
    assert_eq!(ours.size(), reference.size(), "shape mismatch");
    let a = ours.to_kind(Kind::Double);
    let b = reference.to_kind(Kind::Double);
    let diff = &a - &b;
    let num = f64::try_from(diff.norm()).unwrap();
    let den = f64::try_from(b.norm()).unwrap();
    let max_abs = f64::try_from(diff.abs().max()).unwrap();
    (num / den.max(f64::MIN_POSITIVE), max_abs)
}

/// The parity tolerance of DESIGN.md §5 for fp32 on CPU.
pub const REL_L2_TOLERANCE: f64 = 1e-4;

/// A published checkpoint's key listing (`key\tshape\tdtype_in_file`, as in
/// tests/fixtures/published_layouts/): (name, shape, stored dtype) in `state_dict()` order.
pub fn published_listing(path: &Path) -> Vec<(String, Vec<i64>, tch::Kind)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("key\tshape\tdtype_in_file"),
        "{}",
        path.display()
    );
    lines.map(listing_row).collect()
}

/// One `key\t[d0, d1, ...]\tdtype` row of a key listing (a scalar's shape is `[]`).
fn listing_row(line: &str) -> (String, Vec<i64>, tch::Kind) {
    let fields: Vec<&str> = line.split('\t').collect();
    let shape = fields[1]
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse().unwrap())
        .collect();
    let kind = match fields[2] {
        "float16" => tch::Kind::Half,
        "float32" => tch::Kind::Float,
        other => panic!("{line}: dtype {other}"),
    };
    (fields[0].to_string(), shape, kind)
}

/// A key listing of ReconViaGen's published networks, `research/reconviagen_keys/<name>`
/// beside the shared golden data (rows without a header line), in `state_dict()` order; None
/// (with a "skipped" line) when the research folder is absent.
pub fn research_listing(name: &str) -> Option<Vec<(String, Vec<i64>, tch::Kind)>> {
    let path = shared_golden_dir().join(format!("../research/reconviagen_keys/{name}"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("skipped: no research listing at {}", path.display());
        return None;
    };
    Some(
        text.lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with("key\t"))
            .map(listing_row)
            .collect(),
    )
}

/// The ReconViaGen golden folder (`<shared golden>/reconviagen`), or None with a "skipped"
/// line when the shared data is absent.
pub fn reconviagen_dir() -> Option<PathBuf> {
    let dir = shared_golden_dir().join("reconviagen");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: no shared golden data at {}", dir.display());
        None
    }
}

/// Asserts that a network's computed checkpoint layout is the published listing, tensor for
/// tensor (name, shape, stored dtype, order).
pub fn assert_layout_is_published(layout: &[recon::nn::layout::TensorSpec], listing: &Path) {
    let ours: Vec<(String, Vec<i64>, tch::Kind)> = layout
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone(), s.stored))
        .collect();
    let published = published_listing(listing);
    for (i, (a, b)) in ours.iter().zip(&published).enumerate() {
        assert_eq!(a, b, "tensor #{i}");
    }
    assert_eq!(ours.len(), published.len(), "{}", listing.display());
}

/// Runs the `recon` binary with one libtorch thread (CLI tests run in parallel: two runs of two
/// threads on a 2-core machine spin against each other many times over).
///
/// `RECON_CLI` names another binary: the GPU bundle runs the test binaries on a machine where
/// cargo's build path does not exist.
pub fn recon_cli(args: Vec<std::ffi::OsString>) -> std::process::Output {
    let binary = std::env::var_os("RECON_CLI")
        .unwrap_or_else(|| std::ffi::OsString::from(env!("CARGO_BIN_EXE_recon")));
    std::process::Command::new(binary)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

/// Lossy UTF-8 of a process's output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the `recon` CLI with `args`, expects it to fail with a message containing `expected`,
/// and returns the message.
pub fn assert_cli_refuses(args: Vec<std::ffi::OsString>, expected: &str) -> String {
    let shown = format!("{args:?}");
    let out = recon_cli(args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{shown} succeeded:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "{shown}: expected '{expected}' in:\n{stderr}"
    );
    stderr
}

/// An icosphere of radius `r` centred at the origin, subdivided `levels` times (20·4^levels
/// faces), wound counter-clockwise seen from outside.
pub fn icosphere(r: f32, levels: u32) -> recon::pipeline::Mesh {
    let t = (1.0 + 5f32.sqrt()) / 2.0;
    let mut v: Vec<[f32; 3]> = vec![
        [-1.0, t, 0.0],
        [1.0, t, 0.0],
        [-1.0, -t, 0.0],
        [1.0, -t, 0.0],
        [0.0, -1.0, t],
        [0.0, 1.0, t],
        [0.0, -1.0, -t],
        [0.0, 1.0, -t],
        [t, 0.0, -1.0],
        [t, 0.0, 1.0],
        [-t, 0.0, -1.0],
        [-t, 0.0, 1.0],
    ];
    let mut f: Vec<[u32; 3]> = vec![
        [0, 11, 5],
        [0, 5, 1],
        [0, 1, 7],
        [0, 7, 10],
        [0, 10, 11],
        [1, 5, 9],
        [5, 11, 4],
        [11, 10, 2],
        [10, 7, 6],
        [7, 1, 8],
        [3, 9, 4],
        [3, 4, 2],
        [3, 2, 6],
        [3, 6, 8],
        [3, 8, 9],
        [4, 9, 5],
        [2, 4, 11],
        [6, 2, 10],
        [8, 6, 7],
        [9, 8, 1],
    ];
    for _ in 0..levels {
        let mut mid: std::collections::HashMap<(u32, u32), u32> = std::collections::HashMap::new();
        let mut next = Vec::new();
        for [a, b, c] in f {
            let mut m = |i: u32, j: u32| -> u32 {
                *mid.entry((i.min(j), i.max(j))).or_insert_with(|| {
                    let (p, q) = (v[i as usize], v[j as usize]);
                    v.push([0, 1, 2].map(|k| (p[k] + q[k]) / 2.0));
                    (v.len() - 1) as u32
                })
            };
            let (ab, bc, ca) = (m(a, b), m(b, c), m(c, a));
            next.extend([[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]);
        }
        f = next;
    }
    let positions = v
        .iter()
        .flat_map(|p| {
            let n = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
            p.map(|c| c / n * r)
        })
        .collect();
    recon::pipeline::Mesh {
        positions,
        colors: vec![],
        indices: f.into_iter().flatten().collect(),
    }
}

/// The known colour field of the synthetic scenes: a smooth function of position.
pub fn color_at(p: [f32; 3]) -> [f32; 3] {
    [0.5 + 0.9 * p[0], 0.5 + 0.9 * p[1], 0.5 + 0.9 * p[2]]
}

/// Gaussians on the sphere of radius `r` (a Fibonacci lattice of `n` points), small,
/// nearly opaque and coloured by [`color_at`]: their renders show a sphere with a known texture.
pub fn sphere_gaussians(r: f32, n: usize, scale: f32) -> recon::pipeline::Gaussians {
    let mut g = recon::pipeline::Gaussians::default();
    let golden = std::f32::consts::PI * (3.0 - 5f32.sqrt());
    for i in 0..n {
        let z = 1.0 - 2.0 * (i as f32 + 0.5) / n as f32;
        let rho = (1.0 - z * z).sqrt();
        let phi = golden * i as f32;
        let p = [rho * phi.cos() * r, rho * phi.sin() * r, z * r];
        g.xyz.extend(p);
        g.features_dc
            .extend(color_at(p).map(|c| (c - 0.5) / 0.282_094_8));
        g.scaling.extend([scale; 3]);
        g.rotation.extend([1.0, 0.0, 0.0, 0.0]);
        g.opacity.push(0.95);
    }
    g
}

/// CUDA device 0 for the GPU tests, or `None` after printing "skipped: no CUDA" (the tests pass
/// without a GPU and run on the GPU machine through the GPU bundle).
pub fn cuda() -> Option<tch::Device> {
    if tch::Cuda::is_available() {
        Some(tch::Device::Cuda(0))
    } else {
        println!("skipped: no CUDA");
        None
    }
}
