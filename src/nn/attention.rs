//! `trellis.modules.attention`: dense multi-head attention (self and cross) with optional
//! per-head RMS normalisation of queries and keys, over libtorch's
//! `scaled_dot_product_attention` (exactly `softmax(QKᵀ/√D)·V`, the maths of every backend the
//! reference can select: flash-attn, xformers, sdpa, naive).
//!
//! Tensors are `[B, L, C]` at the module boundary and `[B, L, H, D]` per head, as upstream.

use tch::{Kind, Tensor};

use crate::cuda::fused;
use crate::error::{Error, Result};
use crate::nn::layout::TensorSpec;
use crate::nn::Linear;
use crate::weights::Weights;

/// `F.normalize`'s default eps: the norm is clamped to at least this before dividing.
const NORMALIZE_EPS: f64 = 1e-12;

/// `MultiHeadRMSNorm(dim, heads)`: `normalize(x, dim=-1) · gamma · √dim` over `[..., H, D]`,
/// computed in fp32 (gamma is fp32 in the checkpoints) and cast back to the input dtype.
pub struct MultiHeadRmsNorm {
    /// `[H, D]`, broadcast over the leading axes.
    gamma: Tensor,
    scale: f64,
}

impl MultiHeadRmsNorm {
    pub fn new(weights: &Weights, heads: i64, head_dim: i64) -> Result<Self> {
        Ok(Self {
            gamma: weights
                .with_kind(Kind::Float)
                .get(&[heads, head_dim], "gamma")?,
            scale: (head_dim as f64).sqrt(),
        })
    }

    pub fn layout(prefix: &str, heads: i64, head_dim: i64) -> Vec<TensorSpec> {
        vec![TensorSpec::new(
            format!("{prefix}.gamma"),
            &[heads, head_dim],
            Kind::Float,
        )]
    }

    /// `x`: `[..., H, D]` in any float dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(rows) = head_rows(x)? {
            if let Some(h) = fused::rms_norm_heads(&rows, &self.gamma, self.scale)? {
                return Ok(h.f_view(x.size().as_slice())?);
            }
        }
        let h = x.f_to_kind(Kind::Float)?;
        let norm = h
            .f_norm_scalaropt_dim(2.0, [-1i64], true)?
            .f_clamp_min(NORMALIZE_EPS)?;
        let h = h
            .f_div(&norm)?
            .f_mul(&self.gamma)?
            .f_mul_scalar(self.scale)?;
        Ok(h.f_to_kind(x.kind())?)
    }
}

/// `x` `[.., H, D]` seen as `[R, H, D]` rows (no copy) when its leading axes collapse into one
/// row stride, e.g. q or k sliced out of a fused qkv projection; else `None`.
fn head_rows(x: &Tensor) -> Result<Option<Tensor>> {
    let (size, stride) = (x.size(), x.stride());
    let dims = size.len();
    if dims < 3 {
        return Ok(None);
    }
    let lead = dims - 2;
    for axis in 0..lead - 1 {
        if stride[axis] != size[axis + 1] * stride[axis + 1] {
            return Ok(None);
        }
    }
    let rows: i64 = size[..lead].iter().product();
    let shape = [rows, size[lead], size[lead + 1]];
    let strides = [stride[lead - 1], stride[lead], stride[lead + 1]];
    Ok(Some(x.f_as_strided(shape, strides, None)?))
}

/// Softmax attention with the default scale `1/√D` and no mask, on `[B, L, H, D]` tensors
/// (`k` and `v` share their length, which may differ from `q`'s). Returns `[B, Lq, H, D]`.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    // libtorch wants the heads before the sequence: [B, H, L, D].
    let to_heads = |t: &Tensor| t.f_permute([0, 2, 1, 3]);
    let out = Tensor::f_scaled_dot_product_attention(
        &to_heads(q)?,
        &to_heads(k)?,
        &to_heads(v)?,
        None::<Tensor>,
        0.0,
        false,
        None,
        false,
    )?;
    Ok(out.f_permute([0, 2, 1, 3])?)
}

/// How an attention module (dense or sparse) gets its queries, keys and values: the upstream
/// `to_qkv` / `to_q` + `to_kv` Linears.
pub enum QkvProjection {
    /// `to_qkv`: one Linear(C, 3C) whose output is laid out `[q | k | v]`, each head-major.
    SelfAttention { to_qkv: Linear },
    /// `to_q`: Linear(C, C) on the tokens; `to_kv`: Linear(ctx, 2C) on the context, laid out
    /// `[k | v]`.
    CrossAttention { to_q: Linear, to_kv: Linear },
}

impl QkvProjection {
    /// Self-attention when `ctx_channels` is None, cross-attention otherwise.
    pub fn new(
        weights: &Weights,
        channels: i64,
        ctx_channels: Option<i64>,
        bias: bool,
    ) -> Result<Self> {
        let c = channels;
        Ok(match ctx_channels {
            None => Self::SelfAttention {
                to_qkv: Linear::with_bias(&weights.pp("to_qkv"), bias, c, 3 * c)?,
            },
            Some(ctx) => Self::CrossAttention {
                to_q: Linear::with_bias(&weights.pp("to_q"), bias, c, c)?,
                to_kv: Linear::with_bias(&weights.pp("to_kv"), bias, ctx, 2 * c)?,
            },
        })
    }

