//! Dense 3D convolution (`nn.Conv3d` with stride 1 and "same" padding for odd kernels).

use tch::Tensor;

use crate::error::Result;
use crate::weights::Weights;

/// `nn.Conv3d(in, out, k, padding=k/2)`: weight `[out, in, k, k, k]`, bias `[out]`.
pub struct Conv3d {
    weight: Tensor,
    bias: Tensor,
    padding: i64,
}

impl Conv3d {
    pub fn new(
        weights: &Weights,
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
    ) -> Result<Self> {
        let weight = weights.get(
            &[out_channels, in_channels, kernel, kernel, kernel],
            "weight",
        )?;
        let bias = weights.get(&[out_channels], "bias")?;
        Ok(Self {
            weight,
            bias,
            padding: kernel / 2,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.padding;
        Ok(x.f_conv3d(
            &self.weight,
            Some(&self.bias),
            [1, 1, 1],
            [p, p, p],
            [1, 1, 1],
            1,
        )?)
    }
}
