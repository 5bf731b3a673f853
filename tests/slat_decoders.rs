//! The structured-latent decoders (SLatGaussianDecoder, SLatMeshDecoder,
//! SLatRadianceFieldDecoder): golden parity against the team's shared fixtures
//! (../shared/golden/trellis_mesh) and ours (tests/fixtures/golden/slat_dec_*), every checkpoint
//! loaded through `load_network` like the published ones; the full-size published layouts;
//! and one full-size forward on CPU per decoder with random weights.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{
    assert_layout_is_published, golden_dir, read_tensors, rel_l2, shared_golden_dir,
    REL_L2_TOLERANCE,
};
use recon::hub::read_checkpoint_config;
use recon::models::structured_latent_vae::{
    SLatGaussianDecoder, SLatGaussianDecoderConfig, SLatMeshDecoder, SLatMeshDecoderConfig,
    SLatRadianceFieldDecoder, SLatRadianceFieldDecoderConfig,
};
use recon::models::{load_network, NamedTensors};
use recon::nn::layout::{safetensors_file_size, TensorSpec};
use recon::sparse::SparseTensor;
use recon::weights::Weights;
use tch::{Device, Kind, Tensor};

/// Our golden cases (tools/golden/cases/slat_decoders.py).
const OUR_CASES: [&str; 2] = ["slat_dec_gs_exp_fp16layout", "slat_dec_rf_fp16layout"];

fn is_integer(t: &Tensor) -> bool {
    matches!(
        t.kind(),
        Kind::Int | Kind::Int64 | Kind::Int16 | Kind::Int8 | Kind::Uint8
    )
}

