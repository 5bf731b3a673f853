//! `trellis.modules.transformer`: the dense transformer blocks of the flow models and the
//! condition networks — `FeedForwardNet` and `ModulatedTransformerCrossBlock` (adaLN-modulated
//! self-attention, unmodulated cross-attention, modulated MLP), and ReconViaGen's
//! `ModulatedTransformerCrossBlock_woT` (the same block without any modulation).
//!
//! Precision follows the reference's converted torso: the Linears compute in the dtype they
//! were loaded in (fp16 in a `use_fp16` model on CUDA), the `LayerNorm32`s and RMS norms in fp32
//! with the result cast back, and the residual stream stays in the Linears' dtype.

use tch::{Kind, Tensor};

use crate::cuda::fused::{self, RowGroups};
use crate::error::{Error, Result};
use crate::nn::attention::{AttentionConfig, CrossContext, MultiHeadAttention};
use crate::nn::layout::TensorSpec;
use crate::nn::{LayerNorm32, Linear};
use crate::weights::Weights;

/// The eps of every `LayerNorm32` inside the transformer blocks.
const BLOCK_NORM_EPS: f64 = 1e-6;

/// Hidden width of a `FeedForwardNet`: `int(channels · mlp_ratio)` (truncated, as Python's
/// `int`).
pub fn mlp_hidden(channels: i64, mlp_ratio: f64) -> i64 {
    (channels as f64 * mlp_ratio) as i64
}

/// `FeedForwardNet(C, mlp_ratio)`: `Linear(C, H) → GELU(tanh) → Linear(H, C)`, keys
/// `mlp.0.*`, `mlp.2.*`.
pub struct FeedForwardNet {
    fc1: Linear,
    fc2: Linear,
}

impl FeedForwardNet {
    pub fn new(weights: &Weights, channels: i64, mlp_ratio: f64) -> Result<Self> {
        let hidden = mlp_hidden(channels, mlp_ratio);
        let mlp = weights.pp("mlp");
        Ok(Self {
            fc1: Linear::new(&mlp.pp(0), channels, hidden)?,
            fc2: Linear::new(&mlp.pp(2), hidden, channels)?,
        })
    }

    pub fn layout(prefix: &str, channels: i64, mlp_ratio: f64, kind: Kind) -> Vec<TensorSpec> {
        let hidden = mlp_hidden(channels, mlp_ratio);
        vec![
            TensorSpec::new(format!("{prefix}.mlp.0.weight"), &[hidden, channels], kind),
            TensorSpec::new(format!("{prefix}.mlp.0.bias"), &[hidden], kind),
            TensorSpec::new(format!("{prefix}.mlp.2.weight"), &[channels, hidden], kind),
            TensorSpec::new(format!("{prefix}.mlp.2.bias"), &[channels], kind),
        ]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_gelu_tanh(x)?)
    }
}

/// The constructor arguments of a `ModulatedTransformerCrossBlock` that shape its weights
/// ("full" attention, no RoPE; `use_checkpoint` does not matter at inference).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossBlockConfig {
    pub channels: i64,
    pub ctx_channels: i64,
    pub num_heads: i64,
    pub mlp_ratio: f64,
    /// The block has no `adaLN_modulation` of its own: the caller passes the six modulation
    /// vectors already computed (`[B, 6C]`) instead of the timestep embedding.
    pub share_mod: bool,
    pub qk_rms_norm: bool,
    pub qk_rms_norm_cross: bool,
    pub qkv_bias: bool,
}

impl CrossBlockConfig {
    fn self_attention(&self) -> AttentionConfig {
        AttentionConfig {
            channels: self.channels,
            num_heads: self.num_heads,
            ctx_channels: None,
            qkv_bias: self.qkv_bias,
            qk_rms_norm: self.qk_rms_norm,
        }
    }

    fn cross_attention(&self) -> AttentionConfig {
        AttentionConfig {
            channels: self.channels,
            num_heads: self.num_heads,
            ctx_channels: Some(self.ctx_channels),
            qkv_bias: self.qkv_bias,
            qk_rms_norm: self.qk_rms_norm_cross,
        }
    }
}

/// The layers every dense cross block holds, whether modulated or not: `norm1` and `norm3`
/// without affine parameters, `norm2` affine (all `LayerNorm32`, eps 1e-6), self-attention,
/// cross-attention and the MLP. Shared so that the modulated block and its timestep-free variant
/// read the same tensors in the same order.
struct CrossBlockLayers {
    norm1: LayerNorm32,
    norm2: LayerNorm32,
    norm3: LayerNorm32,
    self_attn: MultiHeadAttention,
    cross_attn: MultiHeadAttention,
    mlp: FeedForwardNet,
}

