//! Golden parity of the sparse engine against the reference (spconv 2.3.8 through TRELLIS's
//! SparseConv3d, and TRELLIS's sparse spatial and norm modules), on CPU in fp32.
//!
//! Every folder of tests/fixtures/golden whose manifest says `"harness": "sparse"` (written by
//! tools/golden/cases/sparse.py) is run according to its `"op"`: `conv`, `spatial`,
//! `group_norm`, `layer_norm`. Floats compare at relative L2 ≤ 1e-4; coordinates exactly, in
//! the same order. The configuration (channels, kernel, dilation, factor, groups) comes from
//! the fixture, so other generated configurations run unchanged.
//!
//! The mesh decoder's subdivide blocks, composed from these layers, are checked against the
//! shared golden data in tests/slat_decoders.rs.

mod common;

use std::path::Path;

use common::{harness_cases, read_json, read_tensors, rel_l2, REL_L2_TOLERANCE};
use recon::models::NamedTensors;
use recon::sparse::{
    ConvGeometry, SparseConv3d, SparseDownsample, SparseGroupNorm32, SparseLayerNorm32,
    SparseSubdivide, SparseTensor, SparseUpsample,
};
use recon::weights::Weights;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// An int or a per-axis list of 3 from a json config.
fn per_axis(value: &Value, default: i64) -> [i64; 3] {
    match value {
        Value::Null => [default; 3],
        Value::Number(n) => [n.as_i64().expect("integer"); 3],
        Value::Array(items) => {
            let v: Vec<i64> = items.iter().map(|i| i.as_i64().expect("integer")).collect();
            [v[0], v[1], v[2]]
        }
        other => panic!("expected an int or a list, got {other}"),
    }
}

fn get<'a>(tensors: &'a NamedTensors, name: &str, case: &Path) -> &'a Tensor {
    tensors
        .get(name)
        .unwrap_or_else(|| panic!("{}: no tensor '{name}'", case.display()))
}

