//! Resolution changes of sparse tensors (trellis/modules/sparse/spatial.py):
//! [`SparseDownsample`] (average pooling with the reference's `include_self` mean),
//! [`SparseUpsample`] (its nearest-neighbour inverse) and [`SparseSubdivide`] (each voxel
//! into its 2×2×2 children).

use std::sync::{Arc, Weak};

use tch::{Device, Kind, Tensor};

use super::basic::{CacheEntry, SparseTensor, SpatialLevel};
use crate::error::{Error, Result};
use crate::nn::group_sum::GroupedRows;

/// What a [`SparseDownsample`] leaves on the coarse level for the paired
/// [`SparseUpsample`]: the fine coordinates and level, and each fine row's coarse row.
///
/// The fine level is held weakly: the fine level holds the coarse one (its
/// [`DownsampleRecord`]), and a strong handle back would make the pair a cycle that is never
/// freed. An upsample after the fine tensors are all gone gets a fresh level for the same
/// coordinates (same values, an empty cache).
struct UpsampleRecord {
    fine_coords: Tensor,
    fine_level: Weak<SpatialLevel>,
    coarse_row: Tensor,
}

impl CacheEntry for UpsampleRecord {
    fn share(&self) -> Self {
        Self {
            fine_coords: self.fine_coords.shallow_clone(),
            fine_level: self.fine_level.clone(),
            coarse_row: self.coarse_row.shallow_clone(),
        }
    }
}

/// What a [`SparseDownsample`] leaves on the fine level, so that downsampling the same voxels
/// again (every step of a flow sampler) is only the pooling: no extents read back, no
/// `unique`, and the coarse level, with everything cached on it (kernel maps, batch layout),
/// is reused.
struct DownsampleRecord {
    coarse_coords: Tensor,
    coarse_level: Arc<SpatialLevel>,
    /// The fine rows grouped by coarse row, for the pooling's sums.
    children: GroupedRows,
    /// `1 + children` of every coarse row, int64 `[N_coarse]`: the pooling's divisor.
    divisor: Tensor,
}

impl CacheEntry for DownsampleRecord {
    fn share(&self) -> Self {
        Self {
            coarse_coords: self.coarse_coords.shallow_clone(),
            coarse_level: self.coarse_level.clone(),
            children: self.children.share(),
            divisor: self.divisor.shallow_clone(),
        }
    }
}

fn upsample_key(factor: [i64; 3]) -> String {
    format!("upsample_{factor:?}")
}

fn downsample_key(factor: [i64; 3]) -> String {
    format!("downsample_{factor:?}")
}

fn check_factor(factor: [i64; 3]) -> Result<[i64; 3]> {
    if factor.iter().any(|&f| f < 1) {
        return Err(Error::invalid_argument(format!(
            "sparse resampling factor must be positive, got {factor:?}"
        )));
    }
    Ok(factor)
}

/// `SparseDownsample(factor)`: voxel (b, x, y, z) goes to (b, x/f, y/f, z/f) (floor); the
/// coarse voxels are sorted by (b, x, y, z) and each takes `sum(children) / (n_children + 1)`.
/// That is the reference's `scatter_reduce(zeros, .., 'mean')` with PyTorch's default
/// `include_self=True`: the zero it starts from counts as one more element.
pub struct SparseDownsample {
    factor: [i64; 3],
}

impl SparseDownsample {
    /// The same factor on every axis (the networks use 2).
    pub fn new(factor: i64) -> Result<Self> {
        Self::with_factors([factor; 3])
    }

    pub fn with_factors(factor: [i64; 3]) -> Result<Self> {
        Ok(Self {
            factor: check_factor(factor)?,
        })
    }

    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        if x.num_rows() == 0 {
            return Err(Error::invalid_argument(
                "SparseDownsample of an empty tensor",
            ));
        }
        let record = x.cached(&downsample_key(self.factor), || self.coarsen(x))?;
        let feats = mean_including_zero(x.feats(), &record.children, &record.divisor)?;
        Ok(SparseTensor::on_level(
            feats,
            record.coarse_coords,
            record.coarse_level,
        ))
    }

    /// The coarse voxels of `x` and its rows' map onto them, on a new level that carries the
    /// record the paired [`SparseUpsample`] needs.
    fn coarsen(&self, x: &SparseTensor) -> Result<DownsampleRecord> {
        let coords = x.coords().f_to_kind(Kind::Int64)?;
        let batch = coords.f_select(1, 0)?;
        let factor = Tensor::f_from_slice(&[1i64, self.factor[0], self.factor[1], self.factor[2]])?
            .f_to_device(coords.device())?;
        let coarse = coords.f_div_tensor_mode(&factor, "floor")?;
        // Grid extents of the coarse voxels (x, y, z), as the reference takes them.
        let extent = Vec::<i64>::try_from(
            &coarse
                .f_narrow(1, 1, 3)?
                .f_amax([0].as_slice(), false)?
                .f_add_scalar(1)?
                .f_to_device(Device::Cpu)?,
        )?;
        let (ex, ey, ez) = (extent[0], extent[1], extent[2]);
        let code = batch.f_mul_scalar(ex * ey * ez)?
            + coarse.f_select(1, 1)?.f_mul_scalar(ey * ez)?
            + coarse.f_select(1, 2)?.f_mul_scalar(ez)?
            + coarse.f_select(1, 3)?;
        let (code, coarse_row, _) = code.f_internal_unique2(true, true, false)?;
        let coarse_coords = Tensor::f_stack(
            &[
                code.f_div_scalar_mode(ex * ey * ez, "floor")?,
                code.f_div_scalar_mode(ey * ez, "floor")?.f_remainder(ex)?,
                code.f_div_scalar_mode(ez, "floor")?.f_remainder(ey)?,
                code.f_remainder(ez)?,
            ],
            1,
        )?
        .f_to_kind(Kind::Int)?;
        let divisor = coarse_row
            .f_bincount::<Tensor>(None, code.size()[0])?
            .f_add_scalar(1)?;
        // The batch layout of the coarse voxels is read from them when first needed.
        let coarse_level = SpatialLevel::with_pending_layout(x.batch_size());
        coarse_level.cache_insert(
            &upsample_key(self.factor),
            UpsampleRecord {
                fine_coords: x.coords().shallow_clone(),
                fine_level: Arc::downgrade(x.level()),
                coarse_row: coarse_row.shallow_clone(),
            },
        );
        Ok(DownsampleRecord {
            children: GroupedRows::new(&coarse_row, code.size()[0])?,
            coarse_coords,
            coarse_level,
            divisor,
        })
    }
}

