//! `trellis/modules/sparse/transformer/`: the sparse transformer blocks.
//!
//! * [`SparseTransformerBlock`] (`blocks.py`): plain pre-norm self-attention + MLP, no
//!   modulation, no condition — the torso of the structured-latent VAE decoders, where each
//!   block attends within swin windows (or the whole batch element).
//! * [`ModulatedSparseTransformerCrossBlock`] (`modulated.py`): the dense
//!   [`ModulatedTransformerCrossBlock`](crate::nn::transformer::ModulatedTransformerCrossBlock)
//!   on the voxels of a [`SparseTensor`]: the same keys and maths, with self-attention over each
//!   batch element's voxels and cross-attention from them to that element's condition tokens.
//!
//! ReconViaGen's variant takes the condition as a list of views and adds each view's
//! cross-attention divided by the number of views, in list order; one view is the plain block
//! exactly (`x + h / 1 == x + h`), so [`ModulatedSparseTransformerCrossBlock::forward`] always
//! takes a slice of views.
//!
//! Precision follows the reference's converted torso: Linears in their loaded dtype (fp16 in a
//! `use_fp16` model on CUDA), `LayerNorm32` and RMS norms in fp32 with the result cast back.

use tch::{Kind, Tensor};

use super::attention::modules::{
    SparseAttentionConfig, SparseAttentionMode, SparseMultiHeadAttention,
};
use super::attention::{AttentionSequences, WindowPartition};
use super::SparseTensor;
use crate::cuda::fused::{self, RowGroups};
use crate::error::{Error, Result};
use crate::nn::attention::CrossContext;
use crate::nn::layout::TensorSpec;
use crate::nn::transformer::{CrossBlockConfig, FeedForwardNet};
use crate::nn::{LayerNorm32, Linear};
use crate::weights::Weights;

/// The eps of every `LayerNorm32` inside the block.
const BLOCK_NORM_EPS: f64 = 1e-6;

fn self_attention_config(config: &CrossBlockConfig) -> SparseAttentionConfig {
    SparseAttentionConfig {
        channels: config.channels,
        num_heads: config.num_heads,
        ctx_channels: None,
        mode: SparseAttentionMode::Full,
        qkv_bias: config.qkv_bias,
        qk_rms_norm: config.qk_rms_norm,
    }
}

fn cross_attention_config(config: &CrossBlockConfig) -> SparseAttentionConfig {
    SparseAttentionConfig {
        channels: config.channels,
        num_heads: config.num_heads,
        ctx_channels: Some(config.ctx_channels),
        mode: SparseAttentionMode::Full,
        qkv_bias: config.qkv_bias,
        qk_rms_norm: config.qk_rms_norm_cross,
    }
}

/// `ModulatedSparseTransformerCrossBlock` with "full" self-attention (the only mode the flow
/// model builds):
/// ```text
/// x = x + gate_msa · self_attn(norm1(x) · (1 + scale_msa) + shift_msa)
/// x = x + Σ_k cross_attn(norm2(x), cond_k) / K          (K = 1 for a single condition)
/// x = x + gate_mlp · mlp(norm3(x) · (1 + scale_mlp) + shift_mlp)
/// ```
/// with the six `[B, C]` modulation vectors broadcast to each batch element's voxels.
pub struct ModulatedSparseTransformerCrossBlock {
    config: CrossBlockConfig,
    norm1: LayerNorm32,
    norm2: LayerNorm32,
    norm3: LayerNorm32,
    self_attn: SparseMultiHeadAttention,
    cross_attn: SparseMultiHeadAttention,
    mlp: FeedForwardNet,
    ada_ln_modulation: Option<Linear>,
}

impl ModulatedSparseTransformerCrossBlock {
    /// Loads the block from `weights`; its Linears compute in the view's dtype.
    pub fn new(weights: &Weights, config: CrossBlockConfig) -> Result<Self> {
        let c = config.channels;
        let ada_ln_modulation = if config.share_mod {
            None
        } else {
            Some(Linear::new(
                &weights.pp("adaLN_modulation").pp(1),
                c,
                6 * c,
            )?)
        };
        Ok(Self {
            config,
            norm1: LayerNorm32::without_affine(c, BLOCK_NORM_EPS),
            norm2: LayerNorm32::new(&weights.pp("norm2"), c, BLOCK_NORM_EPS)?,
            norm3: LayerNorm32::without_affine(c, BLOCK_NORM_EPS),
            self_attn: SparseMultiHeadAttention::new(
                &weights.pp("self_attn"),
                self_attention_config(&config),
            )?,
            cross_attn: SparseMultiHeadAttention::new(
                &weights.pp("cross_attn"),
                cross_attention_config(&config),
            )?,
            mlp: FeedForwardNet::new(&weights.pp("mlp"), c, config.mlp_ratio)?,
            ada_ln_modulation,
        })
    }

