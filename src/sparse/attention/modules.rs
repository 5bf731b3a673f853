//! `trellis/modules/sparse/attention/modules.py`: `SparseMultiHeadAttention`, multi-head
//! attention over the voxels of a sparse tensor — self-attention over each batch element
//! ("full") or each window ("windowed", swin), or cross-attention from the voxels of each batch
//! element to that element's dense condition tokens — and `SparseMultiHeadRMSNorm`, which is
//! the dense [`MultiHeadRmsNorm`] applied to voxel features (same maths, same `gamma` key).
//!
//! Features are `[N, C]` at the module boundary, `[N, H, D]` per head; the sequences come from
//! the [`SparseTensor`] (or any [`AttentionSequences`]).

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::full::{cu_seqlens, varlen_attention};
use super::windowed::windowed_self_attention;
use super::AttentionSequences;
use crate::error::{Error, Result};
use crate::nn::attention::{scaled_dot_product_attention, MultiHeadRmsNorm, QkvProjection};
use crate::nn::layout::TensorSpec;
use crate::nn::Linear;
use crate::sparse::basic::SparseTensor;
use crate::weights::Weights;

/// `SparseMultiHeadRMSNorm(dim, heads)`: identical to the dense `MultiHeadRMSNorm`.
pub type SparseMultiHeadRmsNorm = MultiHeadRmsNorm;

/// Which voxels attend to which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseAttentionMode {
    /// Every voxel attends to every voxel of its batch element (`attn_mode="full"`).
    Full,
    /// Swin: every voxel attends to the voxels of its window (`attn_mode="windowed"`).
    Windowed {
        window_size: [i64; 3],
        shift_window: [i64; 3],
    },
}

/// The shape of one `SparseMultiHeadAttention`, as its upstream constructor arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseAttentionConfig {
    pub channels: i64,
    pub num_heads: i64,
    /// `Some(ctx_channels)` for cross-attention (`type="cross"`, always full), `None` for
    /// self-attention.
    pub ctx_channels: Option<i64>,
    pub mode: SparseAttentionMode,
    /// Bias on the q/k/v projections (`to_out` always has one).
    pub qkv_bias: bool,
    pub qk_rms_norm: bool,
}

impl SparseAttentionConfig {
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
                "SparseMultiHeadAttention: {} channels cannot be split into {} heads (ctx {:?})",
                self.channels, self.num_heads, self.ctx_channels
            )));
        }
        if self.ctx_channels.is_some() && self.mode != SparseAttentionMode::Full {
            return Err(Error::checkpoint(
                "SparseMultiHeadAttention: cross-attention only supports attn_mode \"full\"",
            ));
        }
        Ok(())
    }

    /// From the upstream constructor's keyword arguments (as a checkpoint json or a golden
    /// manifest records them).
    pub fn from_args(args: &serde_json::Value) -> Result<Self> {
        let args = SparseMultiHeadAttentionArgs::deserialize(args)
            .map_err(|e| Error::format(format!("SparseMultiHeadAttention arguments: {e}")))?;
        args.config()
    }
}

/// An int or a per-axis triple, as upstream accepts for window sizes and shifts.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum PerAxis {
    Same(i64),
    Each([i64; 3]),
}

impl PerAxis {
    fn per_axis(self) -> [i64; 3] {
        match self {
            PerAxis::Same(v) => [v; 3],
            PerAxis::Each(v) => v,
        }
    }
}

fn default_type() -> String {
    "self".into()
}

fn default_attn_mode() -> String {
    "full".into()
}

fn default_true() -> bool {
    true
}

/// `SparseMultiHeadAttention.__init__`'s keyword arguments with its defaults.
#[derive(Debug, Deserialize)]
struct SparseMultiHeadAttentionArgs {
    channels: i64,
    num_heads: i64,
    #[serde(default)]
    ctx_channels: Option<i64>,
    #[serde(default = "default_type", rename = "type")]
    kind: String,
    #[serde(default = "default_attn_mode")]
    attn_mode: String,
    #[serde(default)]
    window_size: Option<PerAxis>,
    #[serde(default)]
    shift_window: Option<PerAxis>,
    #[serde(default = "default_true")]
    qkv_bias: bool,
    #[serde(default)]
    use_rope: bool,
    #[serde(default)]
    qk_rms_norm: bool,
}