/// Per coarse row r: `sum(feats[i] for coarse_row[i] == r) / divisor[r]` (`divisor` is the
/// count plus one), in the features' dtype, summing rows in order from zero as
/// `scatter_reduce` does (on CUDA in the same order at every run, see [`GroupedRows`]).
fn mean_including_zero(feats: &Tensor, children: &GroupedRows, divisor: &Tensor) -> Result<Tensor> {
    let rows = divisor.size()[0];
    let sums = children.sum(feats)?;
    let mut divisor_shape = vec![rows];
    divisor_shape.resize(feats.dim(), 1);
    let divisor = divisor
        .f_to_kind(feats.kind())?
        .f_reshape(divisor_shape.as_slice())?;
    Ok(sums.f_div(&divisor)?)
}

/// `SparseUpsample(factor)`: back to the fine voxels of the paired [`SparseDownsample`] (same
/// coordinates, order, layout and spatial cache), each taking its coarse voxel's features.
pub struct SparseUpsample {
    factor: [i64; 3],
}

impl SparseUpsample {
    pub fn new(factor: i64) -> Result<Self> {
        Self::with_factors([factor; 3])
    }

    pub fn with_factors(factor: [i64; 3]) -> Result<Self> {
        Ok(Self {
            factor: check_factor(factor)?,
        })
    }

    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let record = x
            .cache_get::<UpsampleRecord>(&upsample_key(self.factor))?
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "SparseUpsample({:?}) needs a tensor made by SparseDownsample({:?}) \
                     (no upsample map on this level)",
                    self.factor, self.factor
                ))
            })?;
        let feats = x.feats().f_index_select(0, &record.coarse_row)?;
        let fine_level = match record.fine_level.upgrade() {
            Some(level) => level,
            None => SpatialLevel::with_pending_layout(x.batch_size()),
        };
        Ok(SparseTensor::on_level(
            feats,
            record.fine_coords,
            fine_level,
        ))
    }
}

/// `SparseSubdivide`: voxel (b, x, y, z) at row r becomes its 8 children
/// (b, 2x+i, 2y+j, 2z+k) at rows 8r + (4i + 2j + k), each with the parent's features. The
/// result keeps the batch layout (×8) but is not sorted by coordinate.
#[derive(Debug, Default, Clone, Copy)]
pub struct SparseSubdivide;

impl SparseSubdivide {
    pub fn new() -> Self {
        Self
    }

    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let device = x.coords().device();
        // (0, i, j, k) for i, j, k in {0, 1}, k fastest: the order of nonzero(ones(2, 2, 2)).
        let children: Vec<i32> = (0..8)
            .flat_map(|c| [0, (c >> 2) & 1, (c >> 1) & 1, c & 1])
            .collect();
        let children = Tensor::f_from_slice(&children)?
            .f_reshape([1, 8, 4])?
            .f_to_device(device)?;
        let scale = Tensor::f_from_slice(&[1i32, 2, 2, 2])?.f_to_device(device)?;
        let coords = x
            .coords()
            .f_mul(&scale)?
            .f_unsqueeze(1)?
            .f_add(&children)?
            .f_reshape([-1, 4])?;
        let feats = x.feats().f_repeat_interleave_self_int(8, 0, None)?;
        let offsets = x.batch_offsets()?.iter().map(|o| o * 8).collect();
        Ok(SparseTensor::on_level(
            feats,
            coords,
            SpatialLevel::with_offsets(offsets),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fine_and_coarse_levels_are_freed_together() {
        let coords = Tensor::f_from_slice(&[0i32, 0, 0, 0, 0, 1, 0, 0, 0, 2, 3, 1])
            .unwrap()
            .reshape([3, 4]);
        let fine =
            SparseTensor::new(Tensor::ones([3, 2], (Kind::Float, Device::Cpu)), coords).unwrap();
        let coarse = SparseDownsample::new(2).unwrap().forward(&fine).unwrap();
        let (fine_level, coarse_level) =
            (Arc::downgrade(fine.level()), Arc::downgrade(coarse.level()));
        // The fine level keeps the coarse one for the next downsample of the same voxels.
        drop(coarse);
        assert!(coarse_level.upgrade().is_some());
        drop(fine);
        assert!(fine_level.upgrade().is_none(), "the fine level leaked");
        assert!(coarse_level.upgrade().is_none(), "the coarse level leaked");
    }
}
