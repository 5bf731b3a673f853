//! Normalisation of sparse features per batch item, in fp32 (trellis/modules/sparse/norm.py:
//! `SparseGroupNorm32`, `SparseLayerNorm32`): each batch item's rows are viewed as a
//! `[1, C, N_b]` tensor, normalised by the dense layer and written back; the result is cast
//! to the input dtype.

use tch::{Kind, Tensor};

use super::SparseTensor;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// PyTorch's default eps for `nn.GroupNorm` / `nn.LayerNorm`.
const TORCH_NORM_EPS: f64 = 1e-5;

/// Affine parameters `weight`, `bias` `[C]` (fp32), or none.
struct Affine {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
}

impl Affine {
    fn load(weights: &Weights, channels: i64) -> Result<Self> {
        let weights = weights.with_kind(Kind::Float);
        Ok(Self {
            weight: Some(weights.get(&[channels], "weight")?),
            bias: Some(weights.get(&[channels], "bias")?),
        })
    }

    fn none() -> Self {
        Self {
            weight: None,
            bias: None,
        }
    }
}

/// `SparseGroupNorm32(num_groups, C, eps=1e-5, affine)`: GroupNorm of each batch item over its
/// own voxels (statistics over C / groups channels × N_b voxels).
pub struct SparseGroupNorm32 {
    affine: Affine,
    groups: i64,
    channels: i64,
    eps: f64,
}

impl SparseGroupNorm32 {
    /// Affine, eps 1e-5: `weight` and `bias` `[C]` under `weights`.
    pub fn new(weights: &Weights, groups: i64, channels: i64) -> Result<Self> {
        check_groups(groups, channels)?;
        Ok(Self {
            affine: Affine::load(weights, channels)?,
            groups,
            channels,
            eps: TORCH_NORM_EPS,
        })
    }

    /// Without affine parameters.
    pub fn without_affine(groups: i64, channels: i64, eps: f64) -> Result<Self> {
        check_groups(groups, channels)?;
        Ok(Self {
            affine: Affine::none(),
            groups,
            channels,
            eps,
        })
    }

    /// GroupNorm of each batch item in fp32, written back in the input dtype.
    ///
    /// Computed on the `[N_b, C]` rows as the fused form `x · scale[c] + shift[c]` (with
    /// `scale = rstd[g] · weight[c]`, `shift = bias[c] − mean[g] · scale`, the statistics
    /// population mean and variance over the group's channels × the item's voxels), which is
    /// how libtorch's GroupNorm kernels compute it too. Unlike running the dense layer on a
    /// `[1, C, N_b]` copy, no transposed or concatenated fp32 copies are made: at 256³ the
    /// mesh decoder's last norm holds ~1.2 M voxels, and those copies were 1 GB of its peak.
    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        check_channels("SparseGroupNorm32", x, self.channels)?;
        let layout = x.layout()?;
        if let [rows] = layout.as_slice() {
            if rows.start == 0 && rows.end == x.num_rows() {
                return x.replace(self.normalise(x.feats())?);
            }
        }
        let out = x.feats().f_empty_like()?;
        for rows in layout {
            let len = rows.end - rows.start;
            if len == 0 {
                continue;
            }
            let item = x.feats().f_narrow(0, rows.start, len)?;
            out.f_narrow(0, rows.start, len)?
                .f_copy_(&self.normalise(&item)?)?;
        }
        x.replace(out)
    }

    /// One batch item's rows `[N_b, C]` normalised, in their dtype.
    fn normalise(&self, rows: &Tensor) -> Result<Tensor> {
        let (n, c) = (rows.size()[0], self.channels);
        let x = rows.f_to_kind(Kind::Float)?;
        let (var, mean) = x
            .f_view([n, self.groups, c / self.groups])?
            .f_var_mean_correction([0i64, 2].as_slice(), 0, false)?;
        let rstd = var.f_add_scalar(self.eps)?.f_rsqrt()?;
        let per_channel = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_repeat_interleave_self_int(c / self.groups, 0, None)?)
        };
        let mut scale = per_channel(&rstd)?;
        if let Some(weight) = &self.affine.weight {
            scale = scale.f_mul(weight)?;
        }
        let mut shift = per_channel(&mean)?.f_mul(&scale)?.f_neg()?;
        if let Some(bias) = &self.affine.bias {
            shift = shift.f_add(bias)?;
        }
        Ok(shift.f_addcmul(&x, &scale)?.f_to_kind(rows.kind())?)
    }
}