fn input_tensor(case: &Path) -> SparseTensor {
    let inputs = read_tensors(&case.join("inputs.safetensors"));
    SparseTensor::new(
        get(&inputs, "feats", case).shallow_clone(),
        get(&inputs, "coords", case).shallow_clone(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
}

fn checkpoint(case: &Path, stem: &str) -> (Value, Weights) {
    let config = read_json(&case.join(format!("ckpts/{stem}.json")));
    let weights = Weights::open(
        &case.join(format!("ckpts/{stem}.safetensors")),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    (config["args"].clone(), weights)
}

/// Compares floats; returns the report line, or an Err line when over tolerance.
fn compare_floats(name: &str, ours: &Tensor, expected: &Tensor) -> Result<String, String> {
    if ours.size() != expected.size() {
        return Err(format!(
            "{name}: shape {:?}, expected {:?}",
            ours.size(),
            expected.size()
        ));
    }
    let (rel, max_abs) = rel_l2(ours, expected);
    let line = format!("{name}: rel L2 {rel:.3e}, max abs {max_abs:.3e}");
    if rel <= REL_L2_TOLERANCE {
        Ok(line)
    } else {
        Err(line)
    }
}

/// Compares integer tensors exactly (shape, values, order).
fn compare_exact(name: &str, ours: &Tensor, expected: &Tensor) -> Result<String, String> {
    if ours.size() != expected.size() {
        return Err(format!(
            "{name}: shape {:?}, expected {:?}",
            ours.size(),
            expected.size()
        ));
    }
    if ours.kind() != expected.kind() {
        return Err(format!(
            "{name}: dtype {:?}, expected {:?}",
            ours.kind(),
            expected.kind()
        ));
    }
    if ours.equal(expected) {
        Ok(format!("{name}: exact ({:?})", ours.size()))
    } else {
        let differing = i64::try_from(ours.ne_tensor(expected).sum(Kind::Int64)).unwrap_or(-1);
        Err(format!("{name}: {differing} entries differ"))
    }
}

fn run_conv(case: &Path, expected: &NamedTensors) -> Vec<Result<String, String>> {
    let (args, weights) = checkpoint(case, "conv");
    let geometry = ConvGeometry {
        kernel_size: per_axis(&args["kernel_size"], 1),
        dilation: per_axis(&args["dilation"], 1),
    };
    let conv = SparseConv3d::with_geometry(
        &weights,
        args["in_channels"].as_i64().expect("in_channels"),
        args["out_channels"].as_i64().expect("out_channels"),
        geometry,
        args["bias"].as_bool().unwrap_or(true),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    let x = input_tensor(case);
    let out = conv
        .forward(&x)
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    vec![
        compare_floats("out", out.feats(), get(expected, "out", case)),
        compare_exact("coords", out.coords(), x.coords()),
    ]
}

fn run_spatial(case: &Path, expected: &NamedTensors) -> Vec<Result<String, String>> {
    let manifest = read_json(&case.join("manifest.json"));
    let factor = per_axis(&manifest["module"]["args"]["factor"], 2);
    let x = input_tensor(case);
    let fail = |e: recon::Error| -> ! { panic!("{}: {e}", case.display()) };
    let down = SparseDownsample::with_factors(factor)
        .and_then(|d| d.forward(&x))
        .unwrap_or_else(|e| fail(e));
    // As in the reference case: features change between the pair, the voxels do not.
    let mid = down
        .replace(down.feats() * 2.0 - 1.0)
        .unwrap_or_else(|e| fail(e));
    let up = SparseUpsample::with_factors(factor)
        .and_then(|u| u.forward(&mid))
        .unwrap_or_else(|e| fail(e));
    let sub = SparseSubdivide::new()
        .forward(&x)
        .unwrap_or_else(|e| fail(e));
    vec![
        compare_exact(
            "down.coords",
            down.coords(),
            get(expected, "down.coords", case),
        ),
        compare_floats(
            "down.feats",
            down.feats(),
            get(expected, "down.feats", case),
        ),
        compare_exact("up.coords", up.coords(), get(expected, "up.coords", case)),
        compare_floats("up.feats", up.feats(), get(expected, "up.feats", case)),
        compare_exact(
            "sub.coords",
            sub.coords(),
            get(expected, "sub.coords", case),
        ),
        compare_floats("sub.feats", sub.feats(), get(expected, "sub.feats", case)),
    ]
}

fn run_norm(case: &Path, op: &str, expected: &NamedTensors) -> Vec<Result<String, String>> {
    let (args, weights) = checkpoint(case, "norm");
    let x = input_tensor(case);
    let out = match op {
        "group_norm" => SparseGroupNorm32::new(
            &weights,
            args["num_groups"].as_i64().expect("num_groups"),
            args["num_channels"].as_i64().expect("num_channels"),
        )
        .and_then(|norm| norm.forward(&x)),
        "layer_norm" => SparseLayerNorm32::new(
            &weights,
            args["normalized_shape"].as_i64().expect("normalized_shape"),
        )
        .and_then(|norm| norm.forward(&x)),
        other => panic!("{}: unknown norm op {other}", case.display()),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    vec![compare_floats(
        "out",
        out.feats(),
        get(expected, "out", case),
    )]
}

#[test]
fn sparse_golden_cases() {
    let cases = harness_cases("sparse");
    let mut failures = Vec::new();
    for case in &cases {
        let manifest = read_json(&case.join("manifest.json"));
        let op = manifest["op"].as_str().unwrap_or_default().to_string();
        let expected = read_tensors(&case.join("outputs.safetensors"));
        let results = match op.as_str() {
            "conv" => run_conv(case, &expected),
            "spatial" => run_spatial(case, &expected),
            "group_norm" | "layer_norm" => run_norm(case, &op, &expected),
            other => vec![Err(format!("unknown op '{other}'"))],
        };
        let name = case.file_name().unwrap_or_default().to_string_lossy();
        for result in results {
            match result {
                Ok(line) => println!("{name} [{op}] {line}"),
                Err(line) => {
                    println!("{name} [{op}] FAIL {line}");
                    failures.push(format!("{name}: {line}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "sparse golden failures:\n{}",
        failures.join("\n")
    );
}
