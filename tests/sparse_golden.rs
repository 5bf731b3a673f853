//! Golden parity of the sparse engine against the reference (spconv 2.3.8 through TRELLIS's
//! SparseConv3d, and TRELLIS's sparse spatial and norm modules), on CPU in fp32.
//!
//! Every folder of tests/fixtures/golden whose manifest says `"harness": "sparse"` (written by
//! tools/golden/cases/sparse.py) is run according to its `"op"`: `conv`, `spatial`,
//! `group_norm`, `layer_norm`. Floats compare at relative L2 ≤ 1e-4; coordinates exactly, in
//! the same order. The configuration (channels, kernel, dilation, factor, groups) comes from
//! the fixture, so other generated configurations run unchanged.
//!
//! `shared_mesh_decoder_upsample_chain` runs the two SparseSubdivideBlock3d of a small
//! SLatMeshDecoder (../shared/golden/trellis_mesh/slat_mesh_decoder) from the reference's
//! torso output to its raw per-voxel features, composed here from the engine's layers.

mod common;

use std::path::Path;

use common::{harness_cases, read_json, read_tensors, rel_l2, shared_golden_dir, REL_L2_TOLERANCE};
use recon::models::NamedTensors;
use recon::sparse::{
    ConvGeometry, SparseConv3d, SparseDownsample, SparseGroupNorm32, SparseLayerNorm32,
    SparseLinear, SparseSiLU, SparseSubdivide, SparseTensor, SparseUpsample,
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

/// `SparseSubdivideBlock3d(channels, resolution, out_channels, num_groups=32)` of the mesh
/// decoder, composed from the engine's layers (the decoder module itself lives in models/).
struct SubdivideBlock {
    act_norm: SparseGroupNorm32,
    conv1: SparseConv3d,
    norm2: SparseGroupNorm32,
    conv2: SparseConv3d,
    skip: Option<SparseConv3d>,
}

impl SubdivideBlock {
    fn new(weights: &Weights, channels: i64, out_channels: i64) -> recon::Result<Self> {
        let skip = if channels == out_channels {
            None
        } else {
            Some(SparseConv3d::new(
                &weights.pp("skip_connection"),
                channels,
                out_channels,
                1,
            )?)
        };
        Ok(Self {
            act_norm: SparseGroupNorm32::new(&weights.pp("act_layers.0"), 32, channels)?,
            conv1: SparseConv3d::new(&weights.pp("out_layers.0"), channels, out_channels, 3)?,
            norm2: SparseGroupNorm32::new(&weights.pp("out_layers.1"), 32, out_channels)?,
            conv2: SparseConv3d::new(&weights.pp("out_layers.3"), out_channels, out_channels, 3)?,
            skip,
        })
    }

    fn forward(&self, x: &SparseTensor) -> recon::Result<SparseTensor> {
        let sub = SparseSubdivide::new();
        let h = SparseSiLU.forward(&self.act_norm.forward(x)?)?;
        let h = sub.forward(&h)?;
        let x = sub.forward(x)?;
        let h = self.conv1.forward(&h)?;
        let h = SparseSiLU.forward(&self.norm2.forward(&h)?)?;
        let h = self.conv2.forward(&h)?;
        let skip = match &self.skip {
            Some(conv) => conv.forward(&x)?,
            None => x,
        };
        h.add(&skip)
    }
}

#[test]
fn shared_mesh_decoder_upsample_chain() {
    let dir = shared_golden_dir().join("trellis_mesh/slat_mesh_decoder");
    if !dir.join("manifest.json").exists() {
        eprintln!("skipped: no shared golden data at {}", dir.display());
        return;
    }
    let config = read_json(&dir.join("slat_dec_mesh_small.json"));
    let channels = config["args"]["model_channels"]
        .as_i64()
        .expect("model_channels");
    let weights = Weights::open(
        &dir.join("slat_dec_mesh_small.safetensors"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let intermediates = read_tensors(&dir.join("intermediates.safetensors"));
    let outputs = read_tensors(&dir.join("outputs.safetensors"));

    let block0 = SubdivideBlock::new(&weights.pp("upsample.0"), channels, channels / 4).unwrap();
    let block1 =
        SubdivideBlock::new(&weights.pp("upsample.1"), channels / 4, channels / 8).unwrap();
    let out_channels = weights.shape_of("out_layer.weight").unwrap()[0];
    let out_layer =
        SparseLinear::new(&weights.pp("out_layer"), channels / 8, out_channels).unwrap();

    let torso = SparseTensor::new(
        get(&intermediates, "torso_feats", &dir).shallow_clone(),
        get(&inputs, "coords", &dir).shallow_clone(),
    )
    .unwrap();
    let h0 = block0.forward(&torso).unwrap();
    let h1 = block1.forward(&h0).unwrap();
    let raw = out_layer.forward(&h1).unwrap();

    let results = [
        compare_exact(
            "upsample0_coords",
            h0.coords(),
            get(&intermediates, "upsample0_coords", &dir),
        ),
        compare_floats(
            "upsample0_feats",
            h0.feats(),
            get(&intermediates, "upsample0_feats", &dir),
        ),
        compare_exact(
            "raw_coords",
            raw.coords(),
            get(&outputs, "raw_coords", &dir),
        ),
        compare_floats("raw_feats", raw.feats(), get(&outputs, "raw_feats", &dir)),
    ];
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(line) => println!("slat_mesh_decoder upsample chain {line}"),
            Err(line) => {
                println!("slat_mesh_decoder upsample chain FAIL {line}");
                failures.push(line);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