    /// The tensors [`QkvProjection::new`] reads under `prefix`, in `state_dict()` order.
    pub fn layout(
        prefix: &str,
        channels: i64,
        ctx_channels: Option<i64>,
        bias: bool,
        kind: Kind,
    ) -> Vec<TensorSpec> {
        let c = channels;
        match ctx_channels {
            None => Linear::layout(&format!("{prefix}.to_qkv"), bias, c, 3 * c, kind),
            Some(ctx) => {
                let mut specs = Linear::layout(&format!("{prefix}.to_q"), bias, c, c, kind);
                specs.extend(Linear::layout(
                    &format!("{prefix}.to_kv"),
                    bias,
                    ctx,
                    2 * c,
                    kind,
                ));
                specs
            }
        }
    }

    /// The output, for any query, of a cross-attention whose context tokens are all zero
    /// (classifier-free guidance's negative condition, `zeros_like(cond)`): `[1, C]` in the
    /// Linears' dtype. Every key is then the same vector (`to_kv`'s bias, normalised or not),
    /// so the softmax is uniform and every head returns the one value `to_kv(0)`'s `v` half;
    /// the output is `to_out(v)`. Computed on a single context token, where the softmax is 1
    /// exactly. None for a self-attention projection. The attention modules compute it once,
    /// when they are loaded.
    pub fn zero_context_output(&self, to_out: &Linear) -> Result<Option<Tensor>> {
        let Self::CrossAttention { to_kv, .. } = self else {
            return Ok(None);
        };
        let (out_features, ctx) = match to_kv.weight_size()[..] {
            [out, ctx] => (out, ctx),
            ref found => {
                return Err(Error::internal(format!(
                    "to_kv weight has shape {found:?}; expected [2C, ctx]"
                )))
            }
        };
        let zeros = Tensor::f_zeros([1, ctx], (to_kv.kind(), to_kv.device()))?;
        let channels = out_features / 2;
        tch::no_grad(|| {
            let v = to_kv.forward(&zeros)?.f_narrow(1, channels, channels)?;
            Ok(Some(to_out.forward(&v)?))
        })
    }
}

/// What a cross-attention attends to: given context tokens (`T` is one tensor `[B, Lc, ctx]`,
/// or a list of views whose outputs are averaged), or all-zero tokens in `views` views (1 for
/// a single condition), whose attention output is a constant
/// ([`QkvProjection::zero_context_output`]) and is not computed per token.
#[derive(Debug)]
pub enum CrossContext<'a, T: ?Sized> {
    Tokens(&'a T),
    Zeros { views: usize },
}

// Manual impls: a derive would require `T: Copy`, but only a reference is held.
impl<T: ?Sized> Clone for CrossContext<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for CrossContext<'_, T> {}

/// The shape of one `MultiHeadAttention` module, as its upstream constructor arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionConfig {
    pub channels: i64,
    pub num_heads: i64,
    /// `Some(ctx_channels)` for cross-attention (`type="cross"`), `None` for self-attention.
    pub ctx_channels: Option<i64>,
    /// Bias on the q/k/v projections (`to_out` always has one).
    pub qkv_bias: bool,
    pub qk_rms_norm: bool,
}

impl AttentionConfig {
    pub fn head_dim(&self) -> i64 {
        self.channels / self.num_heads
    }

    fn validate(&self) -> Result<()> {
        let ctx_ok = self.ctx_channels.is_none_or(|c| c > 0);
        if self.channels <= 0
            || self.num_heads <= 0
            || self.channels % self.num_heads != 0
            || !ctx_ok
        {
            return Err(Error::checkpoint(format!(
                "MultiHeadAttention: {} channels cannot be split into {} heads (ctx {:?})",
                self.channels, self.num_heads, self.ctx_channels
            )));
        }
        Ok(())
    }
}

/// `MultiHeadAttention` in "full" mode without RoPE (the only dense mode the published TRELLIS
/// and TRELLIS-VGGT networks use).
pub struct MultiHeadAttention {
    config: AttentionConfig,
    projection: QkvProjection,
    /// `q_rms_norm`, `k_rms_norm` when `qk_rms_norm`.
    qk_norms: Option<(MultiHeadRmsNorm, MultiHeadRmsNorm)>,
    to_out: Linear,
    /// A cross-attention's output for all-zero context tokens (a constant of the weights,
    /// computed once at load); None for self-attention.
    zero_context_output: Option<Tensor>,
}

