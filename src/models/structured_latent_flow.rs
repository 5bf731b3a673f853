//! `trellis.models.structured_latent_flow`: the stage-2 flow network ("G_L" in the TRELLIS
//! paper), `SLatFlowModel` and its training twin `ElasticSLatFlowModel` (same weights, same
//! forward). It predicts the rectified-flow velocity of a structured latent — a sparse tensor
//! of voxels `(b, x, y, z)` with `in_channels` features — at timestep `t` (already scaled by
//! 1000), conditioned on image tokens `[B, L, cond_channels]` by cross-attention.
//!
//! ```text
//! h = input_layer(x)                                   SparseLinear, fp32
//! for block in input_blocks: h = block(h, t_emb); skips.push(h)
//!     (SparseResBlock3d; the last of each stage downsamples by 2 first)
//! h = h + APE(h.coords[:, 1:])                         on the downsampled coordinates
//! for block in blocks: h = block(h, t_emb, cond)       ModulatedSparseTransformerCrossBlock
//! for block in out_blocks: h = block(cat(h, skips.pop()), t_emb)
//!     (the first of each stage upsamples by 2 first; cat only with use_skip_connection)
//! v = out_layer(layer_norm(h))                         no affine, eps 1e-5
//! ```
//! The output has the input's coordinates in the input's row order (the upsampling returns to
//! the voxels its paired downsampling started from).
//!
//! Precision (research/trellis.md §3.0): with `use_fp16` on CUDA, `input_blocks`, `blocks`
//! and `out_blocks` run in fp16 as the reference's `convert_to_fp16()` leaves them (norms in
//! fp32, the final layer norm on the fp16 features); `t_embedder`, `input_layer` and
//! `out_layer` are fp32. On CPU everything is fp32.
//!
//! Configurations the reference cannot run are refused: `share_mod` with io blocks (the res
//! blocks would be handed the `6C` shared modulation) and `pe_mode = "rope"`. More than one io
//! stage (`patch_size` 4 and up) is computed with one upsample record per level; the reference
//! keys those records by an integer scale that collapses to 0 below level 1, so it cannot.

/// ReconViaGen's `ModulatedSLATMultiViewCond`, which its fork adds to this module.
pub mod multiview_cond;

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::nn::attention::CrossContext;
use crate::nn::embed::{AbsolutePositionEmbedder, TimestepEmbedder};
use crate::nn::layout::{check_layout, TensorSpec};
use crate::nn::transformer::{mlp_hidden, CrossBlockConfig};
use crate::nn::{LayerNorm32, Linear};
use crate::sparse::transformer::ModulatedSparseTransformerCrossBlock;
use crate::sparse::{SparseConv3d, SparseDownsample, SparseLinear, SparseTensor, SparseUpsample};
use crate::weights::Weights;

use super::sparse_structure_vae::torso_kind;

/// The eps of the reference's final `F.layer_norm` (PyTorch's default).
const FINAL_NORM_EPS: f64 = 1e-5;
/// The eps of the res blocks' `LayerNorm32`s.
const RES_NORM_EPS: f64 = 1e-6;
/// The res blocks' convolution kernel.
const RES_KERNEL: i64 = 3;
/// The resampling factor of one io stage.
const STAGE_FACTOR: i64 = 2;

/// The `args` of a `SLatFlowModel` / `ElasticSLatFlowModel` checkpoint json, with the
/// reference's defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SLatFlowConfig {
    pub resolution: i64,
    pub in_channels: i64,
    pub model_channels: i64,
    pub cond_channels: i64,
    pub out_channels: i64,
    pub num_blocks: usize,
    /// When absent (or 0), `model_channels / num_head_channels`.
    #[serde(default)]
    pub num_heads: Option<i64>,
    #[serde(default = "default_num_head_channels")]
    pub num_head_channels: Option<i64>,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_patch_size")]
    pub patch_size: i64,
    #[serde(default = "default_num_io_res_blocks")]
    pub num_io_res_blocks: usize,
    /// One entry per io stage (each halves the resolution); `None`: no io blocks at all.
    #[serde(default)]
    pub io_block_channels: Option<Vec<i64>>,
    #[serde(default = "default_pe_mode")]
    pub pe_mode: String,
    #[serde(default)]
    pub use_fp16: bool,
    /// Gradient checkpointing: training only, no effect on the forward pass.
    #[serde(default)]
    pub use_checkpoint: bool,
    #[serde(default = "default_true")]
    pub use_skip_connection: bool,
    #[serde(default)]
    pub share_mod: bool,
    #[serde(default)]
    pub qk_rms_norm: bool,
    #[serde(default)]
    pub qk_rms_norm_cross: bool,
}

fn default_num_head_channels() -> Option<i64> {
    Some(64)
}

fn default_mlp_ratio() -> f64 {
    4.0
}

fn default_patch_size() -> i64 {
    2
}

fn default_num_io_res_blocks() -> usize {
    2
}

