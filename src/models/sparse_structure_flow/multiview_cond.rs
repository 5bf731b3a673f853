//! `ModulatedMultiViewCond`, which ReconViaGen added to its fork of
//! `trellis.models.sparse_structure_flow` (pipeline key `sparse_structure_vggt_cond`): the
//! multi-view condition of the sparse-structure flow.
//!
//! Learned query tokens `[1, num_init_tokens, channels]` are refined by four
//! [`ModulatedTransformerCrossBlockWoT`]s; block `i` cross-attends to the patch tokens of every
//! view at VGGT aggregator layer [`VGGT_COND_LAYERS`]`[i]`, each concatenated with the DINOv2
//! token of the same patch: `cat(agg[L_i][:, :, 5:] → (B, N·P, 2048), image_cond[:, :, 5:] →
//! (B, N·P, 1024))`, views one after the other along the token axis. The special tokens (VGGT
//! camera + 4 registers, DINOv2 cls + 4 registers) are dropped.
//!
//! The reference reshapes to the VGGT-1B and DINOv2-L widths it was written for (2048, 1024),
//! whatever the config says, so `ctx_channels` must be 3072 (README quirk 1). Precision: with
//! `use_fp16` on CUDA the query tokens, the blocks and the context run in fp16 as the
//! reference's `convert_to_fp16()` leaves them (norms in fp32); otherwise everything is fp32.
//! The result is returned as fp32 (exact, and the flow casts it to its own dtype anyway).

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::nn::layout::{check_layout, TensorSpec};
use crate::nn::transformer::{mlp_hidden, CrossBlockConfig, ModulatedTransformerCrossBlockWoT};
use crate::weights::Weights;

use crate::models::sparse_structure_vae::torso_kind;

/// The VGGT aggregator layers both multi-view condition networks read, one per block (the
/// reference's `intermediate_layer_idx`).
pub const VGGT_COND_LAYERS: [usize; 4] = [4, 11, 17, 23];

/// Special tokens at the start of every frame: VGGT's camera token and 4 registers, which line
/// up with DINOv2's cls token and 4 registers (the reference's `patch_start_idx`).
pub const PATCH_START_IDX: i64 = 5;

/// The width of a VGGT-1B aggregator token (frame and global attention outputs concatenated),
/// hard-coded by the reference.
pub const VGGT_TOKEN_CHANNELS: i64 = 2048;

/// The width of a DINOv2-L token, hard-coded by the reference.
pub const IMAGE_COND_CHANNELS: i64 = 1024;

/// The context width the reference's hard-coded reshapes produce: 2048 + 1024.
pub const COND_CONTEXT_CHANNELS: i64 = VGGT_TOKEN_CHANNELS + IMAGE_COND_CHANNELS;

/// The aggregator outputs of layers [`VGGT_COND_LAYERS`], in that order, each `[B, N, T, 2048]`.
pub type CondLayerTokens<'a> = [&'a Tensor; 4];

/// Picks the layers [`VGGT_COND_LAYERS`] out of the aggregator's whole output list (24 entries
/// for VGGT-1B); the other entries are never read.
pub fn cond_layers(aggregated_tokens: &[Tensor]) -> Result<CondLayerTokens<'_>> {
    let pick = |layer: usize| {
        aggregated_tokens.get(layer).ok_or_else(|| {
            Error::invalid_argument(format!(
                "the multi-view condition networks read aggregator layer {layer}, but only {} \
                 layer outputs were given",
                aggregated_tokens.len()
            ))
        })
    };
    let [a, b, c, d] = VGGT_COND_LAYERS;
    Ok([pick(a)?, pick(b)?, pick(c)?, pick(d)?])
}

/// The shapes of the condition networks' inputs: batch `B`, views `N`, tokens per view `T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CondInputShape {
    pub batch: i64,
    pub views: i64,
    pub tokens: i64,
}

