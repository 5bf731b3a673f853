//! `models/modules/lateral_blocks.py`: `BasicLatBlk`, the 1×1 convolution (with bias) that
//! brings an encoder feature to the decoder's width before it is added.

use tch::{Kind, Tensor};

use super::layers::{Conv2d, Conv2dSpec};
use crate::error::Result;
use crate::nn::layout::TensorSpec;
use crate::weights::Weights;

pub(crate) struct BasicLatBlk {
    conv: Conv2d,
}

impl BasicLatBlk {
    pub fn new(weights: &Weights, in_channels: i64, out_channels: i64) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(
                &weights.pp("conv"),
                Conv2dSpec::new(in_channels, out_channels, 1),
            )?,
        })
    }

    pub fn layout(
        prefix: &str,
        in_channels: i64,
        out_channels: i64,
        kind: Kind,
    ) -> Vec<TensorSpec> {
        Conv2dSpec::new(in_channels, out_channels, 1).layout(&format!("{prefix}.conv"), kind)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}