fn default_pe_mode() -> String {
    "ape".to_string()
}

fn default_true() -> bool {
    true
}

/// The shape of one `SparseResBlock3d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resample {
    None,
    Down,
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ResBlockShape {
    channels: i64,
    out_channels: i64,
    resample: Resample,
}

impl SLatFlowConfig {
    /// `slat_flow_img_dit_L_64l8p2_fp16` of microsoft/TRELLIS-image-large (research/trellis.md
    /// §3.4).
    pub fn trellis_image_large() -> Self {
        Self {
            resolution: 64,
            in_channels: 8,
            model_channels: 1024,
            cond_channels: 1024,
            out_channels: 8,
            num_blocks: 24,
            num_heads: Some(16),
            num_head_channels: default_num_head_channels(),
            mlp_ratio: 4.0,
            patch_size: 2,
            num_io_res_blocks: 2,
            io_block_channels: Some(vec![128]),
            pe_mode: "ape".to_string(),
            use_fp16: true,
            use_checkpoint: false,
            use_skip_connection: true,
            share_mod: false,
            qk_rms_norm: true,
            qk_rms_norm_cross: false,
        }
    }

    /// The number of attention heads: `num_heads or model_channels // num_head_channels`.
    pub fn heads(&self) -> Result<i64> {
        match (self.num_heads, self.num_head_channels) {
            (Some(heads), _) if heads != 0 => Ok(heads),
            (_, Some(head_channels)) if head_channels > 0 => {
                Ok(self.model_channels / head_channels)
            }
            _ => Err(Error::checkpoint(format!(
                "SLatFlowModel: neither num_heads ({:?}) nor num_head_channels ({:?}) gives a \
                 head count",
                self.num_heads, self.num_head_channels
            ))),
        }
    }

    fn stages(&self) -> &[i64] {
        self.io_block_channels.as_deref().unwrap_or(&[])
    }

    /// Channels out of `input_layer` and into `out_layer`.
    fn io_channels(&self) -> i64 {
        self.stages()
            .first()
            .copied()
            .unwrap_or(self.model_channels)
    }

    /// The input blocks in order: per stage, `num_io_res_blocks - 1` blocks at the stage's
    /// width, then one that downsamples and widens to the next stage's (or model) width.
    fn input_block_shapes(&self) -> Vec<ResBlockShape> {
        let stages = self.stages();
        let mut shapes = Vec::new();
        for (i, &chs) in stages.iter().enumerate() {
            let next = stages.get(i + 1).copied().unwrap_or(self.model_channels);
            let plain = ResBlockShape {
                channels: chs,
                out_channels: chs,
                resample: Resample::None,
            };
            shapes.extend(std::iter::repeat_n(
                plain,
                self.num_io_res_blocks.saturating_sub(1),
            ));
            shapes.push(ResBlockShape {
                channels: chs,
                out_channels: next,
                resample: Resample::Down,
            });
        }
        shapes
    }

    /// The output blocks in order: per stage from the deepest, one that upsamples and narrows
    /// to the stage's width, then `num_io_res_blocks - 1` at that width; with skip
    /// connections every input is twice as wide (the skip is concatenated).
    fn output_block_shapes(&self) -> Vec<ResBlockShape> {
        let stages = self.stages();
        let widen = if self.use_skip_connection { 2 } else { 1 };
        let mut shapes = Vec::new();
        for (i, &chs) in stages.iter().enumerate().rev() {
            let prev = stages.get(i + 1).copied().unwrap_or(self.model_channels);
            shapes.push(ResBlockShape {
                channels: prev * widen,
                out_channels: chs,
                resample: Resample::Up,
            });
            let plain = ResBlockShape {
                channels: chs * widen,
                out_channels: chs,
                resample: Resample::None,
            };
            shapes.extend(std::iter::repeat_n(
                plain,
                self.num_io_res_blocks.saturating_sub(1),
            ));
        }
        shapes
    }

    fn block_config(&self) -> Result<CrossBlockConfig> {
        Ok(CrossBlockConfig {
            channels: self.model_channels,
            ctx_channels: self.cond_channels,
            num_heads: self.heads()?,
            mlp_ratio: self.mlp_ratio,
            share_mod: self.share_mod,
            qk_rms_norm: self.qk_rms_norm,
            qk_rms_norm_cross: self.qk_rms_norm_cross,
            qkv_bias: true,
        })
    }

