//! TRELLIS stage 1 end to end against the reference (golden case `stage1`, harness "stage1"):
//! RGBA views → preprocessing → DINOv2 condition → sparse-structure sampling → decoder → voxels,
//! for one view, three views in both multi-image modes and one view without preprocessing.
//!
//! (a) From the reference's noise: condition tokens, latent and logits within rel. L2 1e-4,
//!     coordinates exactly equal, in the same order.
//! (b) From the seed: the noise equals the reference's bit for bit, and the whole run gives the
//!     same coordinates.
//! Plus the tiny demo model (tests/fixtures/model_tiny): stage 1 alone, progress arrives in
//! order, and a progress callback cancels between sampler steps. Stage 2 and the full run are
//! tested in tests/stage2.rs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{
    case_manifest, fixture_model_dir, golden_dir, load_pipeline_cpu, read_tensors, rel_l2,
    REL_L2_TOLERANCE,
};
use recon::models::NamedTensors;
use recon::pipeline::{
    DeviceRequest, ImageInput, LoadOptions, MultiImageMode, Pipeline, RunControl, RunParams,
    SamplerOverrides, Stage,
};
use recon::pipelines::trellis_image_to_3d::SparseStructureOutput;
use recon::ErrorKind;
use serde_json::Value;
use tch::Tensor;

fn case_dir() -> PathBuf {
    golden_dir().join("stage1")
}

fn manifest() -> Value {
    case_manifest("stage1", "stage1")
}

fn load(dir: &Path) -> Pipeline {
    load_pipeline_cpu(dir)
}

fn outputs() -> NamedTensors {
    read_tensors(&case_dir().join("outputs.safetensors"))
}

/// One reference run of the manifest, as recon's inputs.
struct Run {
    name: String,
    pngs: Vec<Vec<u8>>,
    params: RunParams,
    num_voxels: i64,
}

impl Run {
    fn images(&self) -> Vec<ImageInput<'_>> {
        self.pngs.iter().map(|b| ImageInput::Encoded(b)).collect()
    }
}

fn runs() -> Vec<Run> {
    let manifest = manifest();
    manifest["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            let pngs = run["views"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| std::fs::read(case_dir().join(v.as_str().unwrap())).unwrap())
                .collect();
            let overrides = &run["sparse_structure_sampler_params"];
            let mut params = RunParams {
                seed: run["seed"].as_u64().unwrap(),
                preprocess: run["preprocess"].as_bool().unwrap(),
                ..RunParams::default()
            };
            params.mode = match run["mode"].as_str() {
                Some("multidiffusion") => MultiImageMode::Multidiffusion,
                Some("stochastic") | None => MultiImageMode::Stochastic,
                Some(other) => panic!("unknown mode {other}"),
            };
            params.sparse_structure = SamplerOverrides {
                steps: overrides["steps"].as_u64().map(|s| s as u32),
                cfg_strength: overrides["cfg_strength"].as_f64().map(|s| s as f32),
            };
            Run {
                name: run["name"].as_str().unwrap().to_string(),
                pngs,
                params,
                num_voxels: run["num_voxels"].as_i64().unwrap(),
            }
        })
        .collect()
}

fn reference<'a>(outputs: &'a NamedTensors, run: &str, name: &str) -> &'a Tensor {
    outputs
        .get(&format!("{run}.{name}"))
        .unwrap_or_else(|| panic!("outputs.safetensors lacks {run}.{name}"))
}

fn assert_close(run: &str, what: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    let (rel, max_abs) = rel_l2(ours, reference);
    println!("{run:>15} {what:<10} rel L2 {rel:.3e}  max abs {max_abs:.3e}");
    assert!(
        rel <= REL_L2_TOLERANCE,
        "{run}: {what} rel L2 {rel:.3e} > {REL_L2_TOLERANCE:e}"
    );
    max_abs
}

fn assert_same_coords(run: &str, ours: &SparseStructureOutput, reference: &Tensor) {
    assert_eq!(ours.coords.kind(), tch::Kind::Int, "{run}: coords kind");
    assert_eq!(
        ours.coords.size(),
        reference.size(),
        "{run}: {} voxels, the reference has {}",
        ours.num_voxels(),
        reference.size()[0]
    );
    assert!(ours.coords.equal(reference), "{run}: coords differ");
}

