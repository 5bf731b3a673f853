//! `SparseTensor` (trellis/modules/sparse/basic.py): voxel coordinates plus per-voxel
//! features, batch items stored as contiguous row ranges, and a cache of whatever is derived
//! from the coordinates alone (kernel maps, down/upsample maps, attention partitions).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// A value the spatial cache can hold: `share` hands out another handle to the same data
/// (tensors are shared with `shallow_clone`, never copied).
pub trait CacheEntry: Send + 'static {
    fn share(&self) -> Self;
}

impl CacheEntry for Tensor {
    fn share(&self) -> Self {
        self.shallow_clone()
    }
}

impl CacheEntry for Vec<i64> {
    fn share(&self) -> Self {
        self.clone()
    }
}

/// Everything a coordinate set determines: the batch layout and the cache of derived
/// structures. Shared (`Arc`) by every tensor with these coordinates: `replace` keeps it,
/// `SparseUpsample` returns to the finer level it came from, and a new coordinate set
/// (downsample, subdivide, batch concatenation) starts a new one.
///
/// The reference keys one shared dict by a "scale" tuple instead; binding the cache to the
/// coordinate set gives the same reuse and cannot hand one level's entries to another.
pub(crate) struct SpatialLevel {
    batch_size: usize,
    /// `offsets[b]..offsets[b + 1]` are the rows of batch item b (`batch_size + 1` entries).
    /// Known at creation for levels derived on the host side (subdivide, batch items,
    /// concatenation); computed from the coordinates on first use otherwise, so that a tensor
    /// made for a convolution alone never waits on the device (see
    /// [`SparseTensor::with_batch_size`]).
    offsets: OnceLock<Vec<i64>>,
    cache: Mutex<HashMap<String, Box<dyn Any + Send>>>,
}

