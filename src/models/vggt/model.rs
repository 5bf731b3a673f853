//! `vggt/models/vggt.py`: the `VGGT` model as ReconViaGen keeps it — aggregator, camera head
//! and point head (it deletes the depth and track heads after loading) — loaded from a Hub
//! folder (`config.json` + `model.safetensors`, the `PyTorchModelHubMixin` layout of
//! `facebook/VGGT-1B` and `Stable-X/vggt-object-v0-1`).
//!
//! The published `config.json` holds only `img_size`, `patch_size` and `embed_dim`; every other
//! size is hard-wired in the reference classes. [`VggtConfig`] accepts those sizes as optional
//! keys (defaulting to VGGT-1B's) so smaller models with the same structure load too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::hub::read_json_file;
use crate::nn::layout::{check_layout, TensorSpec};
use crate::weights::Weights;

use super::aggregator::{Aggregator, AggregatorConfig, AggregatorOutput, KeepLayers};
use super::camera_head::{CameraHead, CameraHeadConfig, CAMERA_HEAD_ITERATIONS};
use super::dpt_head::{DptHead, DptHeadConfig};
use super::pose_enc::pose_encoding_to_extri_intri;

/// The Hub config file of a VGGT folder.
pub const VGGT_CONFIG_FILE: &str = "config.json";
/// The Hub weights file of a VGGT folder.
pub const VGGT_WEIGHTS_FILE: &str = "model.safetensors";
/// `CameraHead`'s `mlp_ratio` (VGGT builds it with the default).
const CAMERA_HEAD_MLP_RATIO: f64 = 4.0;

/// The heads a VGGT checkpoint can hold.
pub const CAMERA_HEAD: &str = "camera_head";
pub const POINT_HEAD: &str = "point_head";
pub const DEPTH_HEAD: &str = "depth_head";
pub const TRACK_HEAD: &str = "track_head";
/// Heads ReconViaGen deletes after loading: their tensors are accepted and not read.
pub const UNUSED_HEADS: [&str; 2] = [DEPTH_HEAD, TRACK_HEAD];

/// VGGT's `config.json`, with VGGT-1B's values as defaults. Unknown keys are refused (serde
/// names the key).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VggtConfig {
    #[serde(default = "default_img_size")]
    pub img_size: i64,
    #[serde(default = "default_patch_size")]
    pub patch_size: i64,
    #[serde(default = "default_embed_dim")]
    pub embed_dim: i64,
    /// Aggregator depth (frame/global block pairs).
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_num_heads")]
    pub num_heads: i64,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_num_register_tokens")]
    pub num_register_tokens: i64,
    /// Blocks of the DINOv2 patch embedding (ViT-L: 24).
    #[serde(default = "default_depth")]
    pub patch_embed_depth: usize,
    #[serde(default = "default_num_heads")]
    pub patch_embed_num_heads: i64,
    #[serde(default = "default_camera_head_trunk_depth")]
    pub camera_head_trunk_depth: usize,
    #[serde(default = "default_num_heads")]
    pub camera_head_num_heads: i64,
    #[serde(default = "default_point_head_features")]
    pub point_head_features: i64,
    #[serde(default = "default_point_head_out_channels")]
    pub point_head_out_channels: Vec<i64>,
    /// The heads the checkpoint holds (`camera_head`, `point_head`, `depth_head`,
    /// `track_head`); recon builds the camera and point heads among them.
    #[serde(default = "default_heads")]
    pub heads: Vec<String>,
    /// Upstream `VGGT(enable_camera=..., enable_point=..., enable_depth=..., enable_track=...)`
    /// (later releases save them in config.json): a disabled head is not in the checkpoint.
    #[serde(default = "yes")]
    pub enable_camera: bool,
    #[serde(default = "yes")]
    pub enable_point: bool,
    #[serde(default = "yes")]
    pub enable_depth: bool,
    #[serde(default = "yes")]
    pub enable_track: bool,
}

