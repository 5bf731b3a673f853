//! `trellis.models.structured_latent_vae.base`: `SparseTransformerBase`, the torso every SLat
//! decoder shares — a sparse transformer without output layers:
//!
//! ```text
//! h = input_layer(x)                       SparseLinear(in_channels → model_channels), fp32
//! h = h + APE(x.coords[:, 1:])             sin/cos code of the integer voxel coordinates
//! h = h.to(torso dtype)                    fp16 with use_fp16 on CUDA, fp32 otherwise
//! for i, block in blocks: h = block(h)     SparseTransformerBlock, attention per the schedule
//! ```
//!
//! With `attn_mode = "swin"` block i attends within windows of `window_size` voxels per axis,
//! shifted by `(window_size / 2) · (i % 2)` on every axis: even blocks unshifted, odd blocks
//! shifted by half a window (research/trellis.md §3.5). The window grid is sized over the whole
//! batch ([`WindowPartition`](crate::sparse::attention::WindowPartition)); partitions are cached
//! on the voxels, so the 12 blocks build two.

use tch::Kind;

use crate::error::{Error, Result, ResultExt};
use crate::nn::embed::AbsolutePositionEmbedder;
use crate::nn::layout::TensorSpec;
use crate::nn::Linear;
use crate::sparse::attention::SparseAttentionMode;
use crate::sparse::transformer::{SparseTransformerBlock, SparseTransformerBlockConfig};
use crate::sparse::{SparseLinear, SparseTensor};
use crate::weights::Weights;

use super::super::sparse_structure_vae::torso_kind;

/// Which voxels each block's self-attention spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionSchedule {
    /// Every block attends over each whole batch element (`attn_mode = "full"`).
    Full,
    /// Swin windows of `window_size`³ voxels; odd blocks shift them by `window_size / 2`.
    Swin { window_size: i64 },
}

impl AttentionSchedule {
    /// The attention of block `index`, as the reference's `block_attn_config` yields it.
    pub fn block_mode(&self, index: usize) -> SparseAttentionMode {
        match *self {
            Self::Full => SparseAttentionMode::Full,
            Self::Swin { window_size } => {
                let shift = window_size / 2 * (index % 2) as i64;
                SparseAttentionMode::Windowed {
                    window_size: [window_size; 3],
                    shift_window: [shift; 3],
                }
            }
        }
    }
}

/// The shape of a `SparseTransformerBase` (already validated by
/// [`SLatDecoderConfig::base_config`](super::SLatDecoderConfig::base_config)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseTransformerBaseConfig {
    pub in_channels: i64,
    pub model_channels: i64,
    pub num_blocks: usize,
    pub num_heads: i64,
    pub mlp_ratio: f64,
    pub attention: AttentionSchedule,
    pub use_fp16: bool,
    pub qk_rms_norm: bool,
}

impl SparseTransformerBaseConfig {
    /// The constructor arguments of block `index` (no affine norms, q/k/v bias, as the base
    /// builds them).
    pub fn block_config(&self, index: usize) -> SparseTransformerBlockConfig {
        SparseTransformerBlockConfig {
            channels: self.model_channels,
            num_heads: self.num_heads,
            mlp_ratio: self.mlp_ratio,
            mode: self.attention.block_mode(index),
            qkv_bias: true,
            qk_rms_norm: self.qk_rms_norm,
            ln_affine: false,
        }
    }

    /// The stored dtype of the torso's Linears: the reference's `convert_to_fp16()` makes the
    /// blocks F16 when `use_fp16`.
    pub fn stored_torso_kind(&self) -> Kind {
        if self.use_fp16 {
            Kind::Half
        } else {
            Kind::Float
        }
    }

    /// The tensors the torso reads, in `state_dict()` order: `input_layer` (F32), then every
    /// block (Linears F16 with `use_fp16`).
    pub fn layout(&self) -> Vec<TensorSpec> {
        let mut specs = Linear::layout(
            "input_layer",
            true,
            self.in_channels,
            self.model_channels,
            Kind::Float,
        );
        for i in 0..self.num_blocks {
            specs.extend(SparseTransformerBlock::layout(
                &format!("blocks.{i}"),
                &self.block_config(i),
                self.stored_torso_kind(),
            ));
        }
        specs
    }
}

/// The decoders' shared torso (see the module docs).
pub struct SparseTransformerBase {
    config: SparseTransformerBaseConfig,
    input_layer: SparseLinear,
    pos_embedder: AbsolutePositionEmbedder,
    blocks: Vec<SparseTransformerBlock>,
    torso_kind: Kind,
}

impl SparseTransformerBase {
    /// Loads `input_layer` (fp32) and the blocks (fp16 on CUDA with `use_fp16`, else fp32)
    /// from the decoder's checkpoint view. The caller has checked the layout.
    pub fn new(config: SparseTransformerBaseConfig, weights: &Weights) -> Result<Self> {
        let torso_kind = torso_kind(config.use_fp16, weights.device());
        let input_layer = SparseLinear::new(
            &weights.with_kind(Kind::Float).pp("input_layer"),
            config.in_channels,
            config.model_channels,
        )
        .context("input_layer")?;
        let torso = weights.with_kind(torso_kind).pp("blocks");
        let blocks = (0..config.num_blocks)
            .map(|i| {
                SparseTransformerBlock::new(&torso.pp(i), config.block_config(i))
                    .context(format!("blocks.{i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            input_layer,
            pos_embedder: AbsolutePositionEmbedder::new(config.model_channels, 3)?,
            blocks,
            torso_kind,
        })
    }

    pub fn config(&self) -> &SparseTransformerBaseConfig {
        &self.config
    }

    /// The dtype the blocks compute in (and [`SparseTransformerBase::forward`] returns).
    pub fn torso_kind(&self) -> Kind {
        self.torso_kind
    }

    /// The torso on latent voxels `x` (`[N, in_channels]` features): the same voxels, same row
    /// order, with `model_channels` features in the torso dtype.
    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        match x.feats().size()[..] {
            [_, c] if c == self.config.in_channels => {}
            ref found => {
                return Err(Error::invalid_argument(format!(
                    "SLat decoder: the latent features must be [N, {}], got {found:?}",
                    self.config.in_channels
                )))
            }
        }
        let h = self.input_layer.forward(x)?;
        let code = self.pos_embedder.forward(&x.coords().f_narrow(1, 1, 3)?)?;
        let mut h = h.replace(h.feats().f_add(&code.f_to_kind(h.kind())?)?)?;
        h = h.to_kind(self.torso_kind)?;
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h).context(format!("blocks.{i}"))?;
        }
        Ok(h)
    }
}
