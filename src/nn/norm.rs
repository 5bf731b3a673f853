//! Normalisation layers computed in fp32 whatever the activation dtype (the reference's
//! `LayerNorm32`, `GroupNorm32`, `ChannelLayerNorm32`), the result cast back.

use tch::{Kind, Tensor};

use crate::cuda::fused::{self, RowGroups};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// PyTorch's default eps for `nn.LayerNorm` / `nn.GroupNorm`.
const TORCH_NORM_EPS: f64 = 1e-5;

/// `LayerNorm32(C, elementwise_affine, eps)`: LayerNorm over the last axis, computed in fp32
/// and cast back to the input dtype.
pub struct LayerNorm32 {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    channels: i64,
    eps: f64,
}

impl LayerNorm32 {
    /// With affine parameters `weight` and `bias` `[C]`.
    pub fn new(weights: &Weights, channels: i64, eps: f64) -> Result<Self> {
        let weights = weights.with_kind(Kind::Float);
        Ok(Self {
            weight: Some(weights.get(&[channels], "weight")?),
            bias: Some(weights.get(&[channels], "bias")?),
            channels,
            eps,
        })
    }

    /// Without affine parameters (`elementwise_affine=False`).
    pub fn without_affine(channels: i64, eps: f64) -> Self {
        Self {
            weight: None,
            bias: None,
            channels,
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(h) = self.fused(x, None)? {
            return Ok(h);
        }
        let h = x.f_to_kind(Kind::Float)?.f_layer_norm(
            [self.channels],
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
            true,
        )?;
        Ok(h.f_to_kind(x.kind())?)
    }

    /// The fused CUDA kernel for this norm, followed by adaLN's `h · (1 + scale) + shift`
    /// when `modulation` is given, or `None` where it does not apply (see
    /// [`fused::layer_norm_modulate`]); the caller then composes the unfused ops.
    pub fn fused(
        &self,
        x: &Tensor,
        modulation: Option<(&Tensor, &Tensor, RowGroups<'_>)>,
    ) -> Result<Option<Tensor>> {
        if x.size().last() != Some(&self.channels) {
            return Ok(None);
        }
        fused::layer_norm_modulate(
            x,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
            modulation,
        )
    }

    /// This norm over each head of q or k, then optionally VGGT's 2-D RoPE, in one CUDA
    /// kernel ([`fused::qk_norm_rope`]; affine norms only): `x` the `[B, N, H, D]` view inside
    /// the qkv projection, the result `[B, H, N, D]`. `None` where the kernel does not apply.
    pub fn fused_heads_rope(
        &self,
        x: &Tensor,
        rope: Option<[&Tensor; 4]>,
    ) -> Result<Option<Tensor>> {
        match (&self.weight, &self.bias) {
            (Some(weight), Some(bias)) if x.size().last() == Some(&self.channels) => {
                fused::qk_norm_rope(x, weight, bias, self.eps, rope)
            }
            _ => Ok(None),
        }
    }
}

/// `ChannelLayerNorm32(C)`: LayerNorm over the channel axis of `[B, C, *spatial]`.
pub struct ChannelLayerNorm32 {
    weight: Tensor,
    bias: Tensor,
    channels: i64,
}

impl ChannelLayerNorm32 {
    pub fn new(weights: &Weights, channels: i64) -> Result<Self> {
        let weights = weights.with_kind(Kind::Float);
        Ok(Self {
            weight: weights.get(&[channels], "weight")?,
            bias: weights.get(&[channels], "bias")?,
            channels,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dim() as i64;
        // [B, C, ...] -> [B, ..., C], normalise the last axis, and back.
        let to_last: Vec<i64> = std::iter::once(0)
            .chain(2..dims)
            .chain(std::iter::once(1))
            .collect();
        let to_first: Vec<i64> = std::iter::once(0)
            .chain(std::iter::once(dims - 1))
            .chain(1..dims - 1)
            .collect();
        let h = x.f_to_kind(Kind::Float)?.f_permute(&to_last)?;
        let h = h.f_layer_norm(
            [self.channels],
            Some(&self.weight),
            Some(&self.bias),
            TORCH_NORM_EPS,
            true,
        )?;
        Ok(h.f_permute(&to_first)?
            .f_contiguous()?
            .f_to_kind(x.kind())?)
    }
}

/// `GroupNorm32(groups, C)`: affine GroupNorm in fp32.
pub struct GroupNorm32 {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
}

impl GroupNorm32 {
    pub fn new(weights: &Weights, groups: i64, channels: i64) -> Result<Self> {
        if groups <= 0 || channels % groups != 0 {
            return Err(Error::checkpoint(format!(
                "GroupNorm: {channels} channels cannot be split into {groups} groups"
            )));
        }
        let weights = weights.with_kind(Kind::Float);
        Ok(Self {
            weight: weights.get(&[channels], "weight")?,
            bias: weights.get(&[channels], "bias")?,
            groups,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.f_to_kind(Kind::Float)?.f_group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            TORCH_NORM_EPS,
            true,
        )?;
        Ok(h.f_to_kind(x.kind())?)
    }
}

/// The reference's `norm_layer(norm_type, C)`: "layer" or "group" (32 groups).
pub enum Norm {
    Layer(ChannelLayerNorm32),
    Group(GroupNorm32),
}

impl Norm {
    pub fn new(weights: &Weights, norm_type: &str, channels: i64) -> Result<Self> {
        match norm_type {
            "layer" => Ok(Self::Layer(ChannelLayerNorm32::new(weights, channels)?)),
            "group" => Ok(Self::Group(GroupNorm32::new(weights, 32, channels)?)),
            other => Err(Error::checkpoint(format!(
                "norm_type '{other}' is not one of \"layer\", \"group\""
            ))),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Layer(n) => n.forward(x),
            Self::Group(n) => n.forward(x),
        }
    }
}