    fn validate(&self) -> Result<()> {
        let fail = |what: String| Err(Error::checkpoint(format!("SLatFlowModel: {what}")));
        let sizes = [
            ("resolution", self.resolution),
            ("in_channels", self.in_channels),
            ("model_channels", self.model_channels),
            ("cond_channels", self.cond_channels),
            ("out_channels", self.out_channels),
            ("patch_size", self.patch_size),
        ];
        if let Some((name, value)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return fail(format!("{name} must be positive, got {value}"));
        }
        if let Some(stages) = &self.io_block_channels {
            let p = self.patch_size;
            if p.count_ones() != 1 || i64::from(p.trailing_zeros()) != stages.len() as i64 {
                return fail(format!(
                    "patch_size {p} must be 2^(number of io stages) = 2^{}",
                    stages.len()
                ));
            }
            if let Some(bad) = stages.iter().find(|&&c| c <= 0) {
                return fail(format!("io_block_channels {stages:?} has a width {bad}"));
            }
            if self.num_io_res_blocks == 0 {
                return fail("num_io_res_blocks must be at least 1".to_string());
            }
            if self.share_mod && !stages.is_empty() {
                return Err(Error::unsupported(
                    "SLatFlowModel: share_mod with io blocks is not supported (the reference \
                     hands the res blocks the 6·model_channels shared modulation, which they \
                     cannot take)",
                ));
            }
        }
        let heads = self.heads()?;
        if heads <= 0 || self.model_channels % heads != 0 {
            return fail(format!(
                "{} model channels cannot be split into {heads} heads",
                self.model_channels
            ));
        }
        if mlp_hidden(self.model_channels, self.mlp_ratio) <= 0 {
            return fail(format!(
                "mlp_ratio {} gives no hidden units",
                self.mlp_ratio
            ));
        }
        match self.pe_mode.as_str() {
            "ape" => Ok(()),
            "rope" => Err(Error::unsupported(
                "SLatFlowModel: pe_mode \"rope\" is not supported (only \"ape\" is used by the \
                 published models)",
            )),
            other => fail(format!("pe_mode '{other}' is not one of \"ape\", \"rope\"")),
        }
    }

    /// Every tensor the network reads from its checkpoint, in the reference's `state_dict()`
    /// order, with the dtype the reference stores it in (`use_fp16`: the convs and Linears of
    /// `input_blocks`, `blocks`, `out_blocks` F16, everything else F32).
    /// [`SLatFlowModel::new`] checks a checkpoint against this list before loading.
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        self.validate()?;
        let c = self.model_channels;
        let f32 = Kind::Float;
        let torso = if self.use_fp16 {
            Kind::Half
        } else {
            Kind::Float
        };
        let mut specs = TimestepEmbedder::layout(
            "t_embedder",
            c,
            TimestepEmbedder::DEFAULT_FREQUENCY_SIZE,
            f32,
        );
        if self.share_mod {
            specs.extend(Linear::layout("adaLN_modulation.1", true, c, 6 * c, f32));
        }
        specs.extend(Linear::layout(
            "input_layer",
            true,
            self.in_channels,
            self.io_channels(),
            f32,
        ));
        for (i, shape) in self.input_block_shapes().iter().enumerate() {
            specs.extend(SparseResBlock3d::layout(
                &format!("input_blocks.{i}"),
                shape,
                c,
                torso,
            ));
        }
        let block = self.block_config()?;
        for i in 0..self.num_blocks {
            specs.extend(ModulatedSparseTransformerCrossBlock::layout(
                &format!("blocks.{i}"),
                &block,
                torso,
            ));
        }
        for (i, shape) in self.output_block_shapes().iter().enumerate() {
            specs.extend(SparseResBlock3d::layout(
                &format!("out_blocks.{i}"),
                shape,
                c,
                torso,
            ));
        }
        specs.extend(Linear::layout(
            "out_layer",
            true,
            self.io_channels(),
            self.out_channels,
            f32,
        ));
        Ok(specs)
    }
}

/// `SparseResBlock3d(C, emb, C_out, downsample | upsample)`:
/// ```text
/// x = resample(x)                                   before everything; feeds the skip too
/// h = conv1(silu(norm1(x)))                         norm1 affine
/// h = silu(norm2(h) · (1 + scale) + shift)          scale, shift = emb_layers(emb).chunk(2)
/// out = conv2(h) + skip_connection(x)               SparseLinear when C != C_out
/// ```
struct SparseResBlock3d {
    norm1: LayerNorm32,
    norm2: LayerNorm32,
    conv1: SparseConv3d,
    conv2: SparseConv3d,
    emb_layers: Linear,
    skip_connection: Option<SparseLinear>,
    resample: Resample,
}

impl SparseResBlock3d {
    fn new(
        torso: &Weights,
        norms: &Weights,
        shape: &ResBlockShape,
        emb_channels: i64,
    ) -> Result<Self> {
        let (cin, cout) = (shape.channels, shape.out_channels);
        let skip_connection = if cin != cout {
            Some(SparseLinear::new(&torso.pp("skip_connection"), cin, cout)?)
        } else {
            None
        };
        Ok(Self {
            norm1: LayerNorm32::new(&norms.pp("norm1"), cin, RES_NORM_EPS)?,
            norm2: LayerNorm32::without_affine(cout, RES_NORM_EPS),
            conv1: SparseConv3d::new(&torso.pp("conv1"), cin, cout, RES_KERNEL)?,
            conv2: SparseConv3d::new(&torso.pp("conv2"), cout, cout, RES_KERNEL)?,
            emb_layers: Linear::new(&torso.pp("emb_layers").pp(1), emb_channels, 2 * cout)?,
            skip_connection,
            resample: shape.resample,
        })
    }

