//! What a synthesised model directory holds: pipeline.json, one checkpoint per pipeline model
//! (stem, class, published args and the layout the network computes from them) and the Hub
//! repos the loader takes from the Hugging Face cache. Nothing here touches the disk.
//!
//! The args are written as the published checkpoint jsons hold them (research/trellis.md §3,
//! research/reconviagen.md §1.2); every layout is computed by the network's own code from
//! those args, so the files are exactly what the loaders check.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::models::dinov2::{
    Dinov2Config, Dinov2Layout, DINOV2_VITL14_REG, DINOV2_VITL14_REG_REPO,
};
use crate::models::sparse_structure_flow::multiview_cond::ModulatedMultiViewCondConfig;
use crate::models::sparse_structure_flow::SparseStructureFlowConfig;
use crate::models::sparse_structure_vae::SparseStructureDecoderConfig;
use crate::models::structured_latent_flow::multiview_cond::ModulatedSLATMultiViewCondConfig;
use crate::models::structured_latent_flow::SLatFlowConfig;
use crate::models::structured_latent_vae::{
    SLatGaussianDecoderConfig, SLatMeshDecoderConfig, SLatRadianceFieldDecoderConfig,
};
use crate::models::vggt::dpt_head::{DptHead, DptHeadConfig};
use crate::models::vggt::model::{VggtConfig, DEPTH_HEAD};
use crate::nn::layout::TensorSpec;
use crate::pipelines::trellis_vggt_to_3d::VGGT_MODEL_REPO;

/// The published pipelines `recon synth` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthPipeline {
    /// `microsoft/TRELLIS-image-large` (`TrellisImageTo3DPipeline`).
    TrellisImageLarge,
    /// `Stable-X/trellis-vggt-v0-2` (`TrellisVGGTTo3DPipeline`, ReconViaGen v0.2).
    TrellisVggt,
}

impl SynthPipeline {
    /// Every pipeline, by its command-line name.
    pub const ALL: [(&'static str, SynthPipeline); 2] = [
        ("trellis-image-large", SynthPipeline::TrellisImageLarge),
        ("trellis-vggt", SynthPipeline::TrellisVggt),
    ];

    /// The pipeline called `name` (`trellis-image-large` or `trellis-vggt`).
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, p)| p)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "unknown pipeline '{name}' (expected trellis-image-large or trellis-vggt)"
                ))
            })
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::TrellisImageLarge => "trellis-image-large",
            Self::TrellisVggt => "trellis-vggt",
        }
    }

    /// The Hub repo whose layout is synthesised.
    pub fn published_repo(self) -> &'static str {
        match self {
            Self::TrellisImageLarge => "microsoft/TRELLIS-image-large",
            Self::TrellisVggt => "Stable-X/trellis-vggt-v0-2",
        }
    }
}

/// One `ckpts/<stem>.{json,safetensors}` pair.
#[derive(Debug, Clone)]
pub struct PlannedCheckpoint {
    /// The key in pipeline.json's `args.models`.
    pub key: &'static str,
    /// The stem, relative to the model directory (`ckpts/ss_dec_conv3d_16l8_fp16`).
    pub stem: &'static str,
    /// The class `<stem>.json` names.
    pub class: &'static str,
    /// The constructor args `<stem>.json` holds.
    pub args: Value,
    /// Every tensor of `<stem>.safetensors` with its stored dtype.
    pub layout: Vec<TensorSpec>,
}

/// A Hub repo the loader reads from the Hugging Face cache: `config.json` + `model.safetensors`.
#[derive(Debug, Clone)]
pub struct PlannedRepo {
    /// `owner/name`.
    pub repo: &'static str,
    pub config: Value,
    pub layout: Vec<TensorSpec>,
}

