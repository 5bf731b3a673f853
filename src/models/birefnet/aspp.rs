//! `models/modules/aspp.py`: `ASPPDeformable`, the attention of BiRefNet's decoder blocks.
//! Parallel branches over the same input — a 1×1 deformable convolution (`aspp1`), deformable
//! convolutions of kernel 1, 3 and 7 (`aspp_deforms`) and the global average (`global_avg_pool`,
//! a 1×1 convolution of the mean, spread back over the map) — each with BatchNorm and ReLU,
//! concatenated and fused by a 1×1 convolution, BatchNorm and ReLU. Dropout is inert in eval.

use tch::{Kind, Tensor};

use super::deform_conv::DeformableConv2d;
use super::layers::{Conv2d, Conv2dSpec, Norm2d};
use crate::error::Result;
use crate::nn::layout::TensorSpec;
use crate::weights::Weights;

/// Channels of every branch (`self.in_channelster = 256 // self.down_scale`, fixed upstream).
pub const ASPP_BRANCH_CHANNELS: i64 = 256;
/// Kernel sizes of the `aspp_deforms` branches (`parallel_block_sizes=[1, 3, 7]`).
pub const ASPP_DEFORM_KERNELS: [i64; 3] = [1, 3, 7];

/// `_ASPPModuleDeformable`: deformable convolution (no bias), BatchNorm, ReLU.
struct DeformableBranch {
    atrous_conv: DeformableConv2d,
    bn: Norm2d,
}

impl DeformableBranch {
    fn spec(in_channels: i64, kernel: i64) -> Conv2dSpec {
        Conv2dSpec::new(in_channels, ASPP_BRANCH_CHANNELS, kernel)
            .padding(kernel / 2)
            .without_bias()
    }

    fn new(weights: &Weights, in_channels: i64, kernel: i64, batch_norm: bool) -> Result<Self> {
        Ok(Self {
            atrous_conv: DeformableConv2d::new(
                &weights.pp("atrous_conv"),
                Self::spec(in_channels, kernel),
            )?,
            bn: Norm2d::new(&weights.pp("bn"), ASPP_BRANCH_CHANNELS, batch_norm)?,
        })
    }

    fn layout(
        prefix: &str,
        in_channels: i64,
        kernel: i64,
        batch_norm: bool,
        kind: Kind,
    ) -> Vec<TensorSpec> {
        let mut specs = DeformableConv2d::layout(
            &format!("{prefix}.atrous_conv"),
            Self::spec(in_channels, kernel),
            kind,
        );
        specs.extend(Norm2d::layout(
            &format!("{prefix}.bn"),
            ASPP_BRANCH_CHANNELS,
            batch_norm,
            kind,
        ));
        specs
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.bn.forward(&self.atrous_conv.forward(x)?)?.f_relu()?)
    }
}

/// `ASPPDeformable(in_channels)` with `out_channels = in_channels`, as BiRefNet's blocks build
/// it.
pub(crate) struct AsppDeformable {
    aspp1: DeformableBranch,
    aspp_deforms: Vec<DeformableBranch>,
    pool_conv: Conv2d,
    pool_bn: Norm2d,
    conv1: Conv2d,
    bn1: Norm2d,
}

impl AsppDeformable {
    fn pool_spec(in_channels: i64) -> Conv2dSpec {
        Conv2dSpec::new(in_channels, ASPP_BRANCH_CHANNELS, 1).without_bias()
    }

    fn fuse_spec(in_channels: i64) -> Conv2dSpec {
        let branches = 2 + ASPP_DEFORM_KERNELS.len() as i64;
        Conv2dSpec::new(branches * ASPP_BRANCH_CHANNELS, in_channels, 1).without_bias()
    }

    pub fn new(weights: &Weights, in_channels: i64, batch_norm: bool) -> Result<Self> {
        let aspp_deforms = ASPP_DEFORM_KERNELS
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                DeformableBranch::new(
                    &weights.pp("aspp_deforms").pp(i),
                    in_channels,
                    k,
                    batch_norm,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let pool = weights.pp("global_avg_pool");
        Ok(Self {
            aspp1: DeformableBranch::new(&weights.pp("aspp1"), in_channels, 1, batch_norm)?,
            aspp_deforms,
            pool_conv: Conv2d::new(&pool.pp(1), Self::pool_spec(in_channels))?,
            pool_bn: Norm2d::new(&pool.pp(2), ASPP_BRANCH_CHANNELS, batch_norm)?,
            conv1: Conv2d::new(&weights.pp("conv1"), Self::fuse_spec(in_channels))?,
            bn1: Norm2d::new(&weights.pp("bn1"), in_channels, batch_norm)?,
        })
    }

    pub fn layout(prefix: &str, in_channels: i64, batch_norm: bool, kind: Kind) -> Vec<TensorSpec> {
        let mut specs =
            DeformableBranch::layout(&format!("{prefix}.aspp1"), in_channels, 1, batch_norm, kind);
        for (i, &k) in ASPP_DEFORM_KERNELS.iter().enumerate() {
            specs.extend(DeformableBranch::layout(
                &format!("{prefix}.aspp_deforms.{i}"),
                in_channels,
                k,
                batch_norm,
                kind,
            ));
        }
        specs.extend(
            Self::pool_spec(in_channels).layout(&format!("{prefix}.global_avg_pool.1"), kind),
        );
        specs.extend(Norm2d::layout(
            &format!("{prefix}.global_avg_pool.2"),
            ASPP_BRANCH_CHANNELS,
            batch_norm,
            kind,
        ));
        specs.extend(Self::fuse_spec(in_channels).layout(&format!("{prefix}.conv1"), kind));
        specs.extend(Norm2d::layout(
            &format!("{prefix}.bn1"),
            in_channels,
            batch_norm,
            kind,
        ));
        specs
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut branches = vec![self.aspp1.forward(x)?];
        for branch in &self.aspp_deforms {
            branches.push(branch.forward(x)?);
        }
        // The pooled branch is 1×1; upsampling it (bilinear, align_corners) copies it everywhere.
        let pooled = self
            .pool_bn
            .forward(&self.pool_conv.forward(&x.f_adaptive_avg_pool2d([1, 1])?)?)?
            .f_relu()?;
        branches.push(pooled.f_expand_as(&branches[0])?);
        let fused = self.conv1.forward(&Tensor::f_cat(&branches, 1)?)?;
        Ok(self.bn1.forward(&fused)?.f_relu()?)
    }
}
