//! `ModulatedSLATMultiViewCond`, which ReconViaGen added to its fork of
//! `trellis.models.structured_latent_flow` (pipeline key `slat_vggt_cond`): the per-view
//! conditions of the SLat flow.
//!
//! Per view, the DINOv2 tokens `ic` (`[T, 1024]`, all `T` tokens, special ones included, so the
//! VGGT camera token meets the DINOv2 cls token) are refined four times from the VGGT aggregator
//! tokens of layers [`VGGT_COND_LAYERS`]:
//! ```text
//! cond = ic
//! cond = ReLU(linear_blocks[i][0](cat(agg[L_i] (2048), cond (1024)))) + ic     for i = 0..4
//! ```
//! The residual always goes to the original `ic`. The reference hard-codes the 2048 and 1024
//! widths (README quirk 1), so `ctx_channels` must be 3072 and the Linear's output must add to
//! 1024 channels: `channels` is 1024 (the released model) or 1, whose ReLU output broadcasts
//! over the 1024 channels of `ic` (as in the reference's `x + image_cond`).
//!
//! ReconViaGen's HF-Space variant of this class (estheryang11) also builds an unused
//! `fuse_blocks` list, so its checkpoints may carry `fuse_blocks.*`: they are left unread and
//! logged at debug level. Precision: with `use_fp16` on CUDA the Linears, their inputs and the
//! residual run in fp16 as the reference's converted torso; otherwise fp32. Results are fp32.

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::models::sparse_structure_vae::torso_kind;
use crate::nn::layout::{check_layout, TensorSpec};
use crate::nn::Linear;
use crate::weights::Weights;

use crate::models::sparse_structure_flow::multiview_cond::{
    check_cond_inputs, check_dtype_arg, CondInputShape,
};
pub use crate::models::sparse_structure_flow::multiview_cond::{
    cond_layers, CondLayerTokens, COND_CONTEXT_CHANNELS, IMAGE_COND_CHANNELS, VGGT_COND_LAYERS,
    VGGT_TOKEN_CHANNELS,
};

const CLASS: &str = "ModulatedSLATMultiViewCond";

/// The prefix of the unused `fuse_blocks` list some released checkpoints carry.
const UNUSED_FUSE_BLOCKS: &str = "fuse_blocks.";

/// The `args` of a `ModulatedSLATMultiViewCond` checkpoint json, with the defaults of the
/// GAP-LAB reference (`use_fp16` false; the estheryang11 class defaults it to true, so a json
/// from there names it).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModulatedSLATMultiViewCondConfig {
    /// 1024, or 1 (broadcast over the image condition's channels).
    pub channels: i64,
    /// Must be 3072: the input is built at the reference's hard-coded widths.
    pub ctx_channels: i64,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub use_fp16: bool,
}

impl ModulatedSLATMultiViewCondConfig {
    /// The released `slat_vggt_cond` (research/reconviagen.md §1.2).
    pub fn reconviagen() -> Self {
        Self {
            channels: IMAGE_COND_CHANNELS,
            ctx_channels: COND_CONTEXT_CHANNELS,
            dtype: None,
            use_fp16: false,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.ctx_channels != COND_CONTEXT_CHANNELS {
            return Err(Error::checkpoint(format!(
                "{CLASS}: ctx_channels must be {COND_CONTEXT_CHANNELS} (the reference concatenates \
                 {VGGT_TOKEN_CHANNELS}-wide VGGT and {IMAGE_COND_CHANNELS}-wide condition tokens \
                 whatever the config says), got {}",
                self.ctx_channels
            )));
        }
        if self.channels != IMAGE_COND_CHANNELS && self.channels != 1 {
            return Err(Error::checkpoint(format!(
                "{CLASS}: channels must be {IMAGE_COND_CHANNELS} or 1 (the Linear's output is \
                 added to the {IMAGE_COND_CHANNELS}-wide image condition), got {}",
                self.channels
            )));
        }
        check_dtype_arg(CLASS, &self.dtype)
    }

    /// Every tensor the network reads (`linear_blocks.{i}.0.{weight,bias}`), in `state_dict()`
    /// order, stored fp16 with `use_fp16`.
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        self.validate()?;
        let torso = if self.use_fp16 {
            Kind::Half
        } else {
            Kind::Float
        };
        Ok((0..VGGT_COND_LAYERS.len())
            .flat_map(|i| {
                Linear::layout(
                    &format!("linear_blocks.{i}.0"),
                    true,
                    self.ctx_channels,
                    self.channels,
                    torso,
                )
            })
            .collect())
    }
}