    fn layout(
        prefix: &str,
        shape: &ResBlockShape,
        emb_channels: i64,
        torso: Kind,
    ) -> Vec<TensorSpec> {
        let (cin, cout) = (shape.channels, shape.out_channels);
        let k = RES_KERNEL;
        let mut specs = vec![
            TensorSpec::new(format!("{prefix}.norm1.weight"), &[cin], Kind::Float),
            TensorSpec::new(format!("{prefix}.norm1.bias"), &[cin], Kind::Float),
        ];
        for (conv, inputs) in [("conv1", cin), ("conv2", cout)] {
            specs.push(TensorSpec::new(
                format!("{prefix}.{conv}.conv.weight"),
                &[cout, k, k, k, inputs],
                torso,
            ));
            specs.push(TensorSpec::new(
                format!("{prefix}.{conv}.conv.bias"),
                &[cout],
                torso,
            ));
        }
        specs.extend(Linear::layout(
            &format!("{prefix}.emb_layers.1"),
            true,
            emb_channels,
            2 * cout,
            torso,
        ));
        if cin != cout {
            specs.extend(Linear::layout(
                &format!("{prefix}.skip_connection"),
                true,
                cin,
                cout,
                torso,
            ));
        }
        specs
    }

    /// `x` at the block's input level, `emb` the timestep embedding `[B, emb_channels]` in the
    /// torso's dtype.
    fn forward(&self, x: &SparseTensor, emb: &Tensor) -> Result<SparseTensor> {
        let emb = self
            .emb_layers
            .forward(&emb.f_silu()?)?
            .f_to_kind(x.kind())?;
        let [scale, shift]: [Tensor; 2] = emb
            .f_chunk(2, 1)?
            .try_into()
            .map_err(|_| Error::internal("emb_layers output did not split in two"))?;
        let x = match self.resample {
            Resample::None => x.shallow_clone(),
            Resample::Down => SparseDownsample::new(STAGE_FACTOR)?.forward(x)?,
            Resample::Up => SparseUpsample::new(STAGE_FACTOR)?.forward(x)?,
        };
        let h = x.replace(self.norm1.forward(x.feats())?.f_silu()?)?;
        let h = self.conv1.forward(&h)?;
        let h = h
            .replace(self.norm2.forward(h.feats())?)?
            .mul_per_batch(&scale.f_add_scalar(1.0)?)?
            .add_per_batch(&shift)?;
        let h = self.conv2.forward(&h.replace(h.feats().f_silu()?)?)?;
        let skip = match &self.skip_connection {
            Some(linear) => linear.forward(&x)?,
            None => x,
        };
        h.add(&skip)
    }
}

/// The structured-latent flow model (`SLatFlowModel`, `ElasticSLatFlowModel`).
pub struct SLatFlowModel {
    config: SLatFlowConfig,
    t_embedder: TimestepEmbedder,
    /// The model-level `adaLN_modulation.1` when `share_mod`.
    shared_modulation: Option<Linear>,
    pos_embedder: Option<AbsolutePositionEmbedder>,
    input_layer: SparseLinear,
    input_blocks: Vec<SparseResBlock3d>,
    blocks: Vec<ModulatedSparseTransformerCrossBlock>,
    out_blocks: Vec<SparseResBlock3d>,
    out_layer: SparseLinear,
    /// fp16 on CUDA when the checkpoint says `use_fp16`, as the reference runs it; fp32 otherwise.
    torso_kind: Kind,
}

