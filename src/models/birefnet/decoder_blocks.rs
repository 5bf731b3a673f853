//! `models/modules/decoder_blocks.py`: BiRefNet's decoder blocks. `BasicDecBlk` (published):
//! 3×3 convolution to the inner width, BatchNorm, ReLU, the block attention (deformable ASPP),
//! 3×3 convolution to the output width, BatchNorm. `ResBlk` adds a 1×1 convolution of the input
//! to that.

use tch::{Kind, Tensor};

use super::aspp::AsppDeformable;
use super::layers::{Conv2d, Conv2dSpec, Norm2d};
use crate::error::Result;
use crate::nn::layout::TensorSpec;
use crate::weights::Weights;

/// The inner width of a block with the reference's `dec_channels_inter == 'fixed'`.
pub const FIXED_INTER_CHANNELS: i64 = 64;

/// Which block (`config.dec_blk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderBlockKind {
    BasicDecBlk,
    ResBlk,
}

/// What every decoder block of one network shares (from the reference's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderBlockOptions {
    pub kind: DecoderBlockKind,
    /// `config.dec_att == 'ASPPDeformable'` (otherwise no attention).
    pub deformable_aspp: bool,
    /// `config.dec_channels_inter == 'adap'`: inner width `in // 4` instead of 64.
    pub adaptive_inter: bool,
    /// `config.batch_size > 1`: BatchNorm layers (else identities).
    pub batch_norm: bool,
}

impl DecoderBlockOptions {
    fn inter_channels(&self, in_channels: i64) -> i64 {
        if self.adaptive_inter {
            in_channels / 4
        } else {
            FIXED_INTER_CHANNELS
        }
    }
}

/// One `BasicDecBlk(in, out)` or `ResBlk(in, out)`.
pub(crate) struct DecoderBlock {
    conv_in: Conv2d,
    bn_in: Norm2d,
    dec_att: Option<AsppDeformable>,
    conv_out: Conv2d,
    bn_out: Norm2d,
    conv_resi: Option<Conv2d>,
}

impl DecoderBlock {
    fn specs(opts: &DecoderBlockOptions, in_channels: i64, out_channels: i64) -> [Conv2dSpec; 3] {
        let inter = opts.inter_channels(in_channels);
        [
            Conv2dSpec::new(in_channels, inter, 3).padding(1),
            Conv2dSpec::new(inter, out_channels, 3).padding(1),
            Conv2dSpec::new(in_channels, out_channels, 1),
        ]
    }

    pub fn new(
        weights: &Weights,
        opts: &DecoderBlockOptions,
        in_channels: i64,
        out_channels: i64,
    ) -> Result<Self> {
        let [conv_in, conv_out, resi] = Self::specs(opts, in_channels, out_channels);
        let inter = conv_in.out_channels;
        Ok(Self {
            conv_in: Conv2d::new(&weights.pp("conv_in"), conv_in)?,
            bn_in: Norm2d::new(&weights.pp("bn_in"), inter, opts.batch_norm)?,
            dec_att: if opts.deformable_aspp {
                Some(AsppDeformable::new(
                    &weights.pp("dec_att"),
                    inter,
                    opts.batch_norm,
                )?)
            } else {
                None
            },
            conv_out: Conv2d::new(&weights.pp("conv_out"), conv_out)?,
            bn_out: Norm2d::new(&weights.pp("bn_out"), out_channels, opts.batch_norm)?,
            conv_resi: match opts.kind {
                DecoderBlockKind::ResBlk => Some(Conv2d::new(&weights.pp("conv_resi"), resi)?),
                DecoderBlockKind::BasicDecBlk => None,
            },
        })
    }

    /// The float tensors in `state_dict()` order: BasicDecBlk registers conv_in, dec_att,
    /// conv_out, bn_in, bn_out; ResBlk conv_in, bn_in, dec_att, conv_out, bn_out, conv_resi.
    pub fn layout(
        prefix: &str,
        opts: &DecoderBlockOptions,
        in_channels: i64,
        out_channels: i64,
        kind: Kind,
    ) -> Vec<TensorSpec> {
        let [conv_in, conv_out, resi] = Self::specs(opts, in_channels, out_channels);
        let inter = conv_in.out_channels;
        let conv_in = conv_in.layout(&format!("{prefix}.conv_in"), kind);
        let bn_in = Norm2d::layout(&format!("{prefix}.bn_in"), inter, opts.batch_norm, kind);
        let dec_att = if opts.deformable_aspp {
            AsppDeformable::layout(&format!("{prefix}.dec_att"), inter, opts.batch_norm, kind)
        } else {
            Vec::new()
        };
        let conv_out = conv_out.layout(&format!("{prefix}.conv_out"), kind);
        let bn_out = Norm2d::layout(
            &format!("{prefix}.bn_out"),
            out_channels,
            opts.batch_norm,
            kind,
        );
        match opts.kind {
            DecoderBlockKind::BasicDecBlk => [conv_in, dec_att, conv_out, bn_in, bn_out].concat(),
            DecoderBlockKind::ResBlk => [
                conv_in,
                bn_in,
                dec_att,
                conv_out,
                bn_out,
                resi.layout(&format!("{prefix}.conv_resi"), kind),
            ]
            .concat(),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.bn_in.forward(&self.conv_in.forward(x)?)?.f_relu()?;
        if let Some(att) = &self.dec_att {
            h = att.forward(&h)?;
        }
        let h = self.bn_out.forward(&self.conv_out.forward(&h)?)?;
        match &self.conv_resi {
            Some(resi) => Ok(h.f_add(&resi.forward(x)?)?),
            None => Ok(h),
        }
    }
}