/// The SLat condition network (`ModulatedSLATMultiViewCond`).
pub struct ModulatedSLATMultiViewCond {
    config: ModulatedSLATMultiViewCondConfig,
    linears: Vec<Linear>,
    torso_kind: Kind,
}

impl ModulatedSLATMultiViewCond {
    /// Builds the network from a checkpoint view whose default kind is fp32, after checking the
    /// checkpoint against [`ModulatedSLATMultiViewCondConfig::checkpoint_layout`].
    pub fn new(config: ModulatedSLATMultiViewCondConfig, weights: &Weights) -> Result<Self> {
        check_layout(weights, &config.checkpoint_layout()?)?;
        let torso_kind = torso_kind(config.use_fp16, weights.device());
        let torso = weights.with_kind(torso_kind).pp("linear_blocks");
        let linears = (0..VGGT_COND_LAYERS.len())
            .map(|i| {
                Linear::new(&torso.pp(i).pp(0), config.ctx_channels, config.channels)
                    .context(format!("linear_blocks.{i}.0"))
            })
            .collect::<Result<Vec<_>>>()?;
        let fuse_blocks: Vec<String> = weights
            .unused()
            .into_iter()
            .filter(|name| name.starts_with(UNUSED_FUSE_BLOCKS))
            .collect();
        if !fuse_blocks.is_empty() {
            tracing::debug!(
                "{}: {} tensor(s) of the unused fuse_blocks left unread: {}",
                weights.path().display(),
                fuse_blocks.len(),
                fuse_blocks.join(", ")
            );
        }
        Ok(Self {
            config,
            linears,
            torso_kind,
        })
    }

    pub fn config(&self) -> &ModulatedSLATMultiViewCondConfig {
        &self.config
    }

    /// The per-view SLat conditions, `N` tensors `[B, T, 1024]` (fp32), from the aggregator
    /// tokens of layers [`VGGT_COND_LAYERS`] (`[B, N, T, 2048]` each) and the image condition
    /// of all tokens (`[B, N, T, 1024]`).
    pub fn forward(
        &self,
        layers: &CondLayerTokens<'_>,
        image_cond: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let (shape, stacked) = self.forward_with_shape(layers, image_cond)?;
        split_views(&stacked, shape.batch)
    }

    /// The module's own output, `[B·N, T, 1024]` fp32 (batch-major, then views).
    pub fn forward_stacked(
        &self,
        layers: &CondLayerTokens<'_>,
        image_cond: &Tensor,
    ) -> Result<Tensor> {
        Ok(self.forward_with_shape(layers, image_cond)?.1)
    }

    fn forward_with_shape(
        &self,
        layers: &CondLayerTokens<'_>,
        image_cond: &Tensor,
    ) -> Result<(CondInputShape, Tensor)> {
        let (shape, image_cond) = check_cond_inputs(CLASS, layers, image_cond)?;
        let rows = shape.batch * shape.views;
        let t = shape.tokens;
        let ic = image_cond
            .f_reshape([rows, t, IMAGE_COND_CHANNELS])?
            .f_to_kind(self.torso_kind)?;
        let mut cond = ic.shallow_clone();
        for ((i, linear), layer) in self.linears.iter().enumerate().zip(layers.iter()) {
            let x = Tensor::f_cat(
                &[layer.f_reshape([rows, t, VGGT_TOKEN_CHANNELS])?, cond],
                -1,
            )?
            .f_to_kind(self.torso_kind)?;
            // [rows, T, channels] + [rows, T, 1024]: broadcasts when channels is 1.
            cond = linear
                .forward(&x)
                .context(format!(
                    "linear_blocks.{i} (aggregator layer {})",
                    VGGT_COND_LAYERS[i]
                ))?
                .f_relu()?
                .f_add(&ic)?;
        }
        Ok((shape, cond.f_to_kind(Kind::Float)?))
    }
}

/// The per-view conditions `[B, T, C]` of the module's output `[B·N, T, C]` (rows batch-major):
/// the pipeline's `reshape(b, n, -1, 1024)` and split along the views.
pub fn split_views(stacked: &Tensor, batch: i64) -> Result<Vec<Tensor>> {
    match stacked.size()[..] {
        [rows, t, c] if batch > 0 && rows % batch == 0 => Ok(stacked
            .f_reshape([batch, rows / batch, t, c])?
            .f_unbind(1)?),
        ref found => Err(Error::invalid_argument(format!(
            "{CLASS}: an output [B·N, T, C] with B = {batch} cannot be split into views: got \
             {found:?}"
        ))),
    }
}