    /// The tensors [`ModulatedSparseTransformerCrossBlock::new`] reads, in `state_dict()`
    /// order; `linear_kind` is the stored dtype of the Linears, norms are always fp32.
    pub fn layout(prefix: &str, config: &CrossBlockConfig, linear_kind: Kind) -> Vec<TensorSpec> {
        let c = config.channels;
        let mut specs = vec![
            TensorSpec::new(format!("{prefix}.norm2.weight"), &[c], Kind::Float),
            TensorSpec::new(format!("{prefix}.norm2.bias"), &[c], Kind::Float),
        ];
        specs.extend(SparseMultiHeadAttention::layout(
            &format!("{prefix}.self_attn"),
            &self_attention_config(config),
            linear_kind,
        ));
        specs.extend(SparseMultiHeadAttention::layout(
            &format!("{prefix}.cross_attn"),
            &cross_attention_config(config),
            linear_kind,
        ));
        specs.extend(FeedForwardNet::layout(
            &format!("{prefix}.mlp"),
            c,
            config.mlp_ratio,
            linear_kind,
        ));
        if !config.share_mod {
            specs.extend(Linear::layout(
                &format!("{prefix}.adaLN_modulation.1"),
                true,
                c,
                6 * c,
                linear_kind,
            ));
        }
        specs
    }

    pub fn config(&self) -> &CrossBlockConfig {
        &self.config
    }

    /// `x` voxels `[N, C]`; `modulation` the timestep embedding `[B, C]` (with `share_mod`, the
    /// shared modulation `[B, 6C]`); `context` one or more conditions `[B, L_k, ctx]`, or
    /// all-zero tokens (whose cross-attention output, the same for every view, is a constant
    /// row). Returns the same voxels with features in `x`'s dtype.
    pub fn forward(
        &self,
        x: &SparseTensor,
        modulation: &Tensor,
        context: CrossContext<'_, [Tensor]>,
    ) -> Result<SparseTensor> {
        if matches!(
            context,
            CrossContext::Tokens([]) | CrossContext::Zeros { views: 0 }
        ) {
            return Err(Error::invalid_argument(
                "ModulatedSparseTransformerCrossBlock: the condition list is empty",
            ));
        }
        let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] =
            self.modulation_vectors(x, modulation)?;
        let feats = x.feats();
        let rows = VoxelRows::of(x)?;

        let h = rows.norm_modulate(&self.norm1, feats, &shift_msa, &scale_msa)?;
        let h = self.self_attn.forward_feats(&h, x, None)?;
        let feats = rows.gated_residual(feats, &h, &gate_msa)?;

        let feats = self.add_cross_attention(&feats, x, context)?;