fn default_img_size() -> i64 {
    518
}
fn default_patch_size() -> i64 {
    14
}
fn default_embed_dim() -> i64 {
    1024
}
fn default_depth() -> usize {
    24
}
fn default_num_heads() -> i64 {
    16
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_num_register_tokens() -> i64 {
    4
}
fn default_camera_head_trunk_depth() -> usize {
    4
}
fn default_point_head_features() -> i64 {
    256
}
fn default_point_head_out_channels() -> Vec<i64> {
    vec![256, 512, 1024, 1024]
}
fn default_heads() -> Vec<String> {
    [CAMERA_HEAD, POINT_HEAD, DEPTH_HEAD, TRACK_HEAD]
        .map(str::to_string)
        .to_vec()
}
fn yes() -> bool {
    true
}

impl Default for VggtConfig {
    fn default() -> Self {
        Self::vggt_1b()
    }
}

impl VggtConfig {
    /// `facebook/VGGT-1B` (and `Stable-X/vggt-object-v0-1`).
    pub fn vggt_1b() -> Self {
        Self {
            img_size: default_img_size(),
            patch_size: default_patch_size(),
            embed_dim: default_embed_dim(),
            depth: default_depth(),
            num_heads: default_num_heads(),
            mlp_ratio: default_mlp_ratio(),
            num_register_tokens: default_num_register_tokens(),
            patch_embed_depth: default_depth(),
            patch_embed_num_heads: default_num_heads(),
            camera_head_trunk_depth: default_camera_head_trunk_depth(),
            camera_head_num_heads: default_num_heads(),
            point_head_features: default_point_head_features(),
            point_head_out_channels: default_point_head_out_channels(),
            heads: default_heads(),
            enable_camera: true,
            enable_point: true,
            enable_depth: true,
            enable_track: true,
        }
    }

    /// Reads a Hub `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value = read_json_file(path)?;
        let config: Self = serde_json::from_value(value)
            .map_err(|e| Error::format(format!("{}: not a VGGT config: {e}", path.display())))?;
        config
            .validate()
            .map_err(|e| e.context(path.display().to_string()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        for head in &self.heads {
            if ![CAMERA_HEAD, POINT_HEAD, DEPTH_HEAD, TRACK_HEAD].contains(&head.as_str()) {
                return Err(Error::checkpoint(format!(
                    "VGGT: unknown head '{head}' in heads (expected {CAMERA_HEAD}, {POINT_HEAD}, \
                     {DEPTH_HEAD} or {TRACK_HEAD})"
                )));
            }
        }
        if self.img_size < self.patch_size || self.patch_size <= 0 {
            return Err(Error::checkpoint(format!(
                "VGGT: img_size {} and patch_size {} must be positive, img_size >= patch_size",
                self.img_size, self.patch_size
            )));
        }
        self.aggregator().validate()?;
        if self.has_point_head() {
            let config = self.point_head();
            config.validate()?;
            if let Some(&deepest) = config.intermediate_layer_idx.iter().max() {
                if deepest >= self.depth {
                    return Err(Error::checkpoint(format!(
                        "VGGT: the point head reads aggregator layer {deepest}, but depth is {}",
                        self.depth
                    )));
                }
            }
        }
        Ok(())
    }

    fn lists(&self, head: &str) -> bool {
        self.heads.iter().any(|h| h == head)
    }

    /// Whether recon builds the camera head (listed and enabled).
    pub fn has_camera_head(&self) -> bool {
        self.enable_camera && self.lists(CAMERA_HEAD)
    }

    /// Whether recon builds the point head (listed and enabled).
    pub fn has_point_head(&self) -> bool {
        self.enable_point && self.lists(POINT_HEAD)
    }

    pub fn aggregator(&self) -> AggregatorConfig {
        AggregatorConfig {
            img_size: self.img_size,
            patch_size: self.patch_size,
            embed_dim: self.embed_dim,
            depth: self.depth,
            num_heads: self.num_heads,
            mlp_ratio: self.mlp_ratio,
            num_register_tokens: self.num_register_tokens,
            patch_embed_depth: self.patch_embed_depth,
            patch_embed_num_heads: self.patch_embed_num_heads,
        }
    }

    /// `CameraHead(dim_in=2·embed_dim)` with the configured trunk.
    pub fn camera_head(&self) -> CameraHeadConfig {
        CameraHeadConfig {
            dim_in: 2 * self.embed_dim,
            trunk_depth: self.camera_head_trunk_depth,
            num_heads: self.camera_head_num_heads,
            mlp_ratio: CAMERA_HEAD_MLP_RATIO,
        }
    }

    /// `DPTHead(2·embed_dim, output_dim=4, activation="inv_log", conf_activation="expp1")`.
    pub fn point_head(&self) -> DptHeadConfig {
        DptHeadConfig::vggt_point_head(
            2 * self.embed_dim,
            self.patch_size,
            self.point_head_features,
            self.point_head_out_channels.clone(),
        )
    }

    /// Every tensor recon reads (aggregator, and the camera and point heads when built), in
    /// `state_dict()` order, stored fp32. A checkpoint may hold the unused heads' tensors too.
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        self.validate()?;
        let mut specs = self.aggregator().layout("aggregator")?;
        if self.has_camera_head() {
            specs.extend(self.camera_head().layout(CAMERA_HEAD));
        }
        if self.has_point_head() {
            specs.extend(DptHead::layout(POINT_HEAD, &self.point_head()));
        }
        Ok(specs)
    }
}

/// The dtypes VGGT computes in. The reference runs the aggregator under the caller's autocast
/// (bf16 on CUDA: matmuls and attention bf16, norms, RoPE and the residual stream fp32) and the
/// heads with autocast disabled (fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VggtPrecision {
    /// Matmul/attention dtype of the aggregator (DINOv2 patch embed included).
    pub aggregator: Kind,
    /// Matmul/conv dtype of the camera and point heads.
    pub heads: Kind,
}