/// Checks the aggregator layers (`[B, N, T, 2048]`, all alike) and the image condition, and
/// returns the shape with `image_cond` as `[B, N, T, 1024]`. `image_cond` may also come as
/// `[B·N, T, 1024]` (the image encoder's output before the pipeline's reshape): the reference
/// reshapes it with the aggregator's `B`, `N`.
pub(crate) fn check_cond_inputs(
    class: &str,
    layers: &CondLayerTokens<'_>,
    image_cond: &Tensor,
) -> Result<(CondInputShape, Tensor)> {
    let first = layers[0].size();
    let shape = match first[..] {
        [batch, views, tokens, VGGT_TOKEN_CHANNELS] if batch > 0 && views > 0 && tokens > 0 => {
            CondInputShape {
                batch,
                views,
                tokens,
            }
        }
        ref found => {
            return Err(Error::invalid_argument(format!(
                "{class}: aggregator layer {} must be [B, N, T, {VGGT_TOKEN_CHANNELS}] (VGGT-1B \
                 tokens, a width the reference hard-codes), got {found:?}",
                VGGT_COND_LAYERS[0]
            )))
        }
    };
    for (layer, tokens) in VGGT_COND_LAYERS.iter().zip(layers.iter()).skip(1) {
        if tokens.size() != first {
            return Err(Error::invalid_argument(format!(
                "{class}: aggregator layer {layer} has shape {:?}, unlike layer {} {first:?}",
                tokens.size(),
                VGGT_COND_LAYERS[0]
            )));
        }
    }
    let CondInputShape {
        batch: b,
        views: n,
        tokens: t,
    } = shape;
    let image_cond = match image_cond.size()[..] {
        [ib, iv, it, IMAGE_COND_CHANNELS] if [ib, iv, it] == [b, n, t] => {
            image_cond.shallow_clone()
        }
        [bn, it, IMAGE_COND_CHANNELS] if [bn, it] == [b * n, t] => {
            image_cond.f_reshape([b, n, t, IMAGE_COND_CHANNELS])?
        }
        ref found => {
            return Err(Error::invalid_argument(format!(
                "{class}: image_cond must be [{b}, {n}, {t}, {IMAGE_COND_CHANNELS}] (or \
                 [{}, {t}, {IMAGE_COND_CHANNELS}]) to match the aggregator tokens, got {found:?}",
                b * n
            )))
        }
    };
    Ok((shape, image_cond))
}

/// The `dtype` constructor argument. A checkpoint json can only spell it as a string; only
/// float32 (the default) is supported, since fp16 comes with `use_fp16`.
pub(crate) fn check_dtype_arg(class: &str, dtype: &Option<String>) -> Result<()> {
    match dtype.as_deref() {
        None | Some("float32" | "torch.float32" | "float" | "torch.float") => Ok(()),
        Some(other) => Err(Error::unsupported(format!(
            "{class}: dtype '{other}' is not supported (float32, or use_fp16 for fp16)"
        ))),
    }
}

/// The `args` of a `ModulatedMultiViewCond` checkpoint json, with the reference's defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModulatedMultiViewCondConfig {
    pub channels: i64,
    /// Must be 3072: the context is built at the reference's hard-coded widths.
    pub ctx_channels: i64,
    pub num_heads: i64,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Only "full" (the blocks get no window size, so "windowed" cannot run upstream).
    #[serde(default = "default_attn_mode")]
    pub attn_mode: String,
    /// Accepted and unused: the reference does not pass it to the blocks.
    #[serde(default)]
    pub window_size: Option<i64>,
    /// Accepted and unused: the reference does not pass it to the blocks.
    #[serde(default)]
    pub shift_window: Option<Vec<i64>>,
    /// Gradient checkpointing: training only.
    #[serde(default)]
    pub use_checkpoint: bool,
    #[serde(default)]
    pub use_rope: bool,
    #[serde(default)]
    pub qk_rms_norm: bool,
    #[serde(default)]
    pub qk_rms_norm_cross: bool,
    /// Accepted and unused: the reference does not pass it to the blocks, which keep their
    /// default (biased q/k/v projections).
    #[serde(default = "default_qkv_bias")]
    pub qkv_bias: bool,
    /// Passed to the blocks, where nothing is modulated: no effect.
    #[serde(default)]
    pub share_mod: bool,
    #[serde(default = "default_num_init_tokens")]
    pub num_init_tokens: i64,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub use_fp16: bool,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