impl SparseMultiHeadAttentionArgs {
    fn config(&self) -> Result<SparseAttentionConfig> {
        if self.use_rope {
            return Err(Error::unsupported(
                "SparseMultiHeadAttention: use_rope is not supported (no published checkpoint \
                 uses it)",
            ));
        }
        let ctx_channels = match self.kind.as_str() {
            "self" => None,
            "cross" => Some(self.ctx_channels.unwrap_or(self.channels)),
            other => {
                return Err(Error::checkpoint(format!(
                    "SparseMultiHeadAttention: unknown type {other:?} (expected \"self\" or \
                     \"cross\")"
                )))
            }
        };
        let mode = match self.attn_mode.as_str() {
            "full" => SparseAttentionMode::Full,
            "windowed" => SparseAttentionMode::Windowed {
                window_size: self
                    .window_size
                    .ok_or_else(|| {
                        Error::checkpoint(
                            "SparseMultiHeadAttention: attn_mode \"windowed\" needs window_size",
                        )
                    })?
                    .per_axis(),
                shift_window: self.shift_window.map_or([0; 3], PerAxis::per_axis),
            },
            "serialized" => {
                return Err(Error::unsupported(
                    "SparseMultiHeadAttention: attn_mode \"serialized\" is not supported (no \
                     published checkpoint uses it)",
                ))
            }
            other => {
                return Err(Error::checkpoint(format!(
                    "SparseMultiHeadAttention: unknown attn_mode {other:?}"
                )))
            }
        };
        let config = SparseAttentionConfig {
            channels: self.channels,
            num_heads: self.num_heads,
            ctx_channels,
            mode,
            qkv_bias: self.qkv_bias,
            qk_rms_norm: self.qk_rms_norm,
        };
        config.validate()?;
        Ok(config)
    }
}

/// `SparseMultiHeadAttention` without RoPE, in "full" or "windowed" mode.
pub struct SparseMultiHeadAttention {
    config: SparseAttentionConfig,
    projection: QkvProjection,
    /// `q_rms_norm`, `k_rms_norm` when `qk_rms_norm`.
    qk_norms: Option<(SparseMultiHeadRmsNorm, SparseMultiHeadRmsNorm)>,
    to_out: Linear,
    /// A cross-attention's output for all-zero context tokens (a constant of the weights,
    /// computed once at load); None for self-attention.
    zero_context_output: Option<Tensor>,
}