/// `SparseLayerNorm32(C, eps=1e-5, elementwise_affine)`, exactly as the reference computes
/// it: `nn.LayerNorm((C,))` applied to each batch item's `[1, C, N_b]` view, i.e. over its
/// **last** axis, the voxels. That is only defined when the item has exactly C voxels (the
/// reference raises otherwise, and so does this). The TRELLIS networks do not use this
/// module; they normalise each voxel's features with the dense `LayerNorm32` on `feats`.
pub struct SparseLayerNorm32 {
    affine: Affine,
    channels: i64,
    eps: f64,
}

impl SparseLayerNorm32 {
    /// Affine, eps 1e-5: `weight` and `bias` `[C]` under `weights`.
    pub fn new(weights: &Weights, channels: i64) -> Result<Self> {
        Ok(Self {
            affine: Affine::load(weights, channels)?,
            channels,
            eps: TORCH_NORM_EPS,
        })
    }

    /// Without affine parameters.
    pub fn without_affine(channels: i64, eps: f64) -> Self {
        Self {
            affine: Affine::none(),
            channels,
            eps,
        }
    }

    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        check_channels("SparseLayerNorm32", x, self.channels)?;
        per_batch_item(x, |b, item| {
            let voxels = item.size()[2];
            if voxels != self.channels {
                return Err(Error::invalid_argument(format!(
                    "SparseLayerNorm32({c}) normalises each batch item's [1, C, N_b] view over \
                     its last axis, which needs N_b == {c}; batch item {b} has {voxels} voxels",
                    c = self.channels
                )));
            }
            Ok(item.f_layer_norm(
                [self.channels],
                self.affine.weight.as_ref(),
                self.affine.bias.as_ref(),
                self.eps,
                true,
            )?)
        })
    }
}

fn check_groups(groups: i64, channels: i64) -> Result<()> {
    if groups <= 0 || channels % groups != 0 {
        return Err(Error::checkpoint(format!(
            "SparseGroupNorm32: {channels} channels cannot be split into {groups} groups"
        )));
    }
    Ok(())
}

fn check_channels(module: &str, x: &SparseTensor, channels: i64) -> Result<()> {
    let size = x.feats().size();
    if size.len() != 2 || size[1] != channels {
        return Err(Error::invalid_argument(format!(
            "{module}({channels}): features must be [N, {channels}], got {size:?}"
        )));
    }
    Ok(())
}

/// Applies `norm` to every non-empty batch item as `[1, C, N_b]` in fp32, and reassembles the
/// rows in the input dtype.
fn per_batch_item(
    x: &SparseTensor,
    norm: impl Fn(usize, &Tensor) -> Result<Tensor>,
) -> Result<SparseTensor> {
    let feats = x.feats().f_to_kind(Kind::Float)?;
    let channels = x.channels();
    let mut parts = Vec::with_capacity(x.batch_size());
    for (b, rows) in x.layout()?.into_iter().enumerate() {
        let len = rows.end - rows.start;
        if len == 0 {
            continue;
        }
        let item = feats
            .f_narrow(0, rows.start, len)?
            .f_transpose(0, 1)?
            .f_reshape([1, channels, len])?;
        let normed = norm(b, &item)?;
        parts.push(normed.f_reshape([channels, len])?.f_transpose(0, 1)?);
    }
    let out = if parts.is_empty() {
        feats.f_zeros_like()?
    } else {
        Tensor::f_cat(&parts, 0)?
    };
    x.replace(out.f_to_kind(x.kind())?)
}