impl CrossBlockLayers {
    fn new(weights: &Weights, config: &CrossBlockConfig) -> Result<Self> {
        let c = config.channels;
        Ok(Self {
            norm1: LayerNorm32::without_affine(c, BLOCK_NORM_EPS),
            norm2: LayerNorm32::new(&weights.pp("norm2"), c, BLOCK_NORM_EPS)?,
            norm3: LayerNorm32::without_affine(c, BLOCK_NORM_EPS),
            self_attn: MultiHeadAttention::new(&weights.pp("self_attn"), config.self_attention())?,
            cross_attn: MultiHeadAttention::new(
                &weights.pp("cross_attn"),
                config.cross_attention(),
            )?,
            mlp: FeedForwardNet::new(&weights.pp("mlp"), c, config.mlp_ratio)?,
        })
    }

    /// `norm2`, `self_attn`, `cross_attn`, `mlp` under `prefix`, in `state_dict()` order (the
    /// norms without affine parameters hold no tensors).
    fn layout(prefix: &str, config: &CrossBlockConfig, linear_kind: Kind) -> Vec<TensorSpec> {
        let c = config.channels;
        let mut specs = vec![
            TensorSpec::new(format!("{prefix}.norm2.weight"), &[c], Kind::Float),
            TensorSpec::new(format!("{prefix}.norm2.bias"), &[c], Kind::Float),
        ];
        specs.extend(MultiHeadAttention::layout(
            &format!("{prefix}.self_attn"),
            &config.self_attention(),
            linear_kind,
        ));
        specs.extend(MultiHeadAttention::layout(
            &format!("{prefix}.cross_attn"),
            &config.cross_attention(),
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

    /// `x + cross_attn(norm2(x), context)`: the unmodulated middle of every cross block. With
    /// all-zero context tokens the attention's output is one constant row, added as it is.
    fn cross_attention_residual(
        &self,
        x: &Tensor,
        context: CrossContext<'_, Tensor>,
    ) -> Result<Tensor> {
        let h = match context {
            CrossContext::Tokens(context) => self
                .cross_attn
                .forward(&self.norm2.forward(x)?, Some(context))?,
            // The dense blocks take one condition, never a list of views.
            CrossContext::Zeros { .. } => self.cross_attn.zero_context_output()?.shallow_clone(),
        };
        Ok(x.f_add(&h)?)
    }
}

/// The six adaLN vectors of a block, each `[B, C]`, in the reference's chunk order.
struct Modulation {
    shift_msa: Tensor,
    scale_msa: Tensor,
    gate_msa: Tensor,
    shift_mlp: Tensor,
    scale_mlp: Tensor,
    gate_mlp: Tensor,
}

impl Modulation {
    /// Splits `[B, 6C]` into its six `[B, C]` chunks.
    fn split(mods: &Tensor) -> Result<Self> {
        let chunks = mods.f_chunk(6, 1)?;
        let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp]: [Tensor; 6] = chunks
            .try_into()
            .map_err(|_| Error::internal("adaLN modulation did not split into 6 chunks"))?;
        Ok(Self {
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        })
    }
}

/// `h · (1 + scale) + shift`, the vectors `[B, C]` broadcast over the tokens of `h` `[B, L, C]`.
/// `norm(x) · (1 + scale) + shift` for `x` `[B, L, C]` and `[B, C]` modulation vectors: one
/// fused kernel on CUDA where it applies, else the reference's ops.
fn norm_modulate(norm: &LayerNorm32, x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let per_element = RowGroups::Uniform(x.size().get(1).copied().unwrap_or(0));
    match norm.fused(x, Some((shift, scale, per_element)))? {
        Some(h) => Ok(h),
        None => modulate(&norm.forward(x)?, shift, scale),
    }
}

/// `x + h · gate` for `x`, `h` `[B, L, C]` and `gate` `[B, C]` (fused on CUDA where it applies).
fn gated_residual(x: &Tensor, h: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let per_element = RowGroups::Uniform(x.size().get(1).copied().unwrap_or(0));
    match fused::gated_residual(x, h, gate, per_element)? {
        Some(out) => Ok(out),
        None => Ok(x.f_add(&h.f_mul(&gate.f_unsqueeze(1)?)?)?),
    }
}

fn modulate(h: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(h.f_mul(&scale.f_unsqueeze(1)?.f_add_scalar(1.0)?)?
        .f_add(&shift.f_unsqueeze(1)?)?)
}

/// `ModulatedTransformerCrossBlock`:
/// ```text
/// x = x + gate_msa · self_attn(norm1(x) · (1 + scale_msa) + shift_msa)
/// x = x + cross_attn(norm2(x), context)
/// x = x + gate_mlp · mlp(norm3(x) · (1 + scale_mlp) + shift_mlp)
/// ```
/// with `norm1`, `norm3` without affine parameters and `norm2` affine (all eps 1e-6), and the
/// modulation `adaLN_modulation = Sequential(SiLU, Linear(C, 6C))` of the timestep embedding
/// unless `share_mod`.
pub struct ModulatedTransformerCrossBlock {
    config: CrossBlockConfig,
    layers: CrossBlockLayers,
    ada_ln_modulation: Option<Linear>,
}

impl ModulatedTransformerCrossBlock {
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
            layers: CrossBlockLayers::new(weights, &config)?,
            ada_ln_modulation,
        })
    }

    /// The tensors [`ModulatedTransformerCrossBlock::new`] reads, in `state_dict()` order;
    /// `linear_kind` is the stored dtype of the Linears (fp16 in a converted torso), norms are
    /// always fp32.
    pub fn layout(prefix: &str, config: &CrossBlockConfig, linear_kind: Kind) -> Vec<TensorSpec> {
        let c = config.channels;
        let mut specs = CrossBlockLayers::layout(prefix, config, linear_kind);
        if !config.share_mod {
            specs.push(TensorSpec::new(
                format!("{prefix}.adaLN_modulation.1.weight"),
                &[6 * c, c],
                linear_kind,
            ));
            specs.push(TensorSpec::new(
                format!("{prefix}.adaLN_modulation.1.bias"),
                &[6 * c],
                linear_kind,
            ));
        }
        specs
    }

    pub fn config(&self) -> &CrossBlockConfig {
        &self.config
    }

    /// `x` `[B, L, C]`; `modulation` the timestep embedding `[B, C]` (or, with `share_mod`, the
    /// shared modulation `[B, 6C]`); `context` tokens `[B, Lc, ctx]` or all-zero ones. Returns
    /// `[B, L, C]` in `x`'s dtype.
    pub fn forward(
        &self,
        x: &Tensor,
        modulation: &Tensor,
        context: CrossContext<'_, Tensor>,
    ) -> Result<Tensor> {
        let m = Modulation::split(&self.modulation_vectors(modulation)?)?;
        let layers = &self.layers;

        let h = norm_modulate(&layers.norm1, x, &m.shift_msa, &m.scale_msa)?;
        let h = layers.self_attn.forward(&h, None)?;
        let x = gated_residual(x, &h, &m.gate_msa)?;

        let x = layers.cross_attention_residual(&x, context)?;

        let h = norm_modulate(&layers.norm3, &x, &m.shift_mlp, &m.scale_mlp)?;
        let h = layers.mlp.forward(&h)?;
        gated_residual(&x, &h, &m.gate_mlp)
    }

    /// The `[B, 6C]` modulation: `adaLN_modulation(t_emb)`, or the shared one as given.
    fn modulation_vectors(&self, modulation: &Tensor) -> Result<Tensor> {
        let c = self.config.channels;
        let expected = if self.config.share_mod { 6 * c } else { c };
        match modulation.size()[..] {
            [_, width] if width == expected => {}
            ref found => {
                return Err(Error::invalid_argument(format!(
                    "ModulatedTransformerCrossBlock: modulation must be [B, {expected}], got \
                     {found:?}"
                )))
            }
        }
        match &self.ada_ln_modulation {
            Some(linear) => linear.forward(&modulation.f_silu()?),
            None => Ok(modulation.shallow_clone()),
        }
    }
}