impl Default for VggtPrecision {
    fn default() -> Self {
        Self::fp32()
    }
}

impl VggtPrecision {
    /// Everything fp32 (the CPU reference).
    pub fn fp32() -> Self {
        Self {
            aggregator: Kind::Float,
            heads: Kind::Float,
        }
    }

    /// ReconViaGen's choice on `device`: bf16 autocast for the aggregator on CUDA, fp32
    /// elsewhere; heads fp32.
    pub fn reference(device: Device) -> Self {
        Self {
            aggregator: if device.is_cuda() {
                Kind::BFloat16
            } else {
                Kind::Float
            },
            heads: Kind::Float,
        }
    }
}

/// What [`Vggt::forward`] returns.
pub struct VggtOutput {
    /// The kept aggregator outputs (the last one, the point head's and any asked for).
    pub aggregated: AggregatorOutput,
    /// The activated pose encoding `[B, S, 9]` after each camera-head iteration (empty without
    /// a camera head); the last one is the prediction.
    pub pose_enc_list: Vec<Tensor>,
    /// Camera-from-world `[B, S, 3, 4]` (OpenCV) from the last pose encoding.
    pub extrinsic: Option<Tensor>,
    /// Pixel intrinsics `[B, S, 3, 3]`.
    pub intrinsic: Option<Tensor>,
    /// The point head's world points `[B, S, H, W, 3]`.
    pub world_points: Option<Tensor>,
    /// Their confidence `[B, S, H, W]`.
    pub world_points_conf: Option<Tensor>,
}

/// The two files of a VGGT Hub folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VggtFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
}

impl VggtFiles {
    /// `config.json` and `model.safetensors` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            config: dir.join(VGGT_CONFIG_FILE),
            weights: dir.join(VGGT_WEIGHTS_FILE),
        }
    }
}

/// VGGT as ReconViaGen runs it.
pub struct Vggt {
    config: VggtConfig,
    aggregator: Aggregator,
    camera_head: Option<CameraHead>,
    point_head: Option<DptHead>,
}

impl Vggt {
    /// Loads a Hub folder's `config.json` + `model.safetensors` on `device`.
    pub fn load(files: &VggtFiles, device: Device, precision: VggtPrecision) -> Result<Self> {
        let config = VggtConfig::from_file(&files.config)?;
        let weights = Weights::open(&files.weights, Kind::Float, device)?;
        Self::new(config, &weights, precision)
            .context(format!("VGGT ({})", files.weights.display()))
    }

    /// Builds the model from `weights` (the whole checkpoint, unprefixed), after checking its
    /// layout: every tensor of [`VggtConfig::checkpoint_layout`] with its shape, nothing else
    /// but the unused heads' tensors.
    pub fn new(config: VggtConfig, weights: &Weights, precision: VggtPrecision) -> Result<Self> {
        config.validate()?;
        let layout = config.checkpoint_layout()?;
        check_layout(weights, &layout)?;
        check_no_unexpected(weights, &layout)?;
        let aggregator = Aggregator::new(
            &weights.pp("aggregator"),
            config.aggregator(),
            precision.aggregator,
        )?;
        let camera_head = if config.has_camera_head() {
            let head = CameraHead::new(
                &weights.pp(CAMERA_HEAD),
                config.camera_head(),
                precision.heads,
            )
            .context(CAMERA_HEAD)?;
            Some(head)
        } else {
            None
        };
        let point_head = if config.has_point_head() {
            let mut head_config = config.point_head();
            head_config.compute_kind = precision.heads;
            Some(DptHead::new(&weights.pp(POINT_HEAD), &head_config).context(POINT_HEAD)?)
        } else {
            None
        };
        Ok(Self {
            config,
            aggregator,
            camera_head,
            point_head,
        })
    }

