//! `recon bench` end to end through the built binary on the bundled tiny model, on the CPU:
//! one timed run, no warm-up, a few sampler steps; the JSON must hold every stage with a
//! positive time and the run's facts. Also its refusals, which come before any model loads.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::{assert_cli_refuses, recon_cli as recon, text};

use serde_json::Value;

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model_tiny")
}

/// Command-line arguments from strings and paths alike.
macro_rules! args {
    ($($arg:expr),* $(,)?) => { vec![$(OsString::from($arg)),*] };
}

fn positive(value: &Value, what: &str) -> f64 {
    let x = value.as_f64().unwrap_or_else(|| panic!("{what}: {value}"));
    assert!(x > 0.0, "{what}: {x}");
    x
}

/// Every stage, both exports, generate and total, each timed; the sampler stages with their
/// steps; the result's counts; no GPU peak on the CPU.
#[test]
fn bench_reports_every_stage_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let started = std::time::Instant::now();
    let out = recon(args![
        "bench",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
        "--views",
        "2",
        "--formats",
        "gaussians,mesh",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--steps",
        "2",
        "--json",
        &json_path,
    ]);
    println!("recon bench (1 run, 2+2 steps): {:.1?}", started.elapsed());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    for expected in [
        "median ms",
        "sparse structure",
        "structured latent",
        "total",
        "voxels",
    ] {
        assert!(
            stdout.contains(expected),
            "table lacks '{expected}':\n{stdout}"
        );
    }

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report["pipeline"], "TrellisImageTo3DPipeline");
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["views"], 2);
    assert_eq!(report["runs"], 1);
    assert_eq!(report["warmup"], 0);
    assert!(report["peak_gpu_bytes"].is_null(), "no GPU peak on the CPU");
    assert_eq!(
        report["stage_peak_gpu_bytes"],
        serde_json::json!({}),
        "no per-stage GPU peaks on the CPU"
    );
    let stages = report["stages"].as_object().unwrap();
    let keys = [
        "preprocess",
        "condition",
        "sparse_structure",
        "structured_latent",
        "decode",
        "to_output",
        "export_ply_gaussians",
        "export_glb",
        "generate",
        "total",
    ];
    let order: Vec<&str> = report["stage_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(order, keys);
    for key in keys {
        let stage = &stages[key];
        let median = positive(&stage["median_ms"], key);
        assert_eq!(stage["min_ms"].as_f64(), Some(median), "{key}: one run");
        assert_eq!(stage["max_ms"].as_f64(), Some(median), "{key}: one run");
        assert_eq!(stage["runs_ms"].as_array().unwrap().len(), 1, "{key}");
    }
    for key in ["sparse_structure", "structured_latent"] {
        assert_eq!(stages[key]["steps"], 2, "{key}");
        let per_step = positive(&stages[key]["per_step_ms"], key);
        assert!(per_step * 2.0 <= stages[key]["median_ms"].as_f64().unwrap() + 1e-3);
    }
    assert!(stages["decode"]["per_step_ms"].is_null());
    let sum: f64 = keys[..5]
        .iter()
        .map(|k| stages[*k]["median_ms"].as_f64().unwrap())
        .sum();
    let generate = stages["generate"]["median_ms"].as_f64().unwrap();
    assert!(
        sum <= generate + 1e-3,
        "stages {sum} ms > generate {generate} ms"
    );
    assert!(generate <= stages["total"]["median_ms"].as_f64().unwrap());
    for key in ["voxels", "gaussians", "mesh_vertices", "mesh_faces"] {
        positive(&report[key], key);
    }
    positive(&report["export_bytes"]["glb"], "GLB bytes");
    positive(&report["export_bytes"]["ply_gaussians"], "PLY bytes");
}

/// Mistakes are refused before the model loads, each naming the option.
/// On CUDA: a peak for every generation stage, the largest being the run's peak.
#[test]
fn bench_reports_peak_memory_per_stage_on_cuda() {
    if common::cuda().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let out = recon(args![
        "bench",
        "--model",
        &tiny_model(),
        "--device",
        "cuda",
        "--formats",
        "gaussians,mesh",
        "--runs",
        "1",
        "--warmup",
        "1",
        "--steps",
        "3",
        "--json",
        &json_path,
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("peak GPU memory by stage"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let stages = report["stage_peak_gpu_bytes"].as_object().unwrap();
    for key in [
        "preprocess",
        "condition",
        "sparse_structure",
        "structured_latent",
        "decode",
    ] {
        positive(&stages[key], &format!("peak of {key}"));
    }
    // One timed run: its peak is exactly its largest stage peak.
    let largest = stages.values().map(|v| v.as_u64().unwrap()).max().unwrap();
    assert_eq!(report["peak_gpu_bytes"].as_u64(), Some(largest));
}

#[test]
fn bench_refuses_bad_options() {
    let model = tiny_model();
    let cases: [(Vec<OsString>, &str); 4] = [
        (args!["--formats", "gaussians,nerf"], "'nerf'"),
        (args!["--formats", "mesh,mesh"], "named twice"),
        (args!["--runs", "0"], "--runs"),
        (
            args!["--json", "/no/such/folder/out.json"],
            "does not exist",
        ),
    ];
    for (extra, expected) in cases {
        let mut all = args!["bench", "--model", &model, "--device", "cpu"];
        all.extend(extra);
        let stderr = assert_cli_refuses(all, expected);
        assert!(
            !stderr.contains("loading models"),
            "refused after loading: {stderr}"
        );
    }
}

/// `recon throughput` with two models on the CPU in one process: both generate the warm-up
/// asset at once with bit-identical outputs, then share the assets; the JSON says so.
#[test]
fn throughput_runs_two_models_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("throughput.json");
    let out = recon(args![
        "throughput",
        "--model",
        &tiny_model(),
        "--devices",
        "cpu,cpu",
        "--assets",
        "3",
        "--formats",
        "gaussians",
        "--steps",
        "2",
        "--json",
        &json_path,
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    assert!(stdout.contains("assets per minute"), "{stdout}");
    assert!(
        stdout.contains("warm-up outputs bit-identical across models: yes"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report["assets"], 3);
    assert_eq!(report["warm_up_identical"], true);
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let assets: u64 = models.iter().map(|m| m["assets"].as_u64().unwrap()).sum();
    assert_eq!(assets, 3, "every asset is generated exactly once");
    for m in models {
        assert_eq!(m["device"], "cpu");
        assert!(m["warm_up_difference"].is_null(), "{m}");
    }
    positive(&report["assets_per_minute"], "assets_per_minute");
}

#[test]
fn throughput_refuses_bad_devices() {
    let model = tiny_model();
    let cases: [(Vec<OsString>, &str); 3] = [
        (args![], "--devices is required"),
        (args!["--devices", "cpu,gpu"], "--devices 'gpu'"),
        (args!["--devices", "cuda:99"], "CUDA device 99"),
    ];
    for (extra, expected) in cases {
        let mut all = args!["throughput", "--model", &model, "--steps", "1"];
        all.extend(extra);
        assert_cli_refuses(all, expected);
    }
}