/// `__metadata__` of the transformers / `PyTorchModelHubMixin` files (the TRELLIS checkpoints
/// carry none).
pub fn hub_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// The args of `class` parsed into the network's config, as the loader will parse them.
fn parse<T: DeserializeOwned>(class: &str, args: &Value) -> Result<T> {
    serde_json::from_value(args.clone())
        .map_err(|e| Error::internal(format!("synthesised args of {class} do not parse: {e}")))
}

/// SS flow `ss_flow_img_dit_L_16l8_fp16` (research/trellis.md §3.2).
fn ss_flow_args() -> Value {
    json!({"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 1024,
           "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4,
           "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true, "use_fp16": true})
}

/// SS decoder `ss_dec_conv3d_16l8_fp16` (research/trellis.md §3.3).
fn ss_decoder_args() -> Value {
    json!({"out_channels": 1, "latent_channels": 8, "num_res_blocks": 2,
           "num_res_blocks_middle": 2, "channels": [512, 128, 32], "use_fp16": true})
}

/// SLat flow `slat_flow_img_dit_L_64l8p2_fp16` (research/trellis.md §3.4).
fn slat_flow_args() -> Value {
    json!({"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 1024,
           "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4,
           "patch_size": 2, "num_io_res_blocks": 2, "io_block_channels": [128],
           "pe_mode": "ape", "qk_rms_norm": true, "use_fp16": true})
}

/// The SLat decoders' shared args with a representation config (research/trellis.md §3.5-3.6).
fn slat_decoder_args(representation_config: Value) -> Value {
    json!({"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12,
           "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8,
           "use_fp16": true, "representation_config": representation_config})
}

fn gaussian_representation() -> Value {
    json!({"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0,
                  "_rotation": 0.1},
           "perturb_offset": true, "voxel_size": 1.5, "num_gaussians": 32,
           "2d_filter_kernel_size": 0.1, "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3,
           "opacity_bias": 0.1, "scaling_activation": "softplus"})
}

/// ReconViaGen's `sparse_structure_vggt_cond` (research/reconviagen.md §1.2).
fn ss_cond_args() -> Value {
    json!({"channels": 1024, "ctx_channels": 3072, "num_heads": 16, "mlp_ratio": 4,
           "attn_mode": "full", "use_rope": false, "share_mod": false, "qk_rms_norm": true,
           "qk_rms_norm_cross": false})
}

/// ReconViaGen's `slat_vggt_cond`.
fn slat_cond_args() -> Value {
    json!({"channels": 1024, "ctx_channels": 3072})
}

fn checkpoint(
    key: &'static str,
    stem: &'static str,
    class: &'static str,
    args: Value,
) -> Result<PlannedCheckpoint> {
    let layout = match class {
        "SparseStructureFlowModel" => {
            parse::<SparseStructureFlowConfig>(class, &args)?.checkpoint_layout()?
        }
        "SparseStructureDecoder" => {
            parse::<SparseStructureDecoderConfig>(class, &args)?.checkpoint_layout()?
        }
        "SLatFlowModel" => parse::<SLatFlowConfig>(class, &args)?.checkpoint_layout()?,
        "SLatGaussianDecoder" => {
            parse::<SLatGaussianDecoderConfig>(class, &args)?.checkpoint_layout()?
        }
        "SLatMeshDecoder" => parse::<SLatMeshDecoderConfig>(class, &args)?.checkpoint_layout()?,
        "SLatRadianceFieldDecoder" => {
            parse::<SLatRadianceFieldDecoderConfig>(class, &args)?.checkpoint_layout()?
        }
        "ModulatedMultiViewCond" => {
            parse::<ModulatedMultiViewCondConfig>(class, &args)?.checkpoint_layout()?
        }
        "ModulatedSLATMultiViewCond" => {
            parse::<ModulatedSLATMultiViewCondConfig>(class, &args)?.checkpoint_layout()?
        }
        other => {
            return Err(Error::internal(format!(
                "synth: no layout for class {other}"
            )))
        }
    };
    Ok(PlannedCheckpoint {
        key,
        stem,
        class,
        args,
        layout,
    })
}

/// The TRELLIS-image-large stems of the networks both pipelines share.
const SS_FLOW_STEM: &str = "ckpts/ss_flow_img_dit_L_16l8_fp16";
const SS_DECODER_STEM: &str = "ckpts/ss_dec_conv3d_16l8_fp16";
const SLAT_FLOW_STEM: &str = "ckpts/slat_flow_img_dit_L_64l8p2_fp16";
const SLAT_GS_STEM: &str = "ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16";
const SLAT_MESH_STEM: &str = "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16";
const SLAT_RF_STEM: &str = "ckpts/slat_dec_rf_swin8_B_64l8r16_fp16";

/// The checkpoints of `pipeline`, in pipeline.json's `models` order. TRELLIS-VGGT's file stems
/// are not published (research/reconviagen.md §8): its flows and decoders reuse
/// TRELLIS-image-large's stems (same classes and args), its condition networks are
/// `ckpts/ss_vggt_cond` and `ckpts/slat_vggt_cond`, and it has no radiance-field decoder (the
/// reference skips `slat_decoder_rf`).
pub fn checkpoints(pipeline: SynthPipeline) -> Result<Vec<PlannedCheckpoint>> {
    let mut out = Vec::new();
    if pipeline == SynthPipeline::TrellisVggt {
        out.push(checkpoint(
            "sparse_structure_vggt_cond",
            "ckpts/ss_vggt_cond",
            "ModulatedMultiViewCond",
            ss_cond_args(),
        )?);
        out.push(checkpoint(
            "slat_vggt_cond",
            "ckpts/slat_vggt_cond",
            "ModulatedSLATMultiViewCond",
            slat_cond_args(),
        )?);
    }
    out.push(checkpoint(
        "sparse_structure_flow_model",
        SS_FLOW_STEM,
        "SparseStructureFlowModel",
        ss_flow_args(),
    )?);
    out.push(checkpoint(
        "sparse_structure_decoder",
        SS_DECODER_STEM,
        "SparseStructureDecoder",
        ss_decoder_args(),
    )?);
    out.push(checkpoint(
        "slat_flow_model",
        SLAT_FLOW_STEM,
        "SLatFlowModel",
        slat_flow_args(),
    )?);
    out.push(checkpoint(
        "slat_decoder_gs",
        SLAT_GS_STEM,
        "SLatGaussianDecoder",
        slat_decoder_args(gaussian_representation()),
    )?);
    if pipeline == SynthPipeline::TrellisImageLarge {
        out.push(checkpoint(
            "slat_decoder_rf",
            SLAT_RF_STEM,
            "SLatRadianceFieldDecoder",
            slat_decoder_args(json!({"rank": 16, "dim": 8})),
        )?);
    }
    out.push(checkpoint(
        "slat_decoder_mesh",
        SLAT_MESH_STEM,
        "SLatMeshDecoder",
        slat_decoder_args(json!({"use_color": true})),
    )?);
    Ok(out)
}

/// The slat normalisation both pipelines use (TRELLIS's `slat_normalization`).
const SLAT_MEAN: [f64; 8] = [
    -2.1687545776367188,
    -0.004347046371549368,
    -0.13352349400520325,
    -0.08418072760105133,
    -0.5271206498146057,
    0.7238689064979553,
    -1.1414450407028198,
    1.2039363384246826,
];
const SLAT_STD: [f64; 8] = [
    2.377650737762451,
    2.386378288269043,
    2.124418020248413,
    2.1748552322387695,
    2.663944721221924,
    2.371192216873169,
    2.6217446327209473,
    2.684523105621338,
];

fn sampler(params: Value) -> Value {
    json!({"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
           "params": params})
}

/// pipeline.json of `pipeline`, naming `checkpoints`. TRELLIS-image-large's sampler params are
/// research/trellis.md §1.1's (steps 25, cfg 7.5 / 3.0, interval [0.5, 1], rescale_t 3);
/// TRELLIS-VGGT's are the values ReconViaGen's app runs with (research/reconviagen.md §1.5).
pub fn pipeline_json(pipeline: SynthPipeline, checkpoints: &[PlannedCheckpoint]) -> Value {
    let models: serde_json::Map<String, Value> = checkpoints
        .iter()
        .map(|c| (c.key.to_string(), Value::from(c.stem)))
        .collect();
    let (name, ss, slat) = match pipeline {
        SynthPipeline::TrellisImageLarge => (
            "TrellisImageTo3DPipeline",
            json!({"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0],
                   "rescale_t": 3.0}),
            json!({"steps": 25, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0],
                   "rescale_t": 3.0}),
        ),
        SynthPipeline::TrellisVggt => (
            "TrellisVGGTTo3DPipeline",
            json!({"steps": 30, "cfg_strength": 7.5, "cfg_interval": [0.6, 1.0],
                   "rescale_t": 5.0, "guidance_rescale": 0.7}),
            json!({"steps": 12, "cfg_strength": 7.5, "cfg_interval": [0.6, 1.0],
                   "rescale_t": 3.0, "guidance_rescale": 0.5}),
        ),
    };
    json!({
        "name": name,
        "args": {
            "models": models,
            "sparse_structure_sampler": sampler(ss),
            "slat_sampler": sampler(slat),
            "slat_normalization": {"mean": SLAT_MEAN, "std": SLAT_STD},
            "image_cond_model": DINOV2_VITL14_REG,
        }
    })
}

