//! SLatFlowModel: the golden cases run directly (also through the registry in
//! golden_modules.rs), the full-size published layout without allocating the weights, and
//! ReconViaGen's list condition against the team's fixture.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{
    assert_layout_is_published, golden_dir, read_tensors, rel_l2, shared_golden_dir,
    REL_L2_TOLERANCE,
};
use recon::hub::read_checkpoint_config;
use recon::models::structured_latent_flow::{SLatFlowConfig, SLatFlowModel};
use recon::nn::layout::{safetensors_file_size, TensorSpec};
use recon::sparse::SparseTensor;
use recon::weights::Weights;
use tch::{Device, Kind, Tensor};

/// Size of `slat_flow_img_dit_L_64l8p2_fp16.safetensors` on the Hub (research/trellis.md §0).
const PUBLISHED_FILE_BYTES: u64 = 1_203_755_136;

const CASES: [&str; 2] = ["slat_flow_fp16layout", "slat_flow_noskip_f32"];

/// Every tensor of the published checkpoint — name, shape, stored dtype, in `state_dict()`
/// order — is what `SLatFlowModel::new` checks and reads for the published config, and the
/// safetensors size formula gives the published file's size.
#[test]
fn published_layout_matches_the_released_checkpoint() {
    let layout = SLatFlowConfig::trellis_image_large()
        .checkpoint_layout()
        .unwrap();
    assert_layout_is_published(
        &layout,
        &golden_dir().join("../published_layouts/slat_flow_img_dit_L_64l8p2_fp16.tsv"),
    );
    assert_eq!(layout.len(), 526);
    let parameters: i64 = layout.iter().map(TensorSpec::numel).sum();
    assert_eq!(parameters, 600_432_520);
    let bytes = safetensors_file_size(&layout, None).unwrap();
    assert_eq!(bytes, PUBLISHED_FILE_BYTES);
    println!(
        "published layout: {} tensors, {parameters} parameters, {bytes} bytes",
        layout.len()
    );
}

fn fixture_stem(case: &str) -> PathBuf {
    golden_dir().join(case).join("ckpts/slat_flow")
}

fn load(stem: &Path) -> (SLatFlowModel, SLatFlowConfig) {
    let config = read_checkpoint_config(&stem.with_extension("json")).unwrap();
    let args: SLatFlowConfig = serde_json::from_value(config.args).unwrap();
    let weights = Weights::open(
        &stem.with_extension("safetensors"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let model = SLatFlowModel::new(args.clone(), &weights)
        .unwrap_or_else(|e| panic!("{}: {e}", stem.display()));
    assert_eq!(weights.unused(), Vec::<String>::new(), "{}", stem.display());
    (model, args)
}

/// The size formula against files the reference's writer produced (with `{"format": "pt"}`).
#[test]
fn file_size_formula_matches_the_fixture_files() {
    for case in CASES {
        let stem = fixture_stem(case);
        let (_, config) = load(&stem);
        let layout = config.checkpoint_layout().unwrap();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let predicted = safetensors_file_size(&layout, Some(metadata)).unwrap();
        let actual = std::fs::metadata(stem.with_extension("safetensors"))
            .unwrap()
            .len();
        assert_eq!(predicted, actual, "{case}");
    }
}

/// The golden cases (fp32 CPU reference from the stored, possibly fp16-rounded weights).
#[test]
fn golden_cases_match_the_reference() {
    for case in CASES {
        let (model, _) = load(&fixture_stem(case));
        let inputs = read_tensors(&golden_dir().join(case).join("inputs.safetensors"));
        let outputs = read_tensors(&golden_dir().join(case).join("outputs.safetensors"));
        let x = SparseTensor::new(
            inputs["x_feats"].shallow_clone(),
            inputs["x_coords"].shallow_clone(),
        )
        .unwrap();
        let v = tch::no_grad(|| model.forward(&x, &inputs["t"], &inputs["cond"])).unwrap();
        assert!(
            v.coords().equal(&inputs["x_coords"]),
            "{case}: coordinates changed"
        );
        let (rel, max_abs) = rel_l2(v.feats(), &outputs["v_feats"]);
        println!("{case}: v_feats rel_l2 {rel:.3e} max_abs {max_abs:.3e}");
        assert!(rel <= REL_L2_TOLERANCE, "{case}: rel_l2 {rel:.3e}");
    }
}

/// ReconViaGen's list condition: each block adds every view's cross-attention / K. Also the
/// single tensor and the list of one against the same fixture.
#[test]
fn matches_the_reconviagen_multiview_fixture() {
    let root = shared_golden_dir().join("reconviagen");
    let (model, _) = load(&root.join("ckpt_pipeline/ckpts/slat_flow"));
    let dir = root.join("slat_flow_multiview");
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let x = SparseTensor::new(
        inputs["x.feats"].shallow_clone(),
        inputs["x.coords"].shallow_clone(),
    )
    .unwrap();
    let t = &inputs["t"];
    let views: Vec<Tensor> = (0..)
        .map_while(|k| {
            inputs
                .get(&format!("cond_list.{k}"))
                .map(Tensor::shallow_clone)
        })
        .collect();
    assert!(views.len() > 1);
    let runs = [
        (
            "out.feats",
            tch::no_grad(|| model.forward_views(&x, t, &views)),
        ),
        (
            "out_single_cond.feats",
            tch::no_grad(|| model.forward(&x, t, &views[0])),
        ),
        (
            "out_list_of_one.feats",
            tch::no_grad(|| model.forward_views(&x, t, &views[..1])),
        ),
    ];
    for (name, ours) in runs {
        let ours = ours.unwrap();
        let (rel, max_abs) = rel_l2(ours.feats(), &outputs[name]);
        println!("reconviagen {name}: rel_l2 {rel:.3e} max_abs {max_abs:.3e}");
        assert!(rel <= REL_L2_TOLERANCE, "{name}: rel_l2 {rel:.3e}");
    }
}