        let h = rows.norm_modulate(&self.norm3, &feats, &shift_mlp, &scale_mlp)?;
        let h = self.mlp.forward(&h)?;
        x.replace(rows.gated_residual(&feats, &h, &gate_mlp)?)
    }

    /// [`Self::forward`] for both passes of classifier-free guidance at once: `pair` `[2N, C]`
    /// stacks two feature sets of `x`'s N voxels, the first conditioned on `views`, the second
    /// on all-zero tokens in as many views. The norms, the self-attention (each half attends
    /// within itself) and the MLP run over both halves as one batch; each half adds its own
    /// condition's cross-attention. Each half's result is that of [`Self::forward`] on it.
    pub fn forward_guided_pair(
        &self,
        pair: &Tensor,
        x: &SparseTensor,
        modulation: &Tensor,
        views: &[Tensor],
    ) -> Result<Tensor> {
        let n = x.num_rows();
        if views.is_empty() {
            return Err(Error::invalid_argument(
                "ModulatedSparseTransformerCrossBlock: the condition list is empty",
            ));
        }
        if pair.size() != [2 * n, self.config.channels] {
            return Err(Error::invalid_argument(format!(
                "ModulatedSparseTransformerCrossBlock: a guided pair must be [{}, {}] (the {n} \
                 voxels twice), got {:?}",
                2 * n,
                self.config.channels,
                pair.size()
            )));
        }
        let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] =
            self.modulation_vectors(x, modulation)?;
        let rows = VoxelRows::pair_of(x)?;
        let sequences = PairSequences::of(x)?;

        let h = rows.norm_modulate(&self.norm1, pair, &shift_msa, &scale_msa)?;
        let h = self.self_attn.forward_feats(&h, &sequences, None)?;
        let feats = rows.gated_residual(pair, &h, &gate_msa)?;

        let conditioned = feats.f_narrow(0, 0, n)?;
        let unconditioned = feats.f_narrow(0, n, n)?;
        let feats = Tensor::f_cat(
            &[
                self.add_cross_attention(&conditioned, x, CrossContext::Tokens(views))?,
                self.add_cross_attention(
                    &unconditioned,
                    x,
                    CrossContext::Zeros { views: views.len() },
                )?,
            ],
            0,
        )?;

        let h = rows.norm_modulate(&self.norm3, &feats, &shift_mlp, &scale_mlp)?;
        let h = self.mlp.forward(&h)?;
        rows.gated_residual(&feats, &h, &gate_mlp)
    }

    /// `feats + Σ_k cross_attn(norm2(feats), cond_k) / K` over the voxels of `x`.
    fn add_cross_attention(
        &self,
        feats: &Tensor,
        x: &SparseTensor,
        context: CrossContext<'_, [Tensor]>,
    ) -> Result<Tensor> {
        Ok(match context {
            CrossContext::Tokens([view]) => {
                let h = self.norm2.forward(feats)?;
                feats.f_add(&self.cross_attn.forward_feats(&h, x, Some(view))?)?
            }
            CrossContext::Tokens(views) => {
                // The normalised features are taken once, before any view is added.
                let h = self.norm2.forward(feats)?;
                let outputs = self.cross_attn.forward_feats_per_view(&h, x, views)?;
                add_view_shares(feats, &outputs, views.len() as i64)?
            }
            CrossContext::Zeros { views: 1 } => {
                feats.f_add(self.cross_attn.zero_context_output()?)?
            }
            CrossContext::Zeros { views } => {
                // Every view's output is the same constant row.
                let output = self.cross_attn.zero_context_output()?;
                add_view_shares(feats, output, views as i64)?
            }
        })
    }

    /// The six modulation vectors `[B, C]` (one row per batch element), in `x`'s dtype.
    fn modulation_vectors(&self, x: &SparseTensor, modulation: &Tensor) -> Result<[Tensor; 6]> {
        let c = self.config.channels;
        let expected = if self.config.share_mod { 6 * c } else { c };
        let batch = x.batch_size() as i64;
        match modulation.size()[..] {
            [b, width] if b == batch && width == expected => {}
            ref found => {
                return Err(Error::invalid_argument(format!(
                    "ModulatedSparseTransformerCrossBlock: modulation must be [{batch}, \
                     {expected}], got {found:?}"
                )))
            }
        }
        let mods = match &self.ada_ln_modulation {
            Some(linear) => linear.forward(&modulation.f_silu()?)?,
            None => modulation.shallow_clone(),
        };
        mods.f_to_kind(x.kind())?
            .f_chunk(6, 1)?
            .try_into()
            .map_err(|_| Error::internal("adaLN modulation did not split into 6 chunks"))
    }
}

/// `feats + Σ_k outputs_k / K`, each view's share added one at a time in view order and rounded
/// after each step, as the reference's `x = x + cross_attn(h, ctx) / len(context)` does (in
/// fp16 the order and the rounding show, and classifier-free guidance amplifies the difference
/// of the negative pass several times). `outputs` is every view's attention output `[K, N, C]`,
/// or one row `[1, C]` that every view adds (an all-zero condition's constant output). On CUDA
/// one fused kernel does it with the same roundings (`cuda::fused::add_view_shares`).
fn add_view_shares(feats: &Tensor, outputs: &Tensor, views: i64) -> Result<Tensor> {
    if let Some(sum) = fused::add_view_shares(feats, outputs, views)? {
        return Ok(sum);
    }
    let shares = outputs.f_div_scalar(views as f64)?;
    let per_view = match shares.dim() {
        3 => shares.f_unbind(0)?,
        _ => (0..views).map(|_| shares.shallow_clone()).collect(),
    };
    let mut sum = feats.shallow_clone();
    for share in per_view {
        sum = sum.f_add(&share)?;
    }
    Ok(sum)
}