impl SLatFlowModel {
    /// Builds the model from a checkpoint view whose default kind is fp32. The checkpoint is
    /// checked against [`SLatFlowConfig::checkpoint_layout`] first.
    pub fn new(config: SLatFlowConfig, weights: &Weights) -> Result<Self> {
        let layout = config.checkpoint_layout()?;
        check_layout(weights, &layout)?;
        let c = config.model_channels;
        let torso_kind = torso_kind(config.use_fp16, weights.device());
        let fp32 = weights.with_kind(Kind::Float);
        let torso = weights.with_kind(torso_kind);

        let t_embedder = TimestepEmbedder::new(
            &fp32.pp("t_embedder"),
            c,
            TimestepEmbedder::DEFAULT_FREQUENCY_SIZE,
        )
        .context("t_embedder")?;
        let shared_modulation = if config.share_mod {
            Some(Linear::new(&fp32.pp("adaLN_modulation").pp(1), c, 6 * c)?)
        } else {
            None
        };
        let pos_embedder = Some(AbsolutePositionEmbedder::new(c, 3)?);
        let input_layer = SparseLinear::new(
            &fp32.pp("input_layer"),
            config.in_channels,
            config.io_channels(),
        )?;
        let res_blocks = |name: &str, shapes: Vec<ResBlockShape>| {
            shapes
                .iter()
                .enumerate()
                .map(|(i, shape)| {
                    SparseResBlock3d::new(&torso.pp(name).pp(i), &fp32.pp(name).pp(i), shape, c)
                        .context(format!("{name}.{i}"))
                })
                .collect::<Result<Vec<_>>>()
        };
        let input_blocks = res_blocks("input_blocks", config.input_block_shapes())?;
        let block_config = config.block_config()?;
        let blocks = (0..config.num_blocks)
            .map(|i| {
                ModulatedSparseTransformerCrossBlock::new(&torso.pp("blocks").pp(i), block_config)
                    .context(format!("blocks.{i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let out_blocks = res_blocks("out_blocks", config.output_block_shapes())?;
        let out_layer = SparseLinear::new(
            &fp32.pp("out_layer"),
            config.io_channels(),
            config.out_channels,
        )?;
        Ok(Self {
            config,
            t_embedder,
            shared_modulation,
            pos_embedder,
            input_layer,
            input_blocks,
            blocks,
            out_blocks,
            out_layer,
            torso_kind,
        })
    }

    pub fn config(&self) -> &SLatFlowConfig {
        &self.config
    }

    /// The velocity of the latent `x` (features `[N, in_channels]`) at timesteps `t` `[B]`
    /// (the sampler's `t · 1000`), given the condition tokens `cond` `[B, L, cond_channels]`:
    /// the same voxels with `out_channels` features in `x`'s dtype.
    pub fn forward(&self, x: &SparseTensor, t: &Tensor, cond: &Tensor) -> Result<SparseTensor> {
        self.forward_views(x, t, std::slice::from_ref(cond))
    }

    /// [`SLatFlowModel::forward`] with ReconViaGen's list condition: every block adds each
    /// view's cross-attention divided by the number of views. One view is `forward` exactly.
    pub fn forward_views(
        &self,
        x: &SparseTensor,
        t: &Tensor,
        views: &[Tensor],
    ) -> Result<SparseTensor> {
        self.check_inputs(x, t)?;
        self.check_views(x, views)?;
        self.velocity(x, t, CrossContext::Tokens(views))
    }

    /// [`SLatFlowModel::forward_views`] under all-zero condition tokens in `views` views
    /// (classifier-free guidance's negative condition; 1 for a single condition; any length):
    /// every cross-attention adds its constant output instead of attending.
    pub fn forward_zero_condition(
        &self,
        x: &SparseTensor,
        t: &Tensor,
        views: usize,
    ) -> Result<SparseTensor> {
        self.check_inputs(x, t)?;
        if views == 0 {
            return Err(Error::invalid_argument(
                "SLatFlowModel: the condition list is empty",
            ));
        }
        self.velocity(x, t, CrossContext::Zeros { views })
    }

    /// [`SLatFlowModel::forward_views`] and [`SLatFlowModel::forward_zero_condition`] (in as
    /// many views) at once, for classifier-free guidance: the input layer, the input blocks and
    /// the position code do not depend on the condition and run once; the transformer blocks
    /// run both passes as one batch; the output blocks run per pass. Each velocity equals its
    /// separate forward's up to the rounding of batched products.
    pub fn forward_views_with_zero_condition(
        &self,
        x: &SparseTensor,
        t: &Tensor,
        views: &[Tensor],
    ) -> Result<(SparseTensor, SparseTensor)> {
        self.check_inputs(x, t)?;
        self.check_views(x, views)?;
        let (h, t_emb, skips) = self.encode(x, t)?;
        let views = self.torso_views(views)?;
        let mut pair = Tensor::f_cat(&[h.feats(), h.feats()], 0)?;
        for (i, block) in self.blocks.iter().enumerate() {
            pair = block
                .forward_guided_pair(&pair, &h, &t_emb, &views)
                .context(format!("blocks.{i}"))?;
        }
        let n = h.num_rows();
        let conditioned = h.replace(pair.f_narrow(0, 0, n)?)?;
        let unconditioned = h.replace(pair.f_narrow(0, n, n)?)?;
        Ok((
            self.decode(conditioned, &skips, &t_emb, x.kind())?,
            self.decode(unconditioned, &skips, &t_emb, x.kind())?,
        ))
    }

    fn velocity(
        &self,
        x: &SparseTensor,
        t: &Tensor,
        context: CrossContext<'_, [Tensor]>,
    ) -> Result<SparseTensor> {
        let (mut h, t_emb, skips) = self.encode(x, t)?;
        let views = match context {
            CrossContext::Tokens(views) => Some(self.torso_views(views)?),
            CrossContext::Zeros { .. } => None,
        };
        let context = match (&views, context) {
            (Some(views), _) => CrossContext::Tokens(views.as_slice()),
            (None, zeros) => zeros,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            h = block
                .forward(&h, &t_emb, context)
                .context(format!("blocks.{i}"))?;
        }
        self.decode(h, &skips, &t_emb, x.kind())
    }

    /// What precedes the transformer blocks, which no condition enters: the input layer, the
    /// input blocks (their outputs are the skips) and the position code. Returns the blocks'
    /// input, the timestep embedding (the blocks' modulation) in the torso's dtype and the
    /// skips.
    fn encode(&self, x: &SparseTensor, t: &Tensor) -> Result<(SparseTensor, Tensor, Vec<Tensor>)> {
        let mut h = self.input_layer.forward(x)?.to_kind(self.torso_kind)?;
        let mut t_emb = self.t_embedder.forward(t)?;
        if let Some(shared) = &self.shared_modulation {
            t_emb = shared.forward(&t_emb.f_silu()?)?;
        }
        let t_emb = t_emb.f_to_kind(self.torso_kind)?;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        for (i, block) in self.input_blocks.iter().enumerate() {
            h = block
                .forward(&h, &t_emb)
                .context(format!("input_blocks.{i}"))?;
            skips.push(h.feats().shallow_clone());
        }
        if let Some(ape) = &self.pos_embedder {
            // The code depends on the coordinates alone: cached on their level, it is built
            // once per sampling run (its frequencies come from host memory, a copy that would
            // also keep the forward out of a CUDA graph).
            let kind = self.torso_kind;
            let key = format!("absolute_position_code_{}_{kind:?}", ape.channels());
            let code = h.cached(&key, || {
                Ok(ape
                    .forward(&h.coords().f_narrow(1, 1, 3)?)?
                    .f_to_kind(kind)?)
            })?;
            h = h.replace(h.feats().f_add(&code)?)?;
        }
        Ok((h, t_emb, skips))
    }

    /// The condition tokens in the torso's dtype.
    fn torso_views(&self, views: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(views
            .iter()
            .map(|v| v.f_to_kind(self.torso_kind))
            .collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// The output blocks (each taking its input block's skip, last first), the final norm and
    /// the output layer: the velocity in `kind`.
    fn decode(
        &self,
        mut h: SparseTensor,
        skips: &[Tensor],
        t_emb: &Tensor,
        kind: Kind,
    ) -> Result<SparseTensor> {
        let mut skips = skips.iter().rev();
        for (i, block) in self.out_blocks.iter().enumerate() {
            if self.config.use_skip_connection {
                let skip = skips
                    .next()
                    .ok_or_else(|| Error::internal("SLatFlowModel: more out blocks than skips"))?;
                h = h.replace(Tensor::f_cat(&[h.feats(), skip], 1)?)?;
            }
            h = block
                .forward(&h, t_emb)
                .context(format!("out_blocks.{i}"))?;
        }

        let normed = h.feats().f_layer_norm(
            [self.config.io_channels()],
            None::<Tensor>,
            None::<Tensor>,
            FINAL_NORM_EPS,
            true,
        )?;
        let h = h.replace(normed.f_to_kind(kind)?)?;
        self.out_layer.forward(&h)?.to_kind(kind)
    }

    /// InvalidArgument errors naming the offending input.
    fn check_inputs(&self, x: &SparseTensor, t: &Tensor) -> Result<()> {
        let cfg = &self.config;
        if x.channels() != cfg.in_channels {
            return Err(Error::invalid_argument(format!(
                "SLatFlowModel: x features must be [N, {}], got {:?}",
                cfg.in_channels,
                x.feats().size()
            )));
        }
        let batch = x.batch_size() as i64;
        if t.size() != [batch] {
            return Err(Error::invalid_argument(format!(
                "SLatFlowModel: t must be [{batch}] (one timestep per batch item), got {:?}",
                t.size()
            )));
        }
        Ok(())
    }

    /// InvalidArgument errors naming the view of `views` that does not fit `x`.
    fn check_views(&self, x: &SparseTensor, views: &[Tensor]) -> Result<()> {
        let cfg = &self.config;
        let batch = x.batch_size() as i64;
        if views.is_empty() {
            return Err(Error::invalid_argument(
                "SLatFlowModel: the condition list is empty",
            ));
        }
        for (k, view) in views.iter().enumerate() {
            match view.size()[..] {
                [b, _, c] if b == batch && c == cfg.cond_channels => {}
                ref found => {
                    return Err(Error::invalid_argument(format!(
                        "SLatFlowModel: cond{} must be [{batch}, L, {}], got {found:?}",
                        if views.len() > 1 {
                            format!(" view {k}")
                        } else {
                            String::new()
                        },
                        cfg.cond_channels
                    )))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tch::Device;

    use super::*;
    use crate::ErrorKind;

    /// A checkpoint holding `specs` with random values in their stored dtypes.
    fn random_checkpoint(dir: &Path, specs: &[TensorSpec]) -> Weights {
        crate::nn::layout::random_checkpoint(&dir.join("slat_flow.safetensors"), specs)
    }

    fn small() -> SLatFlowConfig {
        SLatFlowConfig {
            resolution: 8,
            in_channels: 3,
            model_channels: 24,
            cond_channels: 20,
            out_channels: 5,
            num_blocks: 2,
            num_heads: Some(3),
            io_block_channels: Some(vec![8]),
            ..SLatFlowConfig::trellis_image_large()
        }
    }

    /// Layout-changing variants: the published shape, two io stages (patch 4) with three res
    /// blocks each and no skips, and no io blocks at all with a shared modulation.
    fn variants() -> Vec<SLatFlowConfig> {
        vec![
            small(),
            SLatFlowConfig {
                patch_size: 4,
                io_block_channels: Some(vec![6, 10]),
                num_io_res_blocks: 3,
                use_skip_connection: false,
                use_fp16: false,
                qk_rms_norm: false,
                qk_rms_norm_cross: true,
                ..small()
            },
            SLatFlowConfig {
                io_block_channels: None,
                share_mod: true,
                num_heads: None,
                num_head_channels: Some(8),
                ..small()
            },
        ]
    }

    /// Seeded random features on `coords` and two timesteps, one per batch item.
    fn random_latent(config: &SLatFlowConfig, coords: &Tensor) -> (SparseTensor, Tensor) {
        let feats = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
            Tensor::randn(
                [coords.size()[0], config.in_channels],
                (Kind::Float, Device::Cpu),
            )
        });
        let x = SparseTensor::new(feats, coords.shallow_clone()).unwrap();
        (x, Tensor::from_slice(&[500.0f32, 3.0]))
    }

    /// Distinct voxels of an 8³ grid: 30 for item 0, 17 for item 1, sorted.
    fn voxels() -> Tensor {
        let mut rows = Vec::new();
        for (b, n, step) in [(0i32, 30i32, 7i32), (1, 17, 11)] {
            for i in 0..n {
                let cell = (i * step * 3 + b) % 512;
                rows.extend([b, cell / 64, (cell / 8) % 8, cell % 8]);
            }
        }
        let coords = Tensor::from_slice(&rows).reshape([-1, 4]);
        let (b0, b1) = (coords.narrow(0, 0, 30), coords.narrow(0, 30, 17));
        let sort = |t: &Tensor| {
            let code = t.select(1, 1) * 64 + t.select(1, 2) * 8 + t.select(1, 3);
            let (_, order) = code.sort(0, false);
            t.index_select(0, &order)
        };
        Tensor::cat(&[sort(&b0), sort(&b1)], 0)
    }

    #[test]
    fn published_json_parses_to_the_preset() {
        let json = r#"{"resolution": 64, "in_channels": 8, "out_channels": 8,
            "model_channels": 1024, "cond_channels": 1024, "num_blocks": 24, "num_heads": 16,
            "mlp_ratio": 4, "patch_size": 2, "num_io_res_blocks": 2, "io_block_channels": [128],
            "pe_mode": "ape", "qk_rms_norm": true, "use_fp16": true}"#;
        let parsed: SLatFlowConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, SLatFlowConfig::trellis_image_large());
        let unknown = json.replace("\"num_blocks\"", "\"num_layers\"");
        assert!(serde_json::from_str::<SLatFlowConfig>(&unknown).is_err());
    }

    /// The loader reads exactly the tensors the layout lists, and the output keeps the input's
    /// voxels in order.
    #[test]
    fn loader_reads_exactly_the_layout() {
        let coords = voxels();
        for config in variants() {
            let dir = tempfile::tempdir().unwrap();
            let specs = config.checkpoint_layout().unwrap();
            let weights = random_checkpoint(dir.path(), &specs);
            let model = SLatFlowModel::new(config.clone(), &weights)
                .unwrap_or_else(|e| panic!("{config:?}: {e}"));
            assert_eq!(weights.unused(), Vec::<String>::new(), "{config:?}");

            let (x, t) = random_latent(&config, &coords);
            let cond = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
                Tensor::randn([2, 7, config.cond_channels], (Kind::Float, Device::Cpu))
            });
            let v = model.forward(&x, &t, &cond).unwrap();
            assert_eq!(v.feats().size(), [47, config.out_channels], "{config:?}");
            assert!(v.coords().equal(&coords));
            let views = [cond.shallow_clone(), cond.shallow_clone()];
            let twice = model.forward_views(&x, &t, &views).unwrap();
            assert!(twice.feats().allclose(v.feats(), 1e-5, 1e-5, false));
        }
    }

    /// All-zero condition tokens make every key the same, so the attention is uniform and its
    /// output a constant: the zero-condition forward, which adds that constant, equals a
    /// forward that attends to zeros (with or without q/k norms in the cross-attention, one
    /// or several views of any length).
    #[test]
    fn the_zero_condition_forward_equals_attending_to_zeros() {
        for_each_variant(|config, model, x, t| {
            let zeros = |tokens: i64| {
                Tensor::zeros(
                    [2, tokens, config.cond_channels],
                    (Kind::Float, Device::Cpu),
                )
            };
            for views in [vec![zeros(7)], vec![zeros(5), zeros(9), zeros(1)]] {
                let skipped = model.forward_zero_condition(x, t, views.len()).unwrap();
                let attended = model.forward_views(x, t, &views).unwrap();
                let (a, b) = (attended.feats(), skipped.feats());
                let rel = f64::try_from((a - b).norm() / a.norm()).unwrap();
                assert!(
                    rel < 1e-5,
                    "{config:?}, {} views: rel L2 {rel}",
                    views.len()
                );
            }
        });
    }

    /// Runs `check` on a model of every layout variant with random weights, over the test
    /// voxels with a random latent and two timesteps.
    fn for_each_variant(check: impl Fn(&SLatFlowConfig, &SLatFlowModel, &SparseTensor, &Tensor)) {
        let coords = voxels();
        for config in variants() {
            let dir = tempfile::tempdir().unwrap();
            let weights = random_checkpoint(dir.path(), &config.checkpoint_layout().unwrap());
            let model = SLatFlowModel::new(config.clone(), &weights).unwrap();
            let (x, t) = random_latent(&config, &coords);
            check(&config, &model, &x, &t);
        }
    }

    /// The guided pair gives each pass's separate forward: batch of two samples with different
    /// voxel counts and timesteps, one or several views (the views' shares are added per pass,
    /// in order), every layout variant.
    #[test]
    fn the_guided_pair_equals_the_two_forwards() {
        for_each_variant(|config, model, x, t| {
            let tokens = |len: i64| {
                crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
                    Tensor::randn([2, len, config.cond_channels], (Kind::Float, Device::Cpu))
                })
            };
            for views in [vec![tokens(7)], vec![tokens(5), tokens(9), tokens(1)]] {
                let (pos, neg) = model
                    .forward_views_with_zero_condition(x, t, &views)
                    .unwrap();
                let expected_pos = model.forward_views(x, t, &views).unwrap();
                let expected_neg = model.forward_zero_condition(x, t, views.len()).unwrap();
                for (name, got, expected) in [
                    ("conditional", &pos, &expected_pos),
                    ("zero condition", &neg, &expected_neg),
                ] {
                    assert!(got.coords().equal(expected.coords()), "{name}: coords");
                    let (a, b) = (expected.feats(), got.feats());
                    let rel = f64::try_from((a - b).norm() / a.norm()).unwrap();
                    assert!(
                        rel < 1e-5,
                        "{config:?}, {} views, {name}: rel L2 {rel}",
                        views.len()
                    );
                }
            }
        });
    }

    #[test]
    fn inputs_are_checked() {
        let config = small();
        let dir = tempfile::tempdir().unwrap();
        let weights = random_checkpoint(dir.path(), &config.checkpoint_layout().unwrap());
        let model = SLatFlowModel::new(config, &weights).unwrap();
        let opts = (Kind::Float, Device::Cpu);
        let coords = voxels();
        let x = SparseTensor::new(Tensor::zeros([47, 3], opts), coords.shallow_clone()).unwrap();
        let t = Tensor::zeros([2], opts);
        let cond = Tensor::zeros([2, 4, 20], opts);
        let wide = SparseTensor::new(Tensor::zeros([47, 4], opts), coords).unwrap();
        let err = model.forward(&wide, &t, &cond).unwrap_err();
        assert!(err.message().contains("x features must be [N, 3]"), "{err}");
        let err = model
            .forward(&x, &Tensor::zeros([1], opts), &cond)
            .unwrap_err();
        assert!(err.message().contains("t must be [2]"), "{err}");
        let err = model
            .forward(&x, &t, &Tensor::zeros([2, 4, 24], opts))
            .unwrap_err();
        assert!(err.message().contains("cond must be [2, L, 20]"), "{err}");
        let err = model
            .forward_views(
                &x,
                &t,
                &[cond.shallow_clone(), Tensor::zeros([1, 4, 20], opts)],
            )
            .unwrap_err();
        assert!(err.message().contains("cond view 1"), "{err}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(model.forward_views(&x, &t, &[]).is_err());
        let err = model.forward_zero_condition(&x, &t, 0).unwrap_err();
        assert!(err.message().contains("condition list is empty"), "{err}");
    }

    #[test]
    fn invalid_configs_are_refused() {
        let share_mod = SLatFlowConfig {
            share_mod: true,
            ..small()
        };
        let rope = SLatFlowConfig {
            pe_mode: "rope".to_string(),
            ..small()
        };
        for config in [share_mod, rope] {
            let err = config.checkpoint_layout().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        }
        let patch = SLatFlowConfig {
            patch_size: 4,
            ..small()
        };
        let err = patch.checkpoint_layout().unwrap_err();
        assert!(err.message().contains("patch_size 4"), "{err}");
        let heads = SLatFlowConfig {
            num_heads: Some(5),
            ..small()
        };
        assert!(heads
            .checkpoint_layout()
            .unwrap_err()
            .message()
            .contains("5 heads"));
    }
}