/// transformers' `config.json` of `facebook/dinov2-with-registers-large`.
fn dinov2_config() -> Value {
    json!({
        "architectures": ["Dinov2WithRegistersModel"],
        "model_type": "dinov2_with_registers",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "mlp_ratio": 4,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": 518,
        "patch_size": 14,
        "num_channels": 3,
        "qkv_bias": true,
        "layerscale_value": 1.0,
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": false,
        "num_register_tokens": 4,
        "interpolate_antialias": true,
        "interpolate_offset": 0.0,
        "apply_layernorm": true,
        "reshape_hidden_states": true,
        "torch_dtype": "float32"
    })
}

/// The image encoder's repo: the transformers layout of `dinov2_vitl14_reg`, fp32.
pub fn dinov2_repo() -> Result<PlannedRepo> {
    let config = dinov2_config();
    let parsed = Dinov2Config::from_transformers_json(&config)?;
    let layout = parsed
        .expected_tensors(Dinov2Layout::Transformers)?
        .into_iter()
        .map(|(name, shape)| TensorSpec::new(name, &shape, tch::Kind::Float))
        .collect();
    Ok(PlannedRepo {
        repo: DINOV2_VITL14_REG_REPO,
        config,
        layout,
    })
}

/// `Stable-X/vggt-object-v0-1`: VGGT-1B's layout, fp32. The aggregator and the camera, point
/// and depth heads come from the network's layout functions; the track head (which ReconViaGen
/// deletes and recon never reads) has none in recon and is left out.
pub fn vggt_repo() -> Result<PlannedRepo> {
    let config = json!({"img_size": 518, "patch_size": 14, "embed_dim": 1024});
    let parsed: VggtConfig = parse("VGGT", &config)?;
    let mut layout = parsed.checkpoint_layout()?;
    let depth = DptHeadConfig {
        output_dim: 2,
        ..parsed.point_head()
    };
    layout.extend(DptHead::layout(DEPTH_HEAD, &depth));
    Ok(PlannedRepo {
        repo: VGGT_MODEL_REPO,
        config,
        layout,
    })
}

/// The Hub repos `pipeline` loads besides its own directory.
pub fn side_repos(pipeline: SynthPipeline) -> Result<Vec<PlannedRepo>> {
    let mut repos = vec![dinov2_repo()?];
    if pipeline == SynthPipeline::TrellisVggt {
        repos.push(vggt_repo()?);
    }
    Ok(repos)
}