/// The constructor arguments of a `SparseTransformerBlock` that shape its weights and its
/// attention (`use_checkpoint` does not matter at inference; RoPE and serialized attention are
/// not supported by [`SparseMultiHeadAttention`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseTransformerBlockConfig {
    pub channels: i64,
    pub num_heads: i64,
    pub mlp_ratio: f64,
    /// Full attention over each batch element, or swin windows with this block's shift.
    pub mode: SparseAttentionMode,
    pub qkv_bias: bool,
    pub qk_rms_norm: bool,
    /// Affine `norm1` / `norm2` (`ln_affine`; the reference's default, used by every
    /// published decoder, is `false`).
    pub ln_affine: bool,
}

impl SparseTransformerBlockConfig {
    fn attention(&self) -> SparseAttentionConfig {
        SparseAttentionConfig {
            channels: self.channels,
            num_heads: self.num_heads,
            ctx_channels: None,
            mode: self.mode,
            qkv_bias: self.qkv_bias,
            qk_rms_norm: self.qk_rms_norm,
        }
    }
}

/// `SparseTransformerBlock` (MSA + FFN), pre-norm, no modulation:
/// ```text
/// x = x + attn(norm1(x))          self-attention, full or windowed
/// x = x + mlp(norm2(x))           Linear(C, ratio·C) → GELU(tanh) → Linear(ratio·C, C)
/// ```
/// with `norm1`, `norm2` `LayerNorm32` (eps 1e-6, affine only with `ln_affine`). The residual
/// stream stays in the dtype of the incoming features (fp16 in a converted torso).
pub struct SparseTransformerBlock {
    config: SparseTransformerBlockConfig,
    norm1: LayerNorm32,
    norm2: LayerNorm32,
    attn: SparseMultiHeadAttention,
    mlp: FeedForwardNet,
}

impl SparseTransformerBlock {
    /// Loads the block from `weights`; its Linears compute in the view's dtype, the norms in
    /// fp32.
    pub fn new(weights: &Weights, config: SparseTransformerBlockConfig) -> Result<Self> {
        let c = config.channels;
        let norm = |name: &str| {
            if config.ln_affine {
                LayerNorm32::new(&weights.pp(name), c, BLOCK_NORM_EPS)
            } else {
                Ok(LayerNorm32::without_affine(c, BLOCK_NORM_EPS))
            }
        };
        Ok(Self {
            config,
            norm1: norm("norm1")?,
            norm2: norm("norm2")?,
            attn: SparseMultiHeadAttention::new(&weights.pp("attn"), config.attention())?,
            mlp: FeedForwardNet::new(&weights.pp("mlp"), c, config.mlp_ratio)?,
        })
    }

    /// The tensors [`SparseTransformerBlock::new`] reads, in `state_dict()` order (`norm1`,
    /// `norm2`, `attn`, `mlp`); `linear_kind` is the stored dtype of the Linears, norms are
    /// always fp32.
    pub fn layout(
        prefix: &str,
        config: &SparseTransformerBlockConfig,
        linear_kind: Kind,
    ) -> Vec<TensorSpec> {
        let c = config.channels;
        let mut specs = Vec::new();
        if config.ln_affine {
            for norm in ["norm1", "norm2"] {
                specs.push(TensorSpec::new(
                    format!("{prefix}.{norm}.weight"),
                    &[c],
                    Kind::Float,
                ));
                specs.push(TensorSpec::new(
                    format!("{prefix}.{norm}.bias"),
                    &[c],
                    Kind::Float,
                ));
            }
        }
        specs.extend(SparseMultiHeadAttention::layout(
            &format!("{prefix}.attn"),
            &config.attention(),
            linear_kind,
        ));
        specs.extend(FeedForwardNet::layout(
            &format!("{prefix}.mlp"),
            c,
            config.mlp_ratio,
            linear_kind,
        ));
        specs
    }

