//! BiRefNet (`ZhengPeng7/BiRefNet`), the background-removal network of ReconViaGen and
//! TRELLIS.2: one file per module of the reference's `models/` (the Hub's remote code
//! `birefnet.py` holds the same modules in one file), loaded from the Hub's `model.safetensors`
//! under its own tensor names.
//!
//! - [`swin_v1`]: the Swin Transformer backbone;
//! - [`deform_conv`]: `DeformableConv2d` and the `torchvision.ops.deform_conv2d` operator;
//! - [`aspp`]: `ASPPDeformable`; [`decoder_blocks`]: `BasicDecBlk` / `ResBlk`;
//!   [`lateral_blocks`]: `BasicLatBlk`;
//! - [`birefnet`]: `BiRefNet`, its `Decoder` and `SimpleConvs`, and [`BiRefNetConfig`].
//!
//! What surrounds the network (resizing to 1024², normalisation, the mask back to an alpha
//! channel) is in `crate::image::background`.

pub mod aspp;
#[allow(clippy::module_inception)]
pub mod birefnet;
pub mod decoder_blocks;
pub mod deform_conv;
pub mod lateral_blocks;
mod layers;
pub mod swin_v1;

pub use birefnet::{BiRefNet, BiRefNetConfig, DecoderAttention, InterChannels, MultiScaleInput};
pub use deform_conv::{deform_conv2d, deform_conv2d_chunked, DeformConvParams};
pub use swin_v1::{SwinConfig, SwinTransformer};

/// The Hub repo ReconViaGen and TRELLIS.2 load BiRefNet from.
pub const BIREFNET_REPO: &str = "ZhengPeng7/BiRefNet";
/// Its weights file.
pub const BIREFNET_WEIGHTS_FILE: &str = "model.safetensors";
