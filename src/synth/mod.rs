//! `recon synth`: full-size model directories with seeded random weights in the published
//! checkpoint layouts, so that a machine without network access (or without the published
//! weights) can load, run and benchmark the full pipelines. The weights are meaningless; the
//! shapes, dtypes, file layout, file sizes and the work a run does are the published models'.
//!
//! A synthesised directory holds pipeline.json and `ckpts/<stem>.{json,safetensors}` in the
//! published layout ([`plan`]), and beside it a Hugging Face cache (`<hf_home>/hub`, the
//! `models--owner--name/{refs/main,snapshots/<rev>/}` layout hf-hub and huggingface_hub read
//! offline) with the repos the loader fetches by name: the DINOv2 image encoder and, for
//! TRELLIS-VGGT, VGGT. Load it with `HF_HOME=<hf_home> HF_HUB_OFFLINE=1`.
//!
//! Values ([`init`]) are random at the scale of trained weights and depend only on the seed and
//! each tensor's name and size. The SS decoder's final bias is then calibrated so that a random
//! latent occupies [`OCCUPANCY`] of the 64³ grid (≈ 21k voxels; real objects have 10-30k):
//! the decoder is built from the written file, run once on the CPU on a seeded N(0, 1) latent,
//! and the bias lowered by the logits' (1 − OCCUPANCY) quantile. Its last layer follows a
//! channel norm, so the occupied fraction hardly depends on the latent's scale.
//!
//! Every file is streamed into a temporary file and renamed into place once complete;
//! pipeline.json is written last, so an interrupted run leaves no loadable directory.

pub mod init;
pub mod plan;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::export::atomic::write_atomically;
use crate::logging::{LogFn, LogLevel};
use crate::models::sparse_structure_flow::SparseStructureFlowConfig;
use crate::models::sparse_structure_vae::{SparseStructureDecoder, SparseStructureDecoderConfig};
use crate::models::structured_latent_vae::SLatGaussianDecoderConfig;
use crate::nn::layout::{seeded_normal, write_random_checkpoint, Fill, TensorSpec};
use crate::weights::Weights;

pub use plan::{PlannedCheckpoint, PlannedRepo, SynthPipeline};

/// The fraction of the SS decoder's 64³ logits the calibration puts above 0.
pub const OCCUPANCY: f64 = 0.08;

/// The tensor the calibration sets: the SS decoder's last convolution's bias.
const SS_DECODER_FINAL_BIAS: &str = "out_layer.2.bias";

/// Where and what to synthesise.
pub struct SynthOptions<'a> {
    pub pipeline: SynthPipeline,
    /// The model directory to write (created if missing; existing files are replaced).
    pub out: PathBuf,
    pub seed: u64,
    /// The HF_HOME to write the side repos under (its `hub/` folder); `None`: `<out>/hf`.
    pub hf_home: Option<PathBuf>,
    /// Progress messages.
    pub log: &'a LogFn,
}

/// One written weights file.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub tensors: usize,
    pub elements: i64,
}

/// What [`synthesize`] wrote.
#[derive(Debug, Clone)]
pub struct SynthReport {
    pub pipeline_json: PathBuf,
    /// The HF_HOME to load with.
    pub hf_home: PathBuf,
    /// Every safetensors file, in writing order.
    pub files: Vec<WrittenFile>,
    /// The SS decoder's calibrated final bias and the fraction of the calibration latent's
    /// logits it puts above 0.
    pub ss_decoder_bias: f64,
    pub occupancy: f64,
    pub seconds: f64,
}