impl SparseMultiHeadAttention {
    /// Loads the module from `weights`; the Linears compute in the view's dtype (fp16 in a
    /// converted torso), the RMS norms in fp32.
    pub fn new(weights: &Weights, config: SparseAttentionConfig) -> Result<Self> {
        config.validate()?;
        let c = config.channels;
        let projection = QkvProjection::new(weights, c, config.ctx_channels, config.qkv_bias)?;
        let (heads, head_dim) = (config.num_heads, config.head_dim());
        let qk_norms = if config.qk_rms_norm {
            Some((
                SparseMultiHeadRmsNorm::new(&weights.pp("q_rms_norm"), heads, head_dim)?,
                SparseMultiHeadRmsNorm::new(&weights.pp("k_rms_norm"), heads, head_dim)?,
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

    /// The tensors [`SparseMultiHeadAttention::new`] reads, in the reference's `state_dict()`
    /// order, with the dtype the reference stores them in when its Linears are `linear_kind`.
    pub fn layout(
        prefix: &str,
        config: &SparseAttentionConfig,
        linear_kind: Kind,
    ) -> Vec<TensorSpec> {
        let (c, bias) = (config.channels, config.qkv_bias);
        let mut specs = QkvProjection::layout(prefix, c, config.ctx_channels, bias, linear_kind);
        if config.qk_rms_norm {
            for norm in ["q_rms_norm", "k_rms_norm"] {
                specs.extend(SparseMultiHeadRmsNorm::layout(
                    &format!("{prefix}.{norm}"),
                    config.num_heads,
                    config.head_dim(),
                ));
            }
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

    pub fn config(&self) -> &SparseAttentionConfig {
        &self.config
    }

    /// `x`: voxel features `[N, C]`; `context`: `[B, L, ctx]` dense condition tokens, required
    /// for cross-attention and refused for self-attention. Returns the same voxels with
    /// features `[N, C]` in the Linears' dtype.
    pub fn forward(&self, x: &SparseTensor, context: Option<&Tensor>) -> Result<SparseTensor> {
        x.replace(self.forward_feats(x.feats(), x, context)?)
    }

    /// [`SparseMultiHeadAttention::forward`] on bare features `[N, C]` whose rows are the
    /// voxels of `voxels`.
    pub fn forward_feats(
        &self,
        feats: &Tensor,
        voxels: &impl AttentionSequences,
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        let rows = self.check_feats(feats, voxels)?;
        let h = match (&self.projection, context) {
            (QkvProjection::SelfAttention { to_qkv }, None) => {
                self.self_attention(to_qkv, feats, voxels)?
            }
            (QkvProjection::CrossAttention { to_q, to_kv }, Some(context)) => {
                self.cross_attention(to_q, to_kv, feats, voxels, context)?
            }
            (QkvProjection::SelfAttention { .. }, Some(_)) => {
                return Err(Error::invalid_argument(
                    "SparseMultiHeadAttention: a self-attention module takes no context",
                ))
            }
            (QkvProjection::CrossAttention { .. }, None) => {
                return Err(Error::invalid_argument(
                    "SparseMultiHeadAttention: a cross-attention module needs a context",
                ))
            }
        };
        self.to_out
            .forward(&h.f_reshape([rows, self.config.channels])?)
    }

    fn self_attention(
        &self,
        to_qkv: &Linear,
        feats: &Tensor,
        voxels: &impl AttentionSequences,
    ) -> Result<Tensor> {
        let qkv = to_qkv.forward(feats)?.f_reshape([
            -1,
            3,
            self.config.num_heads,
            self.config.head_dim(),
        ])?;
        let part = |i: i64| qkv.f_select(1, i);
        let normed = match &self.qk_norms {
            Some((q_norm, k_norm)) => {
                Some((q_norm.forward(&part(0)?)?, k_norm.forward(&part(1)?)?))
            }
            None => None,
        };
        match self.config.mode {
            SparseAttentionMode::Full => {
                // q, k and v go to the attention as they are: stacking the normalised q and k
                // back with v (as the reference does) only to split them again copied the
                // whole [N, 3, H, D] once per block (51 ms of the structured-latent stage).
                let (q, k) = match normed {
                    Some(qk) => qk,
                    None => (part(0)?, part(1)?),
                };
                let cu = voxels.batch_cu_seqlens()?;
                varlen_attention(&q, &k, &part(2)?, cu, cu)
            }
            SparseAttentionMode::Windowed {
                window_size,
                shift_window,
            } => {
                let qkv = match normed {
                    Some((q, k)) => Tensor::f_stack(&[q, k, part(2)?], 1)?,
                    None => qkv.shallow_clone(),
                };
                let partition = voxels.window_partition(window_size, shift_window)?;
                windowed_self_attention(&qkv, &partition)
            }
        }
    }

    /// Each batch element's voxels attend to that element's `L` context tokens.
    fn cross_attention(
        &self,
        to_q: &Linear,
        to_kv: &Linear,
        feats: &Tensor,
        voxels: &impl AttentionSequences,
        context: &Tensor,
    ) -> Result<Tensor> {
        let (batch, tokens) = self.check_context(context, voxels)?;
        let (heads, head_dim) = (self.config.num_heads, self.config.head_dim());
        let q = to_q.forward(feats)?.f_reshape([-1, heads, head_dim])?;
        let kv = to_kv
            .forward(context)?
            .f_reshape([batch * tokens, 2, heads, head_dim])?;
        let (k, v) = (kv.f_select(1, 0)?, kv.f_select(1, 1)?);
        // Upstream's qk_rms_norm_cross path crashes on a dense context (it unbinds the token
        // axis); this is the evident intent, normalising q and k per head. No published
        // checkpoint enables it.
        let (q, k) = match &self.qk_norms {
            Some((q_norm, k_norm)) => (q_norm.forward(&q)?, k_norm.forward(&k)?),
            None => (q, k),
        };
        let cu_k = cu_seqlens(&vec![tokens; batch as usize]);
        varlen_attention(&q, &k, &v, voxels.batch_cu_seqlens()?, &cu_k)
    }

    /// [`SparseMultiHeadAttention::forward_feats`] with each of `views` (each `[B, L_k, ctx]`)
    /// as context: `[K, N, C]`, view k's output in row k (ReconViaGen's multi-view
    /// cross-attention, whose block averages them). The queries are projected once, every
    /// view's keys and values in one product, all views attended in one call and projected
    /// out in one product.
    pub fn forward_feats_per_view(
        &self,
        feats: &Tensor,
        voxels: &impl AttentionSequences,
        views: &[Tensor],
    ) -> Result<Tensor> {
        let QkvProjection::CrossAttention { to_q, to_kv } = &self.projection else {
            return Err(Error::invalid_argument(
                "SparseMultiHeadAttention: a self-attention module takes no context",
            ));
        };
        if views.is_empty() {
            return Err(Error::invalid_argument(
                "SparseMultiHeadAttention: the condition list is empty",
            ));
        }
        let rows = self.check_feats(feats, voxels)?;
        let lengths = views
            .iter()
            .map(|view| Ok(self.check_context(view, voxels)?.1))
            .collect::<Result<Vec<i64>>>()?;
        let (heads, head_dim) = (self.config.num_heads, self.config.head_dim());
        let batch = voxels.batch_size() as i64;
        let count = views.len() as i64;

        let q = to_q.forward(feats)?.f_reshape([-1, heads, head_dim])?;
        let kv = to_kv
            .forward(&Tensor::f_cat(views, 1)?)?
            .f_reshape([batch, -1, 2, heads, head_dim])?;
        let (k, v) = (kv.f_select(2, 0)?, kv.f_select(2, 1)?);
        let (q, k) = match &self.qk_norms {
            Some((q_norm, k_norm)) => (q_norm.forward(&q)?, k_norm.forward(&k)?),
            None => (q, k),
        };
        let attended = if batch == 1 && lengths.iter().all(|&l| l == lengths[0]) {
            // One sample, views of one length: a dense batch of views sharing the queries.
            let per_view = |t: &Tensor| t.f_reshape([count, lengths[0], heads, head_dim]);
            let q = q
                .f_unsqueeze(0)?
                .f_expand([count, rows, heads, head_dim], false)?;
            scaled_dot_product_attention(&q, &per_view(&k)?, &per_view(&v)?)?
        } else {
            self.view_major_varlen(&q, &k, &v, voxels, &lengths)?
        };
        self.to_out
            .forward(&attended.f_reshape([count, rows, self.config.channels])?)
    }

    /// Attention of sequences ordered view by view, then batch element: the queries of
    /// element b (repeated for every view) attend to view j's tokens of element b. `k`, `v` are
    /// `[B, ΣL, H, D]` with the views' tokens concatenated; returns `[views · N, H, D]`.
    fn view_major_varlen(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        voxels: &impl AttentionSequences,
        lengths: &[i64],
    ) -> Result<Tensor> {
        let (heads, head_dim) = (self.config.num_heads, self.config.head_dim());
        let batch = voxels.batch_size();
        let cu_voxels = voxels.batch_cu_seqlens()?;
        let mut offset = 0;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let (mut q_lengths, mut k_lengths) = (Vec::new(), Vec::new());
        for &length in lengths {
            let take = |t: &Tensor| -> Result<Tensor> {
                Ok(t.f_narrow(1, offset, length)?
                    .f_reshape([-1, heads, head_dim])?)
            };
            keys.push(take(k)?);
            values.push(take(v)?);
            q_lengths.extend(cu_voxels.windows(2).map(|pair| pair[1] - pair[0]));
            k_lengths.extend(std::iter::repeat_n(length, batch));
            offset += length;
        }
        let q = q.f_repeat([lengths.len() as i64, 1, 1])?;
        varlen_attention(
            &q,
            &Tensor::f_cat(&keys, 0)?,
            &Tensor::f_cat(&values, 0)?,
            &cu_seqlens(&q_lengths),
            &cu_seqlens(&k_lengths),
        )
    }

    /// A cross-attention's output for all-zero context tokens, `[1, C]` (see
    /// [`QkvProjection::zero_context_output`]); an error for a self-attention module.
    pub fn zero_context_output(&self) -> Result<&Tensor> {
        self.zero_context_output.as_ref().ok_or_else(|| {
            Error::invalid_argument(
                "SparseMultiHeadAttention: a self-attention module takes no context",
            )
        })
    }

    /// `N` of voxel features `[N, C]` matching `voxels`, or an error naming the shapes.
    fn check_feats(&self, feats: &Tensor, voxels: &impl AttentionSequences) -> Result<i64> {
        let rows = voxels.num_voxels();
        match feats.size()[..] {
            [n, c] if n == rows && c == self.config.channels => Ok(n),
            ref found => Err(Error::invalid_argument(format!(
                "SparseMultiHeadAttention: feats must be [{rows}, {}] (one row per voxel), got \
                 {found:?}",
                self.config.channels
            ))),
        }
    }

    /// `(B, L)` of a context `[B, L, ctx]` with one entry per batch element of `voxels`.
    fn check_context(
        &self,
        context: &Tensor,
        voxels: &impl AttentionSequences,
    ) -> Result<(i64, i64)> {
        let ctx = self.config.ctx_channels.unwrap_or(self.config.channels);
        let batch = voxels.batch_size() as i64;
        match context.size()[..] {
            [b, l, c] if b == batch && c == ctx => Ok((b, l)),
            ref found => Err(Error::invalid_argument(format!(
                "SparseMultiHeadAttention: context must be [{batch}, L, {ctx}] (one entry per \
                 batch element), got {found:?}"
            ))),
        }
    }
}