#[test]
fn stage1_from_the_reference_noise_matches_the_reference() {
    let pipeline = load(&case_dir().join(manifest()["model_dir"].as_str().unwrap()));
    let outputs = outputs();
    let margin = manifest()["margin"]["min_abs_logit"].as_f64().unwrap();
    for run in runs() {
        let noise = reference(&outputs, &run.name, "ss_noise");
        let ours = pipeline
            .run_sparse_structure_from_noise(&run.images(), &run.params, noise, &RunControl::none())
            .unwrap_or_else(|e| panic!("{}: {e}", run.name));
        assert!(ours.noise.equal(noise));
        assert_close(
            &run.name,
            "cond",
            &ours.cond,
            reference(&outputs, &run.name, "cond"),
        );
        assert_eq!(ours.neg_cond.size()[0], 1);
        assert_eq!(f64::try_from(ours.neg_cond.abs().max()).unwrap(), 0.0);
        let latent = reference(&outputs, &run.name, "ss_latent");
        assert_close(&run.name, "ss_latent", &ours.latent, latent);
        let logits = reference(&outputs, &run.name, "logits");
        let max_abs = assert_close(&run.name, "logits", &ours.logits, logits);
        println!(
            "{:>15} logit max abs error {max_abs:.3e} vs min |logit| margin {margin:.3e}",
            run.name
        );
        assert_same_coords(&run.name, &ours, reference(&outputs, &run.name, "coords"));
        assert_eq!(ours.num_voxels(), run.num_voxels);
    }
}

#[test]
fn stage1_from_the_seed_reproduces_the_reference() {
    let pipeline = load(&case_dir().join(manifest()["model_dir"].as_str().unwrap()));
    let outputs = outputs();
    for run in runs() {
        let ours = pipeline
            .run_sparse_structure(&run.images(), &run.params, &RunControl::none())
            .unwrap_or_else(|e| panic!("{}: {e}", run.name));
        let noise = reference(&outputs, &run.name, "ss_noise");
        assert_eq!(ours.noise.device(), tch::Device::Cpu);
        assert!(
            ours.noise.equal(noise),
            "{}: the noise of seed {} differs from the reference's",
            run.name,
            run.params.seed
        );
        assert_same_coords(&run.name, &ours, reference(&outputs, &run.name, "coords"));
        println!(
            "{:>15} seed {}: noise identical, {} voxels identical",
            run.name,
            run.params.seed,
            ours.num_voxels()
        );
        // This model has no stage 2: a full run names what is missing before any work.
        let err = pipeline
            .run(&run.images(), &run.params, &RunControl::none())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Format, "{err}");
        assert!(err.message().contains("slat_flow_model"), "{err}");
    }
}

fn example_png() -> Vec<u8> {
    std::fs::read(fixture_model_dir().join("../images/example.png")).unwrap()
}

#[test]
fn demo_model_runs_stage1() {
    let pipeline = load(&fixture_model_dir());
    let keys: Vec<&str> = pipeline.networks().iter().map(|n| n.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "slat_decoder_gs",
            "slat_decoder_mesh",
            "slat_decoder_rf",
            "slat_flow_model",
            "sparse_structure_decoder",
            "sparse_structure_flow_model",
            "image_cond_model"
        ]
    );
    let png = example_png();
    let images = [ImageInput::Encoded(&png)];
    let params = RunParams::default();
    let reports = Mutex::new(Vec::new());
    let progress = |stage: Stage, step: usize, total: usize| {
        reports.lock().unwrap().push((stage, step, total));
        true
    };
    let control = RunControl {
        cancel: None,
        progress: Some(&progress),
    };
    let stage1 = pipeline
        .run_sparse_structure(&images, &params, &control)
        .unwrap();
    assert_eq!(stage1.grid_side(), 64);
    assert_eq!(stage1.cond.size(), [1, 1 + 4 + 37 * 37, 32]);
    let voxels = stage1.num_voxels();
    assert!(voxels > 0 && voxels < 64 * 64 * 64, "{voxels} voxels");
    let reports = reports.into_inner().unwrap();
    // pipeline.json: 25 steps.
    let mut expected = vec![
        (Stage::Preprocess, 0, 1),
        (Stage::Preprocess, 1, 1),
        (Stage::Condition, 0, 1),
        (Stage::Condition, 1, 1),
    ];
    expected.extend((0..=25).map(|step| (Stage::SparseStructure, step, 25)));
    assert_eq!(reports, expected);

    // Same seed, same voxels; another seed, other noise.
    let again = pipeline
        .run_sparse_structure(&images, &params, &RunControl::none())
        .unwrap();
    assert!(again.coords.equal(&stage1.coords));
    let other = RunParams {
        seed: 43,
        ..RunParams::default()
    };
    let other = pipeline
        .run_sparse_structure(&images, &other, &RunControl::none())
        .unwrap();
    assert!(!other.noise.equal(&stage1.noise));
}

#[test]
fn progress_callback_cancels_between_sampler_steps() {
    let pipeline = load(&fixture_model_dir());
    let png = example_png();
    let images = [ImageInput::Encoded(&png), ImageInput::Encoded(&png)];
    let params = RunParams {
        mode: MultiImageMode::Multidiffusion,
        sparse_structure: SamplerOverrides {
            steps: Some(6),
            cfg_strength: Some(2.0),
        },
        ..RunParams::default()
    };
    let last = Mutex::new(None);
    let progress = |stage: Stage, step: usize, total: usize| {
        *last.lock().unwrap() = Some((stage, step, total));
        !(stage == Stage::SparseStructure && step == 2)
    };
    let control = RunControl {
        cancel: None,
        progress: Some(&progress),
    };
    let err = pipeline
        .run_sparse_structure(&images, &params, &control)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(*last.lock().unwrap(), Some((Stage::SparseStructure, 2, 6)));
    // A cancel flag set before the run stops it before any work.
    let flag = std::sync::atomic::AtomicBool::new(true);
    let control = RunControl {
        cancel: Some(&flag),
        progress: None,
    };
    let err = pipeline.run(&images, &params, &control).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
}