/// `ModulatedTransformerCrossBlock_woT` (ReconViaGen's fork of `trellis.modules.transformer`):
/// the cross block without timestep modulation, used by the multi-view condition network.
/// ```text
/// x = x + self_attn(norm1(x))
/// x = x + cross_attn(norm2(x), context)
/// x = x + mlp(norm3(x))
/// ```
/// Same tensors as [`ModulatedTransformerCrossBlock`] with `share_mod` (no `adaLN_modulation`);
/// `config.share_mod` has no effect here, since nothing is modulated.
pub struct ModulatedTransformerCrossBlockWoT {
    config: CrossBlockConfig,
    layers: CrossBlockLayers,
}

impl ModulatedTransformerCrossBlockWoT {
    /// Loads the block from `weights`; its Linears compute in the view's dtype.
    pub fn new(weights: &Weights, config: CrossBlockConfig) -> Result<Self> {
        Ok(Self {
            config,
            layers: CrossBlockLayers::new(weights, &config)?,
        })
    }

    /// The tensors [`ModulatedTransformerCrossBlockWoT::new`] reads, in `state_dict()` order;
    /// `linear_kind` is the stored dtype of the Linears, norms are always fp32.
    pub fn layout(prefix: &str, config: &CrossBlockConfig, linear_kind: Kind) -> Vec<TensorSpec> {
        CrossBlockLayers::layout(prefix, config, linear_kind)
    }

    pub fn config(&self) -> &CrossBlockConfig {
        &self.config
    }

    /// `x` `[B, L, C]`, `context` `[B, Lc, ctx]`. Returns `[B, L, C]` in `x`'s dtype (the residual
    /// stream stays in the dtype it comes in, as the reference's converted torso).
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let layers = &self.layers;
        let h = layers.self_attn.forward(&layers.norm1.forward(x)?, None)?;
        let x = x.f_add(&h)?;
        let x = layers.cross_attention_residual(&x, CrossContext::Tokens(context))?;
        let h = layers.mlp.forward(&layers.norm3.forward(&x)?)?;
        Ok(x.f_add(&h)?)
    }
}