    pub fn config(&self) -> &SparseTransformerBlockConfig {
        &self.config
    }

    /// `x` voxels `[N, C]`; returns the same voxels with features in `x`'s dtype.
    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let feats = x.feats();
        let h = self
            .attn
            .forward_feats(&self.norm1.forward(feats)?, x, None)?;
        let feats = feats.f_add(&h)?;
        let h = self.mlp.forward(&self.norm2.forward(&feats)?)?;
        x.replace(feats.f_add(&h)?)
    }
}

/// Which batch element each voxel row belongs to, for applying `[B, C]` modulation vectors to
/// `[N, C]` features: fused CUDA kernels read the vectors through the row mapping; the unfused
/// path broadcasts them to one row per voxel, as the reference does.
struct VoxelRows {
    batch_index: Tensor,
    single: bool,
}

impl VoxelRows {
    fn of(x: &SparseTensor) -> Result<Self> {
        Ok(Self {
            batch_index: x.batch_index()?,
            single: x.batch_size() == 1,
        })
    }

    /// The rows of `x` twice over (a guided pair), each copy of a voxel in its batch element.
    /// Cached on `x`'s level: every block of every step reads the same index.
    fn pair_of(x: &SparseTensor) -> Result<Self> {
        let batch_index = x.cached("guided_pair_batch_index", || {
            let once = x.batch_index()?;
            Ok(Tensor::f_cat(&[&once, &once], 0)?)
        })?;
        Ok(Self {
            batch_index,
            single: x.batch_size() == 1,
        })
    }

    fn groups(&self) -> RowGroups<'_> {
        if self.single {
            RowGroups::Uniform(self.batch_index.size()[0])
        } else {
            RowGroups::Indexed(&self.batch_index)
        }
    }

    /// `[B, C]` → `[N, C]`, one row per voxel.
    fn per_voxel(&self, v: &Tensor) -> Result<Tensor> {
        Ok(v.f_index_select(0, &self.batch_index)?)
    }

    /// `norm(feats) · (1 + scale) + shift`.
    fn norm_modulate(
        &self,
        norm: &LayerNorm32,
        feats: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
    ) -> Result<Tensor> {
        match norm.fused(feats, Some((shift, scale, self.groups())))? {
            Some(h) => Ok(h),
            None => modulate(
                &norm.forward(feats)?,
                &self.per_voxel(shift)?,
                &self.per_voxel(scale)?,
            ),
        }
    }

    /// `feats + h · gate`.
    fn gated_residual(&self, feats: &Tensor, h: &Tensor, gate: &Tensor) -> Result<Tensor> {
        match fused::gated_residual(feats, h, gate, self.groups())? {
            Some(out) => Ok(out),
            None => Ok(feats.f_add(&h.f_mul(&self.per_voxel(gate)?)?)?),
        }
    }
}

/// The attention sequences of a guided pair (see
/// [`ModulatedSparseTransformerCrossBlock::forward_guided_pair`]): `x`'s batch elements, then
/// the same elements again over the second half of the rows. Full attention only.
struct PairSequences {
    cu: Vec<i64>,
}

impl PairSequences {
    fn of(x: &SparseTensor) -> Result<Self> {
        let cu = x.batch_offsets()?;
        let n = x.num_rows();
        let second = cu.iter().skip(1).map(|&offset| offset + n);
        Ok(Self {
            cu: cu.iter().copied().chain(second).collect(),
        })
    }
}

impl AttentionSequences for PairSequences {
    fn num_voxels(&self) -> i64 {
        self.cu.last().copied().unwrap_or(0)
    }

    fn batch_cu_seqlens(&self) -> Result<&[i64]> {
        Ok(&self.cu)
    }

    fn batch_size(&self) -> usize {
        self.cu.len().saturating_sub(1)
    }

    fn window_partition(&self, _: [i64; 3], _: [i64; 3]) -> Result<WindowPartition> {
        Err(Error::internal(
            "a guided pair of sparse features has no window partition (full attention only)",
        ))
    }
}

/// `h · (1 + scale) + shift`, all `[N, C]`.
fn modulate(h: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(h.f_mul(&scale.f_add_scalar(1.0)?)?.f_add(shift)?)
}