#[test]
fn wrong_noise_and_images_without_alpha_are_refused() {
    let pipeline = load(&fixture_model_dir());
    let png = example_png();
    let images = [ImageInput::Encoded(&png)];
    let noise = Tensor::zeros([1, 8, 8, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
    let err = pipeline
        .run_sparse_structure_from_noise(
            &images,
            &RunParams::default(),
            &noise,
            &RunControl::none(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("[B, 8, 16, 16, 16]"), "{err}");
    // An opaque RGB view needs background removal, here turned off.
    let rgb = [200u8; 4 * 4 * 3];
    let raw = [ImageInput::Pixels {
        data: &rgb,
        width: 4,
        height: 4,
        stride: 12,
        channels: 3,
    }];
    let no_removal = RunParams {
        remove_background: recon::pipeline::BackgroundRemoval::Never,
        ..RunParams::default()
    };
    let err = pipeline
        .run_sparse_structure(&raw, &no_removal, &RunControl::none())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("image 0"), "{err}");
    // Without preprocessing, the same view is simply resized: stage 1 runs.
    let params = RunParams {
        preprocess: false,
        sparse_structure: SamplerOverrides {
            steps: Some(2),
            cfg_strength: None,
        },
        ..RunParams::default()
    };
    let out = pipeline
        .run_sparse_structure(&raw, &params, &RunControl::none())
        .unwrap();
    assert_eq!(out.latent.size(), [1, 8, 16, 16, 16]);
}

#[test]
fn only_models_can_leave_the_image_encoder_out() {
    let mut options = LoadOptions::new(fixture_model_dir().to_str().unwrap());
    options.device = DeviceRequest::Cpu;
    options.only_models = Some(vec!["sparse_structure_decoder".to_string()]);
    let pipeline = Pipeline::load(&options).unwrap();
    assert_eq!(pipeline.networks().len(), 1);
    let png = example_png();
    let err = pipeline
        .run_sparse_structure(
            &[ImageInput::Encoded(&png)],
            &RunParams::default(),
            &RunControl::none(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("only_models"), "{err}");
    options.only_models = Some(vec!["image_cond_model".to_string()]);
    let pipeline = Pipeline::load(&options).unwrap();
    let keys: Vec<&str> = pipeline.networks().iter().map(|n| n.key.as_str()).collect();
    assert_eq!(keys, ["image_cond_model"]);
    assert_eq!(pipeline.networks()[0].stem, "ckpts/dinov2_tiny");
}

/// A copy of the demo model with `image_cond_model` set to `value`.
fn model_with_image_cond(value: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    std::fs::create_dir_all(dst.join("ckpts")).unwrap();
    let src = fixture_model_dir();
    for entry in std::fs::read_dir(src.join("ckpts")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dst.join("ckpts").join(path.file_name().unwrap())).unwrap();
    }
    let text = std::fs::read_to_string(src.join("pipeline.json")).unwrap();
    let mut json: Value = serde_json::from_str(&text).unwrap();
    json["args"]["image_cond_model"] = Value::String(value.to_string());
    std::fs::write(dst.join("pipeline.json"), json.to_string()).unwrap();
    (tmp, dst)
}

fn load_error(dir: &Path) -> recon::Error {
    let mut options = LoadOptions::new(dir.to_str().unwrap());
    options.device = DeviceRequest::Cpu;
    options.offline = Some(true);
    Pipeline::load(&options).err().unwrap()
}

#[test]
fn image_cond_model_stems_are_checked_like_model_stems() {
    for (value, kind, needle) in [
        ("../model/ckpts/dinov2_tiny", ErrorKind::Format, "`..`"),
        ("/etc/dinov2", ErrorKind::Format, "absolute path"),
        (
            "ckpts/no_such_dinov2",
            ErrorKind::Io,
            "no_such_dinov2.json not found",
        ),
        // A stem whose checkpoint is another network.
        (
            "ckpts/ss_flow_img_dit_tiny_fp16",
            ErrorKind::Format,
            "must be a DinoVisionTransformer",
        ),
    ] {
        let (_tmp, dir) = model_with_image_cond(value);
        let err = load_error(&dir);
        assert_eq!(err.kind(), kind, "{value}: {err}");
        assert!(
            err.message().contains(needle),
            "{value}: {err} lacks {needle}"
        );
        assert!(err.message().contains("image_cond_model"), "{value}: {err}");
    }
    // A torch.hub name recon does not know.
    let (_tmp, dir) = model_with_image_cond("dinov2_vitg14");
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("dinov2_vitg14"), "{err}");
}