    pub fn config(&self) -> &VggtConfig {
        &self.config
    }

    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }

    pub fn camera_head(&self) -> Option<&CameraHead> {
        self.camera_head.as_ref()
    }

    pub fn point_head(&self) -> Option<&DptHead> {
        self.point_head.as_ref()
    }

    /// Aggregator → camera head (4 iterations) → cameras, and the point head, on `images`
    /// `[B, S, 3, H, W]` in [0, 1]. Keeps the aggregator outputs the heads read plus `keep`.
    pub fn forward(&self, images: &Tensor, keep: KeepLayers<'_>) -> Result<VggtOutput> {
        let depth = self.config.depth;
        let mut wanted: Vec<usize> = match keep {
            KeepLayers::All => (0..depth).collect(),
            KeepLayers::Only(list) => list.to_vec(),
        };
        if self.camera_head.is_some() {
            wanted.push(depth - 1);
        }
        if let Some(head) = &self.point_head {
            wanted.extend(&head.config().intermediate_layer_idx);
        }
        let wanted: Vec<usize> = wanted
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let aggregated = self.aggregator.forward(images, KeepLayers::Only(&wanted))?;
        let (pose_enc_list, extrinsic, intrinsic) = match &self.camera_head {
            Some(head) => {
                let list = head.forward(aggregated.last()?, CAMERA_HEAD_ITERATIONS)?;
                let size = images.size();
                let last = list
                    .last()
                    .ok_or_else(|| Error::internal("the camera head returned no iteration"))?;
                let (extri, intri) = pose_encoding_to_extri_intri(last, size[3], size[4])?;
                (list, Some(extri), Some(intri))
            }
            None => (Vec::new(), None, None),
        };
        let (world_points, world_points_conf) = match &self.point_head {
            Some(head) => {
                let layers = dense_layers(&aggregated, images.device())?;
                let (points, conf) = head.forward(&layers, images, aggregated.patch_start_idx)?;
                (Some(points), Some(conf))
            }
            None => (None, None),
        };
        Ok(VggtOutput {
            aggregated,
            pose_enc_list,
            extrinsic,
            intrinsic,
            world_points,
            world_points_conf,
        })
    }
}

/// The aggregator outputs indexed by layer, as the DPT head takes them: an empty tensor stands
/// for each layer that was not kept (the head reads only its four).
/// The aggregator outputs as the heads take them: one tensor per layer, empty `[0]` for layers
/// not kept (a head reads only its own layers).
pub fn dense_layers(aggregated: &AggregatorOutput, device: Device) -> Result<Vec<Tensor>> {
    aggregated
        .layers
        .iter()
        .map(|layer| match layer {
            Some(t) => Ok(t.shallow_clone()),
            None => Ok(Tensor::f_empty([0], (Kind::Float, device))?),
        })
        .collect()
}

/// Refuses tensors that are neither in `layout` nor under an unused head.
fn check_no_unexpected(weights: &Weights, layout: &[TensorSpec]) -> Result<()> {
    let expected: BTreeSet<&str> = layout.iter().map(|s| s.name.as_str()).collect();
    let unexpected: Vec<String> = weights
        .unused()
        .into_iter()
        .filter(|name| !expected.contains(name.as_str()))
        .filter(|name| {
            !UNUSED_HEADS
                .iter()
                .any(|head| name.starts_with(&format!("{head}.")))
        })
        .collect();
    if unexpected.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 8;
    let mut text = unexpected[..unexpected.len().min(SHOWN)].join(", ");
    if unexpected.len() > SHOWN {
        text.push_str(&format!(", and {} more", unexpected.len() - SHOWN));
    }
    Err(Error::checkpoint(format!(
        "{}: {} tensor(s) are not part of VGGT (aggregator, camera_head, point_head; \
         depth_head and track_head are ignored): {text}",
        weights.path().display(),
        unexpected.len()
    )))
}
