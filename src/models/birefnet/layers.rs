//! The torch layers BiRefNet's modules are made of that recon's `nn` does not have in 2D:
//! `nn.Conv2d`, and `nn.BatchNorm2d` in eval mode (or `nn.Identity` where the reference's config
//! leaves it out: its modules write `nn.BatchNorm2d(c) if config.batch_size > 1 else
//! nn.Identity()`).

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::nn::layout::TensorSpec;
use crate::weights::Weights;

/// PyTorch's default eps for `nn.BatchNorm2d` and `nn.LayerNorm`.
pub(crate) const TORCH_NORM_EPS: f64 = 1e-5;

/// The arguments of one `nn.Conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conv2dSpec {
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub dilation: [i64; 2],
    pub bias: bool,
}

impl Conv2dSpec {
    /// `nn.Conv2d(in, out, k)`: square kernel, stride 1, no padding, with a bias.
    pub fn new(in_channels: i64, out_channels: i64, kernel: i64) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            bias: true,
        }
    }

    pub fn padding(self, padding: i64) -> Self {
        Self {
            padding: [padding, padding],
            ..self
        }
    }

    pub fn stride(self, stride: i64) -> Self {
        Self {
            stride: [stride, stride],
            ..self
        }
    }

    pub fn without_bias(self) -> Self {
        Self {
            bias: false,
            ..self
        }
    }

    fn weight_shape(&self) -> [i64; 4] {
        [
            self.out_channels,
            self.in_channels,
            self.kernel[0],
            self.kernel[1],
        ]
    }

    /// The tensors the conv reads under `prefix`.
    pub fn layout(&self, prefix: &str, kind: Kind) -> Vec<TensorSpec> {
        let mut specs = vec![TensorSpec::new(
            format!("{prefix}.weight"),
            &self.weight_shape(),
            kind,
        )];
        if self.bias {
            specs.push(TensorSpec::new(
                format!("{prefix}.bias"),
                &[self.out_channels],
                kind,
            ));
        }
        specs
    }
}

/// `nn.Conv2d`.
pub(crate) struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    spec: Conv2dSpec,
}

impl Conv2d {
    pub fn new(weights: &Weights, spec: Conv2dSpec) -> Result<Self> {
        let bias = if spec.bias {
            Some(weights.get(&[spec.out_channels], "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight: weights.get(&spec.weight_shape(), "weight")?,
            bias,
            spec,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv2d(
            &self.weight,
            self.bias.as_ref(),
            self.spec.stride,
            self.spec.padding,
            self.spec.dilation,
            1,
        )?)
    }
}

/// `nn.BatchNorm2d(C)` in eval mode: `(x − running_mean) / √(running_var + eps) · weight +
/// bias`, per channel of `[B, C, H, W]`.
pub(crate) struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm2d {
    pub fn new(weights: &Weights, channels: i64) -> Result<Self> {
        Ok(Self {
            weight: weights.get(&[channels], "weight")?,
            bias: weights.get(&[channels], "bias")?,
            running_mean: weights.get(&[channels], "running_mean")?,
            running_var: weights.get(&[channels], "running_var")?,
        })
    }

    /// The float tensors under `prefix` (the file also holds the int64 `num_batches_tracked`,
    /// which eval mode never reads).
    pub fn layout(prefix: &str, channels: i64, kind: Kind) -> Vec<TensorSpec> {
        ["weight", "bias", "running_mean", "running_var"]
            .into_iter()
            .map(|name| TensorSpec::new(format!("{prefix}.{name}"), &[channels], kind))
            .collect()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.1,
            TORCH_NORM_EPS,
            true,
        )?)
    }
}

/// `nn.BatchNorm2d(C) if config.batch_size > 1 else nn.Identity()`.
pub(crate) enum Norm2d {
    Batch(BatchNorm2d),
    Identity,
}

impl Norm2d {
    pub fn new(weights: &Weights, channels: i64, batch_norm: bool) -> Result<Self> {
        Ok(if batch_norm {
            Self::Batch(BatchNorm2d::new(weights, channels)?)
        } else {
            Self::Identity
        })
    }

    pub fn layout(prefix: &str, channels: i64, batch_norm: bool, kind: Kind) -> Vec<TensorSpec> {
        if batch_norm {
            BatchNorm2d::layout(prefix, channels, kind)
        } else {
            Vec::new()
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Batch(bn) => bn.forward(x),
            Self::Identity => Ok(x.shallow_clone()),
        }
    }
}

/// `F.interpolate(x, size, mode='bilinear', align_corners=True)` of `[B, C, H, W]`: how
/// BiRefNet resizes every feature map.
pub(crate) fn resize_bilinear(x: &Tensor, size: [i64; 2]) -> Result<Tensor> {
    Ok(x.f_upsample_bilinear2d(size, true, None, None)?)
}

/// The spatial size `[H, W]` of `[B, C, H, W]`.
pub(crate) fn spatial_size(x: &Tensor) -> Result<[i64; 2]> {
    match x.size()[..] {
        [_, _, h, w] => Ok([h, w]),
        ref other => Err(crate::error::Error::invalid_argument(format!(
            "expected a [B, C, H, W] feature map, got shape {other:?}"
        ))),
    }
}