/// Compares every tensor of `expected` with the same-named one of `ours`: integers exactly
/// (same dtype, shape, order), floats by relative L2. Returns the report lines; panics listing
/// every failure.
fn compare_all(label: &str, ours: &NamedTensors, expected: &NamedTensors) -> Vec<String> {
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for (name, reference) in expected {
        let Some(mine) = ours.get(name) else {
            failures.push(format!("{label}: no output '{name}'"));
            continue;
        };
        if mine.size() != reference.size() {
            failures.push(format!(
                "{label}: {name} shape {:?}, expected {:?}",
                mine.size(),
                reference.size()
            ));
            continue;
        }
        if is_integer(reference) {
            if mine.kind() == reference.kind() && mine.equal(reference) {
                lines.push(format!("{label}: {name} exact {:?}", reference.size()));
            } else {
                failures.push(format!(
                    "{label}: {name} differs ({:?} vs {:?})",
                    mine.kind(),
                    reference.kind()
                ));
            }
            continue;
        }
        let (rel, max_abs) = rel_l2(mine, reference);
        let line = format!("{label}: {name} rel_l2 {rel:.3e} max_abs {max_abs:.3e}");
        if rel <= REL_L2_TOLERANCE {
            lines.push(line);
        } else {
            failures.push(line);
        }
    }
    for line in &lines {
        println!("{line}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    lines
}

/// Loads `<stem>.json` + `<stem>.safetensors` through the registry and checks every stored
/// tensor was read.
fn load_through_registry(stem: &Path) -> Box<dyn recon::models::Network> {
    let (network, weights) = load_network(
        &stem.with_extension("json"),
        &stem.with_extension("safetensors"),
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", stem.display()));
    assert_eq!(weights.unused(), Vec::<String>::new(), "{}", stem.display());
    network
}

/// The typed decoder of a checkpoint (its json's args, fp32 on the CPU).
fn load_typed<C: serde::de::DeserializeOwned, D>(
    stem: &Path,
    build: impl FnOnce(C, &Weights) -> recon::Result<D>,
) -> D {
    let config = read_checkpoint_config(&stem.with_extension("json")).unwrap();
    let args: C = serde_json::from_value(config.args).unwrap();
    let weights = Weights::open(
        &stem.with_extension("safetensors"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    build(args, &weights).unwrap_or_else(|e| panic!("{}: {e}", stem.display()))
}

fn latent(inputs: &NamedTensors) -> SparseTensor {
    SparseTensor::new(
        inputs["feats"].shallow_clone(),
        inputs["coords"].shallow_clone(),
    )
    .unwrap()
}

fn shared_case(name: &str) -> Option<PathBuf> {
    let dir = shared_golden_dir().join("trellis_mesh").join(name);
    if dir.join("manifest.json").exists() {
        Some(dir)
    } else {
        eprintln!("skipped: no shared golden data at {}", dir.display());
        None
    }
}

/// Shared `slat_gaussian_decoder`: raw features, the torso output and every Gaussian attribute
/// (stored and activated) of both batch elements, through the registry; `decode()` agrees.
#[test]
fn shared_gaussian_decoder_matches_the_reference() {
    let Some(dir) = shared_case("slat_gaussian_decoder") else {
        return;
    };
    let stem = dir.join("slat_dec_gs_small");
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let mut expected = read_tensors(&dir.join("outputs.safetensors"));
    expected.extend(read_tensors(&dir.join("intermediates.safetensors")));
    let network = load_through_registry(&stem);
    let ours = tch::no_grad(|| network.forward_named(&inputs)).unwrap();
    compare_all("slat_gaussian_decoder", &ours, &expected);

    let decoder = load_typed(&stem, SLatGaussianDecoder::new);
    let gaussians = tch::no_grad(|| decoder.decode(&latent(&inputs))).unwrap();
    assert_eq!(gaussians.len(), 2);
    for (b, gs) in gaussians.iter().enumerate() {
        for (name, value) in [
            ("get_xyz", gs.get_xyz().unwrap()),
            ("get_scaling", gs.get_scaling().unwrap()),
            ("get_rotation", gs.get_rotation().unwrap()),
            ("get_opacity", gs.get_opacity().unwrap()),
            ("_features_dc", gs.features_dc().shallow_clone()),
        ] {
            let (rel, _) = rel_l2(&value, &expected[&format!("gs{b}_{name}")]);
            assert!(rel <= REL_L2_TOLERANCE, "decode() gs{b} {name}: {rel:.3e}");
        }
    }
}

/// Shared `slat_mesh_decoder`: the torso output, the first subdivide block (coords exact) and
/// the raw features at 4× resolution (coords exact, in the reference's subdivision order).
#[test]
fn shared_mesh_decoder_matches_the_reference() {
    let Some(dir) = shared_case("slat_mesh_decoder") else {
        return;
    };
    let stem = dir.join("slat_dec_mesh_small");
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let mut expected = read_tensors(&dir.join("intermediates.safetensors"));
    for name in ["raw_coords", "raw_feats"] {
        expected.insert(name.to_string(), outputs[name].shallow_clone());
    }
    let network = load_through_registry(&stem);
    let ours = tch::no_grad(|| network.forward_named(&inputs)).unwrap();
    compare_all("slat_mesh_decoder", &ours, &expected);

    let decoder = load_typed(&stem, SLatMeshDecoder::new);
    assert_eq!(decoder.resolution(), 64);
    assert!(decoder.use_color());
    assert_eq!(decoder.out_channels(), 101);
    let x = latent(&inputs);
    let raw = tch::no_grad(|| decoder.forward_raw(&x)).unwrap();
    assert!(raw.coords().equal(&outputs["raw_coords"]));
    let per_item: Vec<i64> = x.batch_lengths().unwrap().iter().map(|n| 64 * n).collect();
    assert_eq!(raw.batch_lengths().unwrap(), per_item);
    let (rel, _) = rel_l2(raw.feats(), &outputs["raw_feats"]);
    assert!(rel <= REL_L2_TOLERANCE, "forward_raw: {rel:.3e}");
}

/// Our cases: a second Gaussian configuration (fp16 layout, exp scales, no perturbation, lr
/// factors, 3 batch elements, window 4) and the radiance-field decoder, through the registry.
#[test]
fn our_golden_cases_match_the_reference() {
    for case in OUR_CASES {
        let dir = golden_dir().join(case);
        let inputs = read_tensors(&dir.join("inputs.safetensors"));
        let expected = read_tensors(&dir.join("outputs.safetensors"));
        let network = load_through_registry(&dir.join("ckpts/decoder"));
        let ours = tch::no_grad(|| network.forward_named(&inputs)).unwrap();
        let lines = compare_all(case, &ours, &expected);
        assert_eq!(lines.len(), expected.len());
    }
}

/// `SLatRadianceFieldDecoder::decode` on our fixture: one Strivec per batch element with the
/// reference's fields.
#[test]
fn radiance_field_decode_matches_the_reference() {
    let dir = golden_dir().join("slat_dec_rf_fp16layout");
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let expected = read_tensors(&dir.join("outputs.safetensors"));
    let decoder = load_typed(&dir.join("ckpts/decoder"), SLatRadianceFieldDecoder::new);
    let fields = tch::no_grad(|| decoder.decode(&latent(&inputs))).unwrap();
    assert_eq!(fields.len(), 2);
    for (b, field) in fields.iter().enumerate() {
        assert!(field.depth().equal(&expected[&format!("rf{b}_depth")]));
        for (name, value) in [
            ("position", field.position()),
            ("trivec", field.trivec()),
            ("density", field.density()),
            ("features_dc", field.features_dc()),
        ] {
            let (rel, max_abs) = rel_l2(value, &expected[&format!("rf{b}_{name}")]);
            println!("decode() rf{b} {name}: rel_l2 {rel:.3e} max_abs {max_abs:.3e}");
            assert!(rel <= REL_L2_TOLERANCE);
        }
    }
}

fn published(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/published_layouts")
        .join(format!("{name}.tsv"))
}

/// Each decoder's layout at the published config is the published listing, tensor for tensor,
/// with the research notes' totals and file sizes.
#[test]
fn published_layouts_match_the_released_checkpoints() {
    let cases = [
        (
            "slat_dec_gs_swin8_B_64l8gs32_fp16",
            SLatGaussianDecoderConfig::trellis_image_large()
                .checkpoint_layout()
                .unwrap(),
            (101, 85_369_120i64, 171_450_952u64),
        ),
        (
            "slat_dec_rf_swin8_B_64l8r16_fp16",
            SLatRadianceFieldDecoderConfig::trellis_image_large()
                .checkpoint_layout()
                .unwrap(),
            (100, 85_369_024, 171_450_488),
        ),
        (
            "slat_dec_mesh_swin8_B_64l8m256c_fp16",
            SLatMeshDecoderConfig::trellis_image_large()
                .checkpoint_layout()
                .unwrap(),
            (120, 90_926_693, 181_903_412),
        ),
    ];
    for (name, layout, (tensors, parameters, bytes)) in cases {
        assert_layout_is_published(&layout, &published(name));
        assert_eq!(layout.len(), tensors, "{name}");
        let count: i64 = layout.iter().map(TensorSpec::numel).sum();
        assert_eq!(count, parameters, "{name}");
        assert_eq!(
            safetensors_file_size(&layout, None).unwrap(),
            bytes,
            "{name}"
        );
    }
}

/// The published jsons (research/trellis.md §3.5–3.8) parse to the presets.
#[test]
fn published_jsons_parse_to_the_presets() {
    let torso = r#""resolution": 64, "model_channels": 768, "latent_channels": 8,
        "num_blocks": 12, "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin",
        "window_size": 8, "use_fp16": true"#;
    let gs = format!(
        r#"{{{torso}, "representation_config": {{"lr": {{"_xyz": 1.0, "_features_dc": 1.0,
        "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1}}, "perturb_offset": true,
        "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1,
        "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1,
        "scaling_activation": "softplus"}}}}"#
    );
    let rf = format!(r#"{{{torso}, "representation_config": {{"rank": 16, "dim": 8}}}}"#);
    let mesh = format!(r#"{{{torso}, "representation_config": {{"use_color": true}}}}"#);
    assert_eq!(
        serde_json::from_str::<SLatGaussianDecoderConfig>(&gs).unwrap(),
        SLatGaussianDecoderConfig::trellis_image_large()
    );
    assert_eq!(
        serde_json::from_str::<SLatRadianceFieldDecoderConfig>(&rf).unwrap(),
        SLatRadianceFieldDecoderConfig::trellis_image_large()
    );
    assert_eq!(
        serde_json::from_str::<SLatMeshDecoderConfig>(&mesh).unwrap(),
        SLatMeshDecoderConfig::trellis_image_large()
    );
    let typo = rf.replace("\"num_blocks\"", "\"num_layers\"");
    assert!(serde_json::from_str::<SLatRadianceFieldDecoderConfig>(&typo).is_err());
}

/// Random weights for `layout` at the scale of a trained network (weights N(0, 1/fan_in),
/// biases small, norm gains near 1), so fp16 stays in range and activations stay O(1).
fn realistic_random_checkpoint(path: &Path, layout: &[TensorSpec]) {
    tch::manual_seed(0);
    let tensors: Vec<(String, Tensor)> = layout
        .iter()
        .map(|spec| {
            let noise = Tensor::randn(&spec.shape, (Kind::Float, Device::Cpu));
            let is_norm = spec.name.contains("act_layers") || spec.name.contains("out_layers.1");
            let values = if is_norm && spec.name.ends_with("weight") {
                noise * 0.1 + 1.0
            } else if spec.shape.len() >= 2 && spec.name != "offset_perturbation" {
                let fan_in: i64 = spec.shape[1..].iter().product();
                noise / (fan_in as f64).sqrt()
            } else {
                noise * 0.05
            };
            (spec.name.clone(), values.to_kind(spec.stored))
        })
        .collect();
    recon::weights::write_safetensors(path, &tensors).unwrap();
}

/// A closed spherical shell of voxels at the latent resolution 64 (radius 6 around the centre),
/// sorted, batch 0: the kind of surface a real structured latent covers.
fn shell_voxels() -> Tensor {
    let mut rows = Vec::new();
    for x in 0..64i32 {
        for y in 0..64i32 {
            for z in 0..64i32 {
                let d = (((x - 32).pow(2) + (y - 30).pow(2) + (z - 33).pow(2)) as f64).sqrt();
                if (d - 6.0).abs() < 0.5 {
                    rows.extend([0, x, y, z]);
                }
            }
        }
    }
    Tensor::from_slice(&rows).reshape([-1, 4])
}

/// Builds each published-size decoder from a random checkpoint in the published layout (F16
/// torso, F32 rest) and decodes a shell of a few hundred voxels on the CPU.
#[test]
fn published_size_decoders_run_on_cpu() {
    let coords = shell_voxels();
    let n = coords.size()[0];
    tch::manual_seed(1);
    let feats = Tensor::randn([n, 8], (Kind::Float, Device::Cpu));
    let x = SparseTensor::new(feats, coords.shallow_clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weights_for = |name: &str, layout: &[TensorSpec]| {
        let path = dir.path().join(format!("{name}.safetensors"));
        realistic_random_checkpoint(&path, layout);
        Weights::open(&path, Kind::Float, Device::Cpu).unwrap()
    };
    let finite = |t: &Tensor| bool::try_from(t.isfinite().all()).unwrap();

    let start = Instant::now();
    let config = SLatGaussianDecoderConfig::trellis_image_large();
    let weights = weights_for("gs", &config.checkpoint_layout().unwrap());
    let decoder = SLatGaussianDecoder::new(config, &weights).unwrap();
    let loaded = start.elapsed();
    let gaussians = tch::no_grad(|| decoder.decode(&x)).unwrap();
    assert_eq!(gaussians.len(), 1);
    assert_eq!(gaussians[0].len(), n * 32);
    assert!(finite(&gaussians[0].get_scaling().unwrap()));
    assert!(finite(&gaussians[0].get_xyz().unwrap()));
    println!(
        "SLatGaussianDecoder (published size): {n} voxels -> {} Gaussians; write+load {:.1?}, \
         decode {:.1?}",
        gaussians[0].len(),
        loaded,
        start.elapsed() - loaded
    );

    let start = Instant::now();
    let config = SLatRadianceFieldDecoderConfig::trellis_image_large();
    let weights = weights_for("rf", &config.checkpoint_layout().unwrap());
    let decoder = SLatRadianceFieldDecoder::new(config, &weights).unwrap();
    let loaded = start.elapsed();
    let fields = tch::no_grad(|| decoder.decode(&x)).unwrap();
    assert_eq!(fields[0].len(), n);
    assert_eq!(fields[0].trivec().size(), [n, 16, 3, 8]);
    assert!(finite(fields[0].trivec()));
    println!(
        "SLatRadianceFieldDecoder (published size): {n} voxels; write+load {:.1?}, decode {:.1?}",
        loaded,
        start.elapsed() - loaded
    );

    let start = Instant::now();
    let config = SLatMeshDecoderConfig::trellis_image_large();
    let weights = weights_for("mesh", &config.checkpoint_layout().unwrap());
    let decoder = SLatMeshDecoder::new(config, &weights).unwrap();
    let loaded = start.elapsed();
    let raw = tch::no_grad(|| decoder.forward_raw(&x)).unwrap();
    assert_eq!(decoder.resolution(), 256);
    assert_eq!(raw.feats().size(), [64 * n, 101]);
    assert!(finite(raw.feats()));
    let max = i64::try_from(raw.coords().narrow(1, 1, 3).max()).unwrap();
    assert!(max < 256);
    println!(
        "SLatMeshDecoder (published size): {n} voxels -> {} at 256^3; write+load {:.1?}, \
         forward_raw {:.1?}",
        64 * n,
        loaded,
        start.elapsed() - loaded
    );
}