impl MultiHeadAttention {
    /// Loads the module from `weights`; the Linears compute in the view's dtype (fp16 in a
    /// converted torso), the RMS norms in fp32.
    pub fn new(weights: &Weights, config: AttentionConfig) -> Result<Self> {
        config.validate()?;
        let c = config.channels;
        let projection = QkvProjection::new(weights, c, config.ctx_channels, config.qkv_bias)?;
        let (heads, head_dim) = (config.num_heads, config.head_dim());
        let qk_norms = if config.qk_rms_norm {
            Some((
                MultiHeadRmsNorm::new(&weights.pp("q_rms_norm"), heads, head_dim)?,
                MultiHeadRmsNorm::new(&weights.pp("k_rms_norm"), heads, head_dim)?,
            ))
        } else {
            None
        };
        let to_out = Linear::new(&weights.pp("to_out"), c, c)?;
        let zero_context_output = projection.zero_context_output(&to_out)?;
        Ok(Self {
            config,
            projection,
            qk_norms,
            to_out,
            zero_context_output,
        })
    }

    /// The tensors [`MultiHeadAttention::new`] reads, in the reference's `state_dict()` order,
    /// with the dtype the reference stores them in when its Linears are `linear_kind`.
    pub fn layout(prefix: &str, config: &AttentionConfig, linear_kind: Kind) -> Vec<TensorSpec> {
        let c = config.channels;
        let bias = config.qkv_bias;
        let mut specs = QkvProjection::layout(prefix, c, config.ctx_channels, bias, linear_kind);
        if config.qk_rms_norm {
            let (heads, head_dim) = (config.num_heads, config.head_dim());
            specs.extend(MultiHeadRmsNorm::layout(
                &format!("{prefix}.q_rms_norm"),
                heads,
                head_dim,
            ));
            specs.extend(MultiHeadRmsNorm::layout(
                &format!("{prefix}.k_rms_norm"),
                heads,
                head_dim,
            ));
        }
        specs.extend(Linear::layout(
            &format!("{prefix}.to_out"),
            true,
            c,
            c,
            linear_kind,
        ));
        specs
    }

    pub fn config(&self) -> &AttentionConfig {
        &self.config
    }

    /// `x`: `[B, L, C]`; `context`: `[B, Lc, ctx]`, required for cross-attention and refused
    /// for self-attention. Returns `[B, L, C]` in the Linears' dtype.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (b, l) = self.check_tokens(x)?;
        let (heads, c) = (self.config.num_heads, self.config.channels);
        let (q, k, v) = match (&self.projection, context) {
            (QkvProjection::SelfAttention { to_qkv }, None) => {
                let qkv = to_qkv.forward(x)?.f_reshape([b, l, 3, heads, -1])?;
                let parts = qkv.f_unbind(2)?;
                let [q, k, v]: [Tensor; 3] = parts
                    .try_into()
                    .map_err(|_| Error::internal("to_qkv output did not split into q, k, v"))?;
                (q, k, v)
            }
            (QkvProjection::CrossAttention { to_q, to_kv }, Some(context)) => {
                let lc = self.check_context(context, b)?;
                let q = to_q.forward(x)?.f_reshape([b, l, heads, -1])?;
                let kv = to_kv.forward(context)?.f_reshape([b, lc, 2, heads, -1])?;
                let parts = kv.f_unbind(2)?;
                let [k, v]: [Tensor; 2] = parts
                    .try_into()
                    .map_err(|_| Error::internal("to_kv output did not split into k, v"))?;
                (q, k, v)
            }
            (QkvProjection::SelfAttention { .. }, Some(_)) => {
                return Err(Error::invalid_argument(
                    "MultiHeadAttention: a self-attention module takes no context",
                ))
            }
            (QkvProjection::CrossAttention { .. }, None) => {
                return Err(Error::invalid_argument(
                    "MultiHeadAttention: a cross-attention module needs a context",
                ))
            }
        };
        let (q, k) = match &self.qk_norms {
            Some((q_norm, k_norm)) => (q_norm.forward(&q)?, k_norm.forward(&k)?),
            None => (q, k),
        };
        let h = scaled_dot_product_attention(&q, &k, &v)?.f_reshape([b, l, c])?;
        self.to_out.forward(&h)
    }

    /// A cross-attention's output for all-zero context tokens, `[1, C]` (see
    /// [`QkvProjection::zero_context_output`]); an error for a self-attention module.
    pub fn zero_context_output(&self) -> Result<&Tensor> {
        self.zero_context_output.as_ref().ok_or_else(|| {
            Error::invalid_argument("MultiHeadAttention: a self-attention module takes no context")
        })
    }

    /// `(B, L)` of tokens `[B, L, C]`, or an error naming the expected shape.
    fn check_tokens(&self, x: &Tensor) -> Result<(i64, i64)> {
        match x.size()[..] {
            [b, l, c] if c == self.config.channels => Ok((b, l)),
            ref found => Err(Error::invalid_argument(format!(
                "MultiHeadAttention: tokens must be [B, L, {}], got {found:?}",
                self.config.channels
            ))),
        }
    }

    /// `Lc` of a context `[B, Lc, ctx]`, or an error naming the expected shape.
    fn check_context(&self, context: &Tensor, batch: i64) -> Result<i64> {
        let ctx = self.config.ctx_channels.unwrap_or(self.config.channels);
        match context.size()[..] {
            [b, lc, c] if b == batch && c == ctx => Ok(lc),
            ref found => Err(Error::invalid_argument(format!(
                "MultiHeadAttention: context must be [{batch}, Lc, {ctx}], got {found:?}"
            ))),
        }
    }
}