impl SpatialLevel {
    /// A level with an empty cache for the batch layout `offsets`.
    pub(crate) fn with_offsets(offsets: Vec<i64>) -> Arc<Self> {
        Arc::new(Self {
            batch_size: offsets.len().saturating_sub(1),
            offsets: OnceLock::from(offsets),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A level of `batch_size` items whose layout is read from the coordinates when first
    /// needed.
    pub(crate) fn with_pending_layout(batch_size: usize) -> Arc<Self> {
        Arc::new(Self {
            batch_size,
            offsets: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Stores `value` under `key` in this level's cache, replacing any previous entry.
    pub(crate) fn cache_insert<T: CacheEntry>(&self, key: &str, value: T) {
        self.cache().insert(key.to_string(), Box::new(value));
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, Box<dyn Any + Send>>> {
        // A poisoned lock only means a panic elsewhere while inserting; entries are whole.
        match self.cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// A batch of sparse voxel grids: `coords` int32 `[N, 4]` = (batch, x, y, z) and `feats`
/// `[N, C...]`, the rows of each batch item contiguous and in batch order.
///
/// Cheap to copy with [`shallow_clone`](Self::shallow_clone) or [`replace`](Self::replace):
/// both share the coordinates, the layout and the spatial cache.
pub struct SparseTensor {
    feats: Tensor,
    coords: Tensor,
    level: Arc<SpatialLevel>,
}

impl fmt::Debug for SparseTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SparseTensor")
            .field("feats", &self.feats.size())
            .field("kind", &self.feats.kind())
            .field("device", &self.feats.device())
            .field("batch_size", &self.level.batch_size)
            .finish()
    }
}

impl SparseTensor {
    /// A sparse tensor whose batch size is one more than the largest batch index; the batch
    /// layout is read and checked here (the batch column must be non-decreasing).
    pub fn new(feats: Tensor, coords: Tensor) -> Result<Self> {
        check_coords(&coords)?;
        if coords.size()[0] == 0 {
            return Err(Error::invalid_argument(
                "SparseTensor: no rows, so no batch size; use with_batch_size",
            ));
        }
        let largest = i64::try_from(coords.f_select(1, 0)?.f_max()?)?;
        let tensor = Self::with_batch_size(feats, coords, (largest + 1).max(0) as usize)?;
        tensor.batch_offsets()?;
        Ok(tensor)
    }

    /// A sparse tensor of `batch_size` items (trailing items may be empty). Shapes, dtype
    /// and devices are checked here; the batch layout (batch indices in `0..batch_size`,
    /// each item's rows contiguous and in order) is read from the coordinates, and checked,
    /// on first use ([`batch_offsets`](Self::batch_offsets) and everything per batch item).
    /// On CUDA that read is a device round-trip, which a tensor built for convolutions alone
    /// (whose kernel maps key voxels by their full coordinates, batch included) never pays,
    /// as with spconv's tensors.
    pub fn with_batch_size(feats: Tensor, coords: Tensor, batch_size: usize) -> Result<Self> {
        check_coords(&coords)?;
        check_feats(&feats, &coords)?;
        let level = if coords.size()[0] == 0 {
            SpatialLevel::with_offsets(vec![0; batch_size + 1])
        } else {
            SpatialLevel::with_pending_layout(batch_size)
        };
        Ok(Self {
            feats,
            coords,
            level,
        })
    }

    /// A tensor on an existing level (its coordinates are `coords`); for the spatial ops.
    pub(crate) fn on_level(feats: Tensor, coords: Tensor, level: Arc<SpatialLevel>) -> Self {
        Self {
            feats,
            coords,
            level,
        }
    }

    pub(crate) fn level(&self) -> &Arc<SpatialLevel> {
        &self.level
    }

    /// Per-voxel features `[N, C...]`.
    pub fn feats(&self) -> &Tensor {
        &self.feats
    }

    /// Voxel coordinates, int32 `[N, 4]` = (batch, x, y, z).
    pub fn coords(&self) -> &Tensor {
        &self.coords
    }

    /// Number of batch items (the reference's `shape[0]`).
    pub fn batch_size(&self) -> usize {
        self.level.batch_size
    }

    /// Number of voxels (rows) over all batch items.
    pub fn num_rows(&self) -> i64 {
        self.coords.size()[0]
    }

    /// Feature channels (`feats.size()[1]`; 1 for 1-D features).
    pub fn channels(&self) -> i64 {
        self.feats.size().get(1).copied().unwrap_or(1)
    }

    pub fn kind(&self) -> Kind {
        self.feats.kind()
    }

    pub fn device(&self) -> Device {
        self.feats.device()
    }

    /// Row offsets of the batch items: item b owns rows `offsets[b]..offsets[b + 1]`
    /// (`batch_size + 1` entries, starting at 0). The `cu_seqlens` of varlen attention.
    /// Errors when the coordinates' batch column is out of range or not in batch order.
    pub fn batch_offsets(&self) -> Result<&[i64]> {
        if let Some(offsets) = self.level.offsets.get() {
            return Ok(offsets);
        }
        let computed = batch_offsets(&self.coords, self.level.batch_size)?;
        Ok(self.level.offsets.get_or_init(|| computed))
    }

    /// Rows of batch item `b` (the reference's `layout[b]`).
    pub fn batch_rows(&self, b: usize) -> Result<Range<i64>> {
        if b >= self.level.batch_size {
            return Err(Error::invalid_argument(format!(
                "batch item {b} of a sparse tensor with batch size {}",
                self.level.batch_size
            )));
        }
        let offsets = self.batch_offsets()?;
        Ok(offsets[b]..offsets[b + 1])
    }

    /// Rows of every batch item, in batch order (the reference's `layout`).
    pub fn layout(&self) -> Result<Vec<Range<i64>>> {
        Ok(self
            .batch_offsets()?
            .windows(2)
            .map(|w| w[0]..w[1])
            .collect())
    }

    /// Voxel count of every batch item.
    pub fn batch_lengths(&self) -> Result<Vec<i64>> {
        Ok(self
            .batch_offsets()?
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect())
    }

    /// The batch index of every row, int64 `[N]` on the tensor's device (cached).
    pub fn batch_index(&self) -> Result<Tensor> {
        let coords = &self.coords;
        self.cached("batch_index", || {
            Ok(coords.f_select(1, 0)?.f_to_kind(Kind::Int64)?)
        })
    }

    /// Another handle to the same features, coordinates and cache.
    pub fn shallow_clone(&self) -> Self {
        Self {
            feats: self.feats.shallow_clone(),
            coords: self.coords.shallow_clone(),
            level: self.level.clone(),
        }
    }

    /// The same voxels (coordinates, layout, cache) with new features `[N, C'...]`.
    pub fn replace(&self, feats: Tensor) -> Result<Self> {
        check_feats(&feats, &self.coords)?;
        Ok(Self {
            feats,
            coords: self.coords.shallow_clone(),
            level: self.level.clone(),
        })
    }

    /// Whether both tensors are on the same spatial level (same coordinates and cache).
    pub fn same_level(&self, other: &SparseTensor) -> bool {
        Arc::ptr_eq(&self.level, &other.level)
    }

    /// Features cast to `kind` (the reference's `.type(dtype)` / `.float()` / `.half()`).
    pub fn to_kind(&self, kind: Kind) -> Result<Self> {
        if self.feats.kind() == kind {
            return Ok(self.shallow_clone());
        }
        self.replace(self.feats.f_to_kind(kind)?)
    }

    /// Features and coordinates on `device`. A different device starts an empty cache
    /// (cached maps are device tensors).
    pub fn to_device(&self, device: Device) -> Result<Self> {
        if self.device() == device && self.coords.device() == device {
            return Ok(self.shallow_clone());
        }
        Ok(Self {
            feats: self.feats.f_to_device(device)?,
            coords: self.coords.f_to_device(device)?,
            level: Arc::new(SpatialLevel {
                batch_size: self.level.batch_size,
                offsets: self.level.offsets.clone(),
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    // ---------------------------------------------------------------- spatial cache

    /// The cache entry `key` of this spatial level, built with `build` on first use.
    /// A key holds one type; asking for it as another type is an error.
    pub fn cached<T: CacheEntry>(&self, key: &str, build: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some(found) = self.cache_get::<T>(key)? {
            return Ok(found);
        }
        // Built outside the lock: a builder may itself use the cache (e.g. batch_index).
        let value = build()?;
        let mut cache = self.level.cache();
        let entry = cache
            .entry(key.to_string())
            .or_insert_with(|| Box::new(value.share()));
        downcast_entry::<T>(key, entry.as_ref())
    }

    /// The cache entry `key`, if present.
    pub fn cache_get<T: CacheEntry>(&self, key: &str) -> Result<Option<T>> {
        let cache = self.level.cache();
        cache
            .get(key)
            .map(|entry| downcast_entry::<T>(key, entry.as_ref()))
            .transpose()
    }

    /// Stores `value` under `key`, replacing any previous entry.
    pub fn cache_insert<T: CacheEntry>(&self, key: &str, value: T) {
        self.level.cache_insert(key, value);
    }

    // ---------------------------------------------------------------- element-wise ops

    /// Features of `self` and `other` (same rows) combined by `op`; keeps `self`'s level.
    pub fn zip_feats(
        &self,
        other: &SparseTensor,
        op: impl FnOnce(&Tensor, &Tensor) -> std::result::Result<Tensor, tch::TchError>,
    ) -> Result<Self> {
        if other.num_rows() != self.num_rows() {
            return Err(Error::invalid_argument(format!(
                "sparse element-wise op on {} and {} rows",
                self.num_rows(),
                other.num_rows()
            )));
        }
        self.replace(op(&self.feats, &other.feats)?)
    }

    pub fn add(&self, other: &SparseTensor) -> Result<Self> {
        self.zip_feats(other, |a, b| a.f_add(b))
    }

    pub fn sub(&self, other: &SparseTensor) -> Result<Self> {
        self.zip_feats(other, |a, b| a.f_sub(b))
    }

    pub fn mul(&self, other: &SparseTensor) -> Result<Self> {
        self.zip_feats(other, |a, b| a.f_mul(b))
    }

    /// A per-batch-item tensor (`[B, C...]`, or anything that broadcasts to it such as
    /// `[1, C]` or `[C]`) expanded to one row per voxel, `[N, C...]`, in the features' dtype
    /// (the reference's `sparse_batch_broadcast`, which writes into `zeros_like(feats)`).
    pub fn batch_broadcast(&self, per_batch: &Tensor) -> Result<Tensor> {
        let mut shape = vec![self.batch_size() as i64];
        shape.extend_from_slice(&self.feats.size()[1..]);
        let expanded = per_batch.f_broadcast_to(shape.as_slice()).map_err(|e| {
            Error::invalid_argument(format!(
                "per-batch tensor {:?} does not broadcast to {shape:?}: {e}",
                per_batch.size()
            ))
        })?;
        let index = self.batch_index()?;
        Ok(expanded
            .f_to_kind(self.feats.kind())?
            .f_index_select(0, &index)?)
    }

    /// `feats + per_batch[batch]` (the reference's `x + t` with `t` of shape `[B, C]`).
    pub fn add_per_batch(&self, per_batch: &Tensor) -> Result<Self> {
        self.replace(self.feats.f_add(&self.batch_broadcast(per_batch)?)?)
    }

    /// `feats * per_batch[batch]` (the reference's `x * t` with `t` of shape `[B, C]`).
    pub fn mul_per_batch(&self, per_batch: &Tensor) -> Result<Self> {
        self.replace(self.feats.f_mul(&self.batch_broadcast(per_batch)?)?)
    }

    // ---------------------------------------------------------------- batch items

    /// Batch item `b` alone, as a batch of one (the reference's `x[b]`): coordinates copied
    /// with batch index 0, a new spatial level.
    pub fn batch_item(&self, b: usize) -> Result<Self> {
        let rows = self.batch_rows(b)?;
        let len = rows.end - rows.start;
        let coords = shift_batch(&self.coords.f_narrow(0, rows.start, len)?, -(b as i32))?;
        let feats = self.feats.f_narrow(0, rows.start, len)?.f_contiguous()?;
        Ok(Self {
            feats,
            coords,
            level: SpatialLevel::with_offsets(vec![0, len]),
        })
    }
}

/// Concatenates along the batch: the items of `inputs[1]` follow those of `inputs[0]`, with
/// their batch indices shifted (the reference's `sparse_cat(inputs, dim=0)`). A new level.
pub fn sparse_cat(inputs: &[&SparseTensor]) -> Result<SparseTensor> {
    if inputs.is_empty() {
        return Err(Error::invalid_argument("sparse_cat of no tensors"));
    }
    let mut coords = Vec::with_capacity(inputs.len());
    let mut offsets = vec![0i64];
    let mut batch_shift = 0i64;
    for input in inputs {
        coords.push(shift_batch(&input.coords, batch_shift as i32)?);
        let base = *offsets.last().unwrap_or(&0);
        offsets.extend(input.batch_offsets()?[1..].iter().map(|o| o + base));
        batch_shift += input.batch_size() as i64;
    }
    let feats: Vec<&Tensor> = inputs.iter().map(|t| &t.feats).collect();
    let feats = Tensor::f_cat(&feats, 0)?;
    let coords = Tensor::f_cat(&coords, 0)?;
    check_feats(&feats, &coords)?;
    Ok(SparseTensor {
        feats,
        coords,
        level: SpatialLevel::with_offsets(offsets),
    })
}

/// Concatenates features along `dim` (≥ 1) of tensors with the same voxels; keeps the first
/// input's level (the reference's `sparse_cat(inputs, dim)` for `dim != 0`).
pub fn sparse_cat_feats(inputs: &[&SparseTensor], dim: i64) -> Result<SparseTensor> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::invalid_argument("sparse_cat_feats of no tensors"))?;
    if dim == 0 {
        return Err(Error::invalid_argument(
            "sparse_cat_feats concatenates features (dim >= 1); use sparse_cat for the batch",
        ));
    }
    if let Some(other) = inputs.iter().find(|t| t.num_rows() != first.num_rows()) {
        return Err(Error::invalid_argument(format!(
            "sparse_cat_feats of {} and {} rows",
            first.num_rows(),
            other.num_rows()
        )));
    }
    let feats: Vec<&Tensor> = inputs.iter().map(|t| &t.feats).collect();
    first.replace(Tensor::f_cat(&feats, dim)?)
}

/// `coords` with `shift` added to the batch column (a new tensor).
fn shift_batch(coords: &Tensor, shift: i32) -> Result<Tensor> {
    let shift = Tensor::f_from_slice(&[shift, 0, 0, 0])?.f_to_device(coords.device())?;
    Ok(coords.f_add(&shift)?)
}

fn check_coords(coords: &Tensor) -> Result<()> {
    let size = coords.size();
    if size.len() != 2 || size[1] != 4 {
        return Err(Error::invalid_argument(format!(
            "sparse coords must be [N, 4] (batch, x, y, z), got {size:?}"
        )));
    }
    if coords.kind() != Kind::Int {
        return Err(Error::invalid_argument(format!(
            "sparse coords must be int32, got {:?}",
            coords.kind()
        )));
    }
    Ok(())
}

fn check_feats(feats: &Tensor, coords: &Tensor) -> Result<()> {
    let rows = coords.size()[0];
    match feats.size().first() {
        Some(&n) if n == rows => {}
        _ => {
            return Err(Error::invalid_argument(format!(
                "sparse feats {:?} do not have one row per voxel ({rows} voxels)",
                feats.size()
            )))
        }
    }
    if feats.device() != coords.device() {
        return Err(Error::invalid_argument(format!(
            "sparse feats on {:?} but coords on {:?}",
            feats.device(),
            coords.device()
        )));
    }
    Ok(())
}

/// Row offsets of the batch items; the batch column must be in `0..batch_size` and
/// non-decreasing (each item's rows contiguous, items in order).
fn batch_offsets(coords: &Tensor, batch_size: usize) -> Result<Vec<i64>> {
    let rows = coords.size()[0];
    let mut offsets = vec![0i64; batch_size + 1];
    if rows == 0 {
        return Ok(offsets);
    }
    if batch_size == 0 {
        return Err(Error::invalid_argument(format!(
            "sparse coords have {rows} rows but the batch size is 0"
        )));
    }
    // Everything the host needs (range of the batch column, whether it ever decreases, the
    // cumulative counts) travels in one small tensor: one device round-trip per construction
    // instead of one per statistic, which is what a fresh tensor's first op pays for on CUDA.
    let batch = coords.f_select(1, 0)?.f_to_kind(Kind::Int64)?;
    let decreasing = if rows > 1 {
        batch
            .f_narrow(0, 1, rows - 1)?
            .f_lt_tensor(&batch.f_narrow(0, 0, rows - 1)?)?
            .f_sum(Kind::Int64)?
    } else {
        Tensor::f_zeros([], (Kind::Int64, batch.device()))?
    };
    // Clamped so that bincount has exactly `batch_size` bins even for out-of-range input
    // (rejected below from the true min/max).
    let counts = batch
        .f_clamp(0, batch_size as i64 - 1)?
        .f_bincount::<Tensor>(None, batch_size as i64)?
        .f_cumsum(0, Kind::Int64)?;
    let summary = Tensor::f_cat(
        &[
            batch.f_min()?.f_reshape([1])?,
            batch.f_max()?.f_reshape([1])?,
            decreasing.f_reshape([1])?,
            counts,
        ],
        0,
    )?
    .f_to_device(Device::Cpu)?;
    let summary = Vec::<i64>::try_from(&summary)?;
    let (lowest, highest, decreasing) = (summary[0], summary[1], summary[2]);
    if lowest < 0 || highest >= batch_size as i64 {
        return Err(Error::invalid_argument(format!(
            "sparse coords have batch indices {lowest}..={highest}, outside 0..{batch_size}"
        )));
    }
    if decreasing > 0 {
        return Err(Error::invalid_argument(
            "sparse coords: the rows of each batch item must be contiguous and in batch order",
        ));
    }
    offsets[1..].copy_from_slice(&summary[3..3 + batch_size]);
    Ok(offsets)
}

fn downcast_entry<T: CacheEntry>(key: &str, entry: &(dyn Any + Send)) -> Result<T> {
    entry
        .downcast_ref::<T>()
        .map(CacheEntry::share)
        .ok_or_else(|| {
            Error::internal(format!(
                "spatial cache entry '{key}' is not a {}",
                std::any::type_name::<T>()
            ))
        })
}