impl SynthReport {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Writes the model directory and its Hub cache (see the module docs).
pub fn synthesize(opts: &SynthOptions<'_>) -> Result<SynthReport> {
    let started = Instant::now();
    let out = &opts.out;
    let hf_home = opts.hf_home.clone().unwrap_or_else(|| out.join("hf"));
    let checkpoints = plan::checkpoints(opts.pipeline)?;
    let repos = plan::side_repos(opts.pipeline)?;
    let mut files = Vec::new();
    let mut calibration = None;
    for planned in &checkpoints {
        files.push(write_checkpoint(out, planned, opts.seed, opts.log)?);
        if planned.class == "SparseStructureDecoder" {
            let resolution = ss_flow_resolution(&checkpoints)?;
            calibration = Some(calibrate_ss_decoder(
                out, planned, resolution, opts.seed, opts.log,
            )?);
        }
    }
    for repo in &repos {
        let snapshot = hub_snapshot(&hf_home, repo.repo, opts.seed)?;
        write_json(&snapshot.join("config.json"), &repo.config)?;
        files.push(write_hub_weights(
            &snapshot.join("model.safetensors"),
            &repo.layout,
            opts.seed,
            opts.log,
        )?);
    }
    let pipeline_json = out.join(crate::hub::PIPELINE_JSON);
    write_json(
        &pipeline_json,
        &plan::pipeline_json(opts.pipeline, &checkpoints),
    )?;
    let (ss_decoder_bias, occupancy) = calibration
        .ok_or_else(|| Error::internal("the pipeline has no sparse-structure decoder"))?;
    Ok(SynthReport {
        pipeline_json,
        hf_home,
        files,
        ss_decoder_bias,
        occupancy,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes `planned`'s `<stem>.json` and `<stem>.safetensors` under `out` with the values of
/// [`init`] for `seed` (the SS decoder uncalibrated; [`synthesize`] calibrates it).
pub fn write_checkpoint(
    out: &Path,
    planned: &PlannedCheckpoint,
    seed: u64,
    log: &LogFn,
) -> Result<WrittenFile> {
    let (config_path, weights_path) = checkpoint_paths(out, planned);
    let config = json!({"name": planned.class, "args": planned.args});
    write_json(&config_path, &config)?;
    let fill = network_fill(planned)?;
    write_file(
        &weights_path,
        &planned.layout,
        None,
        seed,
        |spec| fill(spec, None),
        log,
    )
}

/// `<out>/<stem>.json` and `<out>/<stem>.safetensors`.
fn checkpoint_paths(out: &Path, planned: &PlannedCheckpoint) -> (PathBuf, PathBuf) {
    (
        out.join(format!("{}.json", planned.stem)),
        out.join(format!("{}.safetensors", planned.stem)),
    )
}

/// Calibrates the written SS decoder's final bias ([`calibrate_occupancy`]) and rewrites the
/// file with it; returns the bias and the occupancy it gives.
fn calibrate_ss_decoder(
    out: &Path,
    planned: &PlannedCheckpoint,
    resolution: i64,
    seed: u64,
    log: &LogFn,
) -> Result<(f64, f64)> {
    let (_, path) = checkpoint_paths(out, planned);
    let (bias, occupancy) = calibrate_occupancy(&path, planned, resolution, seed)
        .context(format!("calibrating {}", path.display()))?;
    let bias_tensor = Tensor::from_slice(&bias);
    let fill = network_fill(planned)?;
    write_file(
        &path,
        &planned.layout,
        None,
        seed,
        |spec| fill(spec, Some(&bias_tensor)),
        log,
    )?;
    let first = bias.first().copied().unwrap_or_default();
    log(
        LogLevel::Info,
        &format!(
            "{}: final bias {first:.4} puts {:.2}% of the calibration latent's logits above 0",
            planned.key,
            100.0 * occupancy
        ),
    );
    Ok((f64::from(first), occupancy))
}

/// A tensor's values for a checkpoint of `planned`'s class: the computed buffers and
/// overrides of [`init`], else its generic rule. The second argument, when given, is the SS
/// decoder's calibrated final bias.
fn network_fill(
    planned: &PlannedCheckpoint,
) -> Result<impl Fn(&TensorSpec, Option<&Tensor>) -> Result<Fill>> {
    let pos_emb = match planned.class {
        "SparseStructureFlowModel" => {
            let config: SparseStructureFlowConfig = serde_json::from_value(planned.args.clone())
                .map_err(|e| Error::internal(format!("SS flow args: {e}")))?;
            Some(init::ss_flow_pos_emb(&config)?)
        }
        _ => None,
    };
    let perturbation = match planned.class {
        "SLatGaussianDecoder" => {
            let config: SLatGaussianDecoderConfig = serde_json::from_value(planned.args.clone())
                .map_err(|e| Error::internal(format!("Gaussian decoder args: {e}")))?;
            Some(init::offset_perturbation(&config)?)
        }
        _ => None,
    };
    let is_ss_decoder = planned.class == "SparseStructureDecoder";
    Ok(
        move |spec: &TensorSpec, calibrated: Option<&Tensor>| -> Result<Fill> {
            let computed = match spec.name.as_str() {
                "pos_emb" => pos_emb.as_ref(),
                "offset_perturbation" => perturbation.as_ref(),
                SS_DECODER_FINAL_BIAS if is_ss_decoder => calibrated,
                _ => None,
            };
            Ok(match computed {
                Some(values) => Fill::Values(values.f_to_kind(Kind::Float)?),
                None => init::default_fill(spec),
            })
        },
    )
}

/// The SS flow's latent resolution (the decoder's input grid).
fn ss_flow_resolution(checkpoints: &[PlannedCheckpoint]) -> Result<i64> {
    let flow = checkpoints
        .iter()
        .find(|c| c.class == "SparseStructureFlowModel")
        .ok_or_else(|| Error::internal("the pipeline has no sparse-structure flow"))?;
    flow.args["resolution"]
        .as_i64()
        .ok_or_else(|| Error::internal("SS flow args without a resolution"))
}

/// The final bias that puts [`OCCUPANCY`] of the decoder's logits above 0 for a seeded N(0, 1)
/// latent, and the fraction it actually puts there: the decoder at `path` is run once on the
/// CPU and its current bias lowered by the logits' (1 − OCCUPANCY) quantile.
fn calibrate_occupancy(
    path: &Path,
    planned: &PlannedCheckpoint,
    resolution: i64,
    seed: u64,
) -> Result<(Vec<f32>, f64)> {
    let config: SparseStructureDecoderConfig = serde_json::from_value(planned.args.clone())
        .map_err(|e| Error::internal(format!("SS decoder args: {e}")))?;
    let weights = Weights::open(path, Kind::Float, Device::Cpu)?;
    let bias = weights.get(&[config.out_channels], SS_DECODER_FINAL_BIAS)?;
    let decoder = SparseStructureDecoder::new(config.clone(), &weights)?;
    let shape = [
        1,
        config.latent_channels,
        resolution,
        resolution,
        resolution,
    ];
    let numel: i64 = shape.iter().product();
    // The latent's own generator stream: the seed mixed with a constant.
    let latent = Tensor::from_slice(&seeded_normal(
        seed ^ 0x5353_4445_435f_4341,
        numel as usize,
        0.0,
        1.0,
    ))
    .f_reshape(shape)?;
    let logits = tch::no_grad(|| decoder.forward(&latent))?.f_flatten(0, -1)?;
    let n = logits.size()[0];
    let k = ((1.0 - OCCUPANCY) * n as f64).round().clamp(1.0, n as f64) as i64;
    let (threshold, _) = logits.f_kthvalue(k, 0, false)?;
    let threshold = f64::try_from(&threshold)?;
    let new_bias = bias.f_sub_scalar(threshold)?;
    let occupied = logits.f_gt(threshold)?.f_sum(Kind::Int64)?;
    let occupancy = i64::try_from(&occupied)? as f64 / n as f64;
    let values: Vec<f32> = Vec::<f32>::try_from(&new_bias.f_to_kind(Kind::Float)?)?;
    Ok((values, occupancy))
}

/// Writes a Hub repo's `model.safetensors` (generic values, `{"format": "pt"}` metadata, as
/// transformers and `PyTorchModelHubMixin` save). VGGT's camera head gets its plausible-camera
/// override; the names are VGGT's own, so the override cannot hit another network.
fn write_hub_weights(
    path: &Path,
    layout: &[TensorSpec],
    seed: u64,
    log: &LogFn,
) -> Result<WrittenFile> {
    let fill = |spec: &TensorSpec| {
        Ok(init::camera_pose_branch(spec).unwrap_or_else(|| init::default_fill(spec)))
    };
    write_file(path, layout, Some(plan::hub_metadata()), seed, fill, log)
}

fn write_file(
    path: &Path,
    layout: &[TensorSpec],
    metadata: Option<std::collections::HashMap<String, String>>,
    seed: u64,
    fill: impl FnMut(&TensorSpec) -> Result<Fill>,
    log: &LogFn,
) -> Result<WrittenFile> {
    let started = Instant::now();
    write_random_checkpoint(path, layout, metadata, seed, fill)
        .context(format!("writing {}", path.display()))?;
    let bytes = std::fs::metadata(path)
        .map_err(|e| Error::io_at(path, &e))?
        .len();
    let written = WrittenFile {
        path: path.to_path_buf(),
        bytes,
        tensors: layout.len(),
        elements: layout.iter().map(TensorSpec::numel).sum(),
    };
    log(
        LogLevel::Info,
        &format!(
            "wrote {} ({} tensors, {:.1} MB) in {:.1?}",
            path.display(),
            written.tensors,
            bytes as f64 / 1e6,
            started.elapsed()
        ),
    );
    Ok(written)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io_at(dir, &e))
}

/// Writes pretty-printed JSON atomically.
fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        create_dir(dir)?;
    }
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
    text.push('\n');
    write_atomically(path, text.as_bytes())
}

/// The snapshot folder of `repo` in the Hub cache under `hf_home`, created, with `refs/main`
/// pointing at it: `<hf_home>/hub/models--owner--name/snapshots/<rev>`. The revision is a
/// made-up commit hash (SHA-1 of the repo and seed), so it is reproducible and never mistaken
/// for a published revision.
pub fn hub_snapshot(hf_home: &Path, repo: &str, seed: u64) -> Result<PathBuf> {
    let folder = hf_home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let revision: String = Sha1::digest(format!("recon synth {repo} seed {seed}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let snapshot = folder.join("snapshots").join(&revision);
    create_dir(&snapshot)?;
    create_dir(&folder.join("refs"))?;
    write_atomically(&folder.join("refs").join("main"), revision.as_bytes())?;
    Ok(snapshot)
}