fn default_attn_mode() -> String {
    "full".to_string()
}

fn default_qkv_bias() -> bool {
    true
}

fn default_num_init_tokens() -> i64 {
    4096
}

const CLASS: &str = "ModulatedMultiViewCond";

impl ModulatedMultiViewCondConfig {
    /// The released `sparse_structure_vggt_cond` (research/reconviagen.md §1.2).
    pub fn reconviagen() -> Self {
        Self {
            channels: 1024,
            ctx_channels: COND_CONTEXT_CHANNELS,
            num_heads: 16,
            mlp_ratio: 4.0,
            attn_mode: default_attn_mode(),
            window_size: None,
            shift_window: None,
            use_checkpoint: false,
            use_rope: false,
            qk_rms_norm: true,
            qk_rms_norm_cross: false,
            qkv_bias: true,
            share_mod: false,
            num_init_tokens: 4096,
            dtype: None,
            use_fp16: false,
        }
    }

    fn block_config(&self) -> CrossBlockConfig {
        CrossBlockConfig {
            channels: self.channels,
            ctx_channels: self.ctx_channels,
            num_heads: self.num_heads,
            mlp_ratio: self.mlp_ratio,
            share_mod: self.share_mod,
            qk_rms_norm: self.qk_rms_norm,
            qk_rms_norm_cross: self.qk_rms_norm_cross,
            qkv_bias: true,
        }
    }

    fn validate(&self) -> Result<()> {
        let fail = |what: String| Err(Error::checkpoint(format!("{CLASS}: {what}")));
        let sizes = [
            ("channels", self.channels),
            ("num_heads", self.num_heads),
            ("num_init_tokens", self.num_init_tokens),
        ];
        if let Some((name, value)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return fail(format!("{name} must be positive, got {value}"));
        }
        if self.channels % self.num_heads != 0 {
            return fail(format!(
                "{} channels cannot be split into {} heads",
                self.channels, self.num_heads
            ));
        }
        if self.ctx_channels != COND_CONTEXT_CHANNELS {
            return fail(format!(
                "ctx_channels must be {COND_CONTEXT_CHANNELS} (the reference builds the context \
                 from {VGGT_TOKEN_CHANNELS}-wide VGGT and {IMAGE_COND_CHANNELS}-wide DINOv2 \
                 tokens whatever the config says), got {}",
                self.ctx_channels
            ));
        }
        if mlp_hidden(self.channels, self.mlp_ratio) <= 0 {
            return fail(format!(
                "mlp_ratio {} gives no hidden units",
                self.mlp_ratio
            ));
        }
        if self.attn_mode != "full" {
            return Err(Error::unsupported(format!(
                "{CLASS}: attn_mode '{}' is not supported (only \"full\")",
                self.attn_mode
            )));
        }
        if self.use_rope {
            return Err(Error::unsupported(format!(
                "{CLASS}: use_rope is not supported (the released model does not use it)"
            )));
        }
        check_dtype_arg(CLASS, &self.dtype)
    }

    /// Every tensor the network reads, in the reference's `state_dict()` order (the query
    /// tokens first, then the blocks), stored fp16 for the tokens and Linears with `use_fp16`.
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        self.validate()?;
        let torso = if self.use_fp16 {
            Kind::Half
        } else {
            Kind::Float
        };
        let mut specs = vec![TensorSpec::new(
            "multiview_cond_tokens",
            &[1, self.num_init_tokens, self.channels],
            torso,
        )];
        let block = self.block_config();
        for i in 0..VGGT_COND_LAYERS.len() {
            specs.extend(ModulatedTransformerCrossBlockWoT::layout(
                &format!("cond_blocks.{i}"),
                &block,
                torso,
            ));
        }
        Ok(specs)
    }
}

/// The sparse-structure condition network (`ModulatedMultiViewCond`).
pub struct ModulatedMultiViewCond {
    config: ModulatedMultiViewCondConfig,
    /// `[1, num_init_tokens, channels]` in the torso dtype.
    tokens: Tensor,
    blocks: Vec<ModulatedTransformerCrossBlockWoT>,
    torso_kind: Kind,
}

impl ModulatedMultiViewCond {
    /// Builds the network from a checkpoint view whose default kind is fp32, after checking the
    /// checkpoint against [`ModulatedMultiViewCondConfig::checkpoint_layout`].
    pub fn new(config: ModulatedMultiViewCondConfig, weights: &Weights) -> Result<Self> {
        check_layout(weights, &config.checkpoint_layout()?)?;
        let torso_kind = torso_kind(config.use_fp16, weights.device());
        let torso = weights.with_kind(torso_kind);
        let tokens = torso.get(
            &[1, config.num_init_tokens, config.channels],
            "multiview_cond_tokens",
        )?;
        let block_config = config.block_config();
        let blocks = (0..VGGT_COND_LAYERS.len())
            .map(|i| {
                ModulatedTransformerCrossBlockWoT::new(&torso.pp("cond_blocks").pp(i), block_config)
                    .context(format!("cond_blocks.{i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            tokens,
            blocks,
            torso_kind,
        })
    }

    pub fn config(&self) -> &ModulatedMultiViewCondConfig {
        &self.config
    }

    /// The SS-flow condition `[B, num_init_tokens, channels]` (fp32) from the aggregator tokens
    /// of layers [`VGGT_COND_LAYERS`] (`[B, N, T, 2048]` each) and the image condition of all
    /// `T` tokens (`[B, N, T, 1024]`, special tokens included: they are dropped here).
    pub fn forward(&self, layers: &CondLayerTokens<'_>, image_cond: &Tensor) -> Result<Tensor> {
        let mut outputs = self.forward_blocks(layers, image_cond)?;
        outputs
            .pop()
            .ok_or_else(|| Error::internal(format!("{CLASS}: no condition blocks")))
    }

    /// Like [`ModulatedMultiViewCond::forward`], with the tokens after every block (the last
    /// is the result), each `[B, num_init_tokens, channels]` fp32.
    pub fn forward_blocks(
        &self,
        layers: &CondLayerTokens<'_>,
        image_cond: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let (shape, image_cond) = check_cond_inputs(CLASS, layers, image_cond)?;
        let CondInputShape {
            batch: b,
            views: n,
            tokens: t,
        } = shape;
        let patches = t - PATCH_START_IDX;
        if patches <= 0 {
            return Err(Error::invalid_argument(format!(
                "{CLASS}: {t} tokens per view leave no patch tokens after the \
                 {PATCH_START_IDX} special tokens"
            )));
        }
        // Views one after the other along the token axis, as the reference's reshape.
        let view_major = |tokens: &Tensor, width: i64| -> Result<Tensor> {
            Ok(tokens
                .f_narrow(2, PATCH_START_IDX, patches)?
                .f_reshape([b, n * patches, width])?)
        };
        let image_patches = view_major(&image_cond, IMAGE_COND_CHANNELS)?;
        let mut h = self
            .tokens
            .f_expand(
                [b, self.config.num_init_tokens, self.config.channels],
                false,
            )?
            .f_contiguous()?;
        let mut outputs = Vec::with_capacity(self.blocks.len());
        for ((i, block), layer) in self.blocks.iter().enumerate().zip(layers.iter()) {
            let context = Tensor::f_cat(
                &[
                    view_major(layer, VGGT_TOKEN_CHANNELS)?,
                    image_patches.shallow_clone(),
                ],
                -1,
            )?
            .f_to_kind(self.torso_kind)?;
            h = block.forward(&h, &context).context(format!(
                "cond_blocks.{i} (aggregator layer {})",
                VGGT_COND_LAYERS[i]
            ))?;
            outputs.push(h.f_to_kind(Kind::Float)?);
        }
        Ok(outputs)
    }
}
