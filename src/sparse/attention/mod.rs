//! Sparse attention (`trellis/modules/sparse/attention/`): attention over the voxels of a
//! sparse tensor, every batch element (or window) an independent variable-length sequence.
//!
//! - [`full`]: the variable-length kernel, [`varlen_attention`] over packed `[T, H, D]` rows
//!   and `cu_seqlens` — exact per-sequence SDPA on CPU, libtorch's varlen flash kernel on
//!   CUDA (called directly; its memory-efficient kernel through nested tensors where flash
//!   does not apply), a padded fallback.
//! - [`windowed`]: swin window partitioning ([`WindowPartition`], the reference's order and
//!   shift) and windowed self-attention.
//! - [`modules`]: the `SparseMultiHeadAttention` module (self "full" / "windowed", cross to
//!   dense tokens, optional q/k RMS norm).
//!
//! Serialized attention (z-order / Hilbert windows) is not implemented: no published TRELLIS
//! or TRELLIS-VGGT checkpoint uses it (the decoders use swin, the flow model full attention).
//!
//! The kernels work on plain tensors. The module reads what it needs about the voxels (batch
//! offsets, window partitions) through [`AttentionSequences`], which [`SparseTensor`] implements
//! (partitions live in its spatial cache, shared by every block on the same voxels) and
//! [`CoordsLayout`] implements for bare coordinates.

pub mod full;
pub mod modules;
pub mod windowed;

use std::sync::Mutex;

use tch::Tensor;

use crate::error::{Error, Result};
use crate::sparse::basic::{CacheEntry, SparseTensor};

pub use full::{
    batch_cu_seqlens, cu_seqlens, varlen_attention, varlen_attention_with, VarlenBackend,
};
pub use modules::{
    SparseAttentionConfig, SparseAttentionMode, SparseMultiHeadAttention, SparseMultiHeadRmsNorm,
};
pub use windowed::{windowed_self_attention, WindowPartition};

/// What attention needs to know about the voxels besides their features.
pub trait AttentionSequences {
    /// Number of voxel rows.
    fn num_voxels(&self) -> i64;
    /// Batch element `b`'s rows are `cu[b]..cu[b + 1]` (`batch_size + 1` entries).
    fn batch_cu_seqlens(&self) -> Result<&[i64]>;
    /// The window partition of these voxels for `window_size` and `shift`, built once and
    /// shared (a handle to the cached one).
    fn window_partition(&self, window_size: [i64; 3], shift: [i64; 3]) -> Result<WindowPartition>;

    /// Number of batch elements.
    fn batch_size(&self) -> usize;
}

impl CacheEntry for WindowPartition {
    fn share(&self) -> Self {
        WindowPartition::share(self)
    }
}

impl AttentionSequences for SparseTensor {
    fn num_voxels(&self) -> i64 {
        self.num_rows()
    }

    fn batch_cu_seqlens(&self) -> Result<&[i64]> {
        self.batch_offsets()
    }

    fn batch_size(&self) -> usize {
        SparseTensor::batch_size(self)
    }

    fn window_partition(&self, window_size: [i64; 3], shift: [i64; 3]) -> Result<WindowPartition> {
        let key = format!("attention.window_partition.{window_size:?}.{shift:?}");
        self.cached(&key, || {
            WindowPartition::new(self.coords(), window_size, shift)
        })
    }
}

/// Bare coordinates as [`AttentionSequences`]: the batch offsets and a cache of window
/// partitions, for callers without a [`SparseTensor`].
pub struct CoordsLayout {
    coords: Tensor,
    batch_cu_seqlens: Vec<i64>,
    windows: Mutex<Vec<WindowPartition>>,
}

impl CoordsLayout {
    /// From sparse `coords` (`int [N, 4]`: batch, x, y, z; each batch element's rows
    /// contiguous and in batch order).
    pub fn new(coords: &Tensor) -> Result<Self> {
        let cu = batch_cu_seqlens(coords)?;
        Self::with_batch_cu_seqlens(coords, cu)
    }

    /// From coordinates whose batch layout is already known (`batch_cu_seqlens[b]..[b + 1]`
    /// are batch element `b`'s rows), e.g. with trailing empty batch elements.
    pub fn with_batch_cu_seqlens(coords: &Tensor, batch_cu_seqlens: Vec<i64>) -> Result<Self> {
        let rows = coords.size().first().copied().unwrap_or(0);
        let valid = batch_cu_seqlens.first() == Some(&0)
            && batch_cu_seqlens.last() == Some(&rows)
            && batch_cu_seqlens.windows(2).all(|pair| pair[0] <= pair[1]);
        if !valid {
            return Err(Error::invalid_argument(format!(
                "sparse attention: batch offsets {batch_cu_seqlens:?} do not cover the {rows} \
                 voxel rows"
            )));
        }
        Ok(Self {
            coords: coords.shallow_clone(),
            batch_cu_seqlens,
            windows: Mutex::new(Vec::new()),
        })
    }

    pub fn coords(&self) -> &Tensor {
        &self.coords
    }
}

impl AttentionSequences for CoordsLayout {
    fn num_voxels(&self) -> i64 {
        self.batch_cu_seqlens.last().copied().unwrap_or(0)
    }

    fn batch_cu_seqlens(&self) -> Result<&[i64]> {
        Ok(&self.batch_cu_seqlens)
    }

    fn batch_size(&self) -> usize {
        self.batch_cu_seqlens.len().saturating_sub(1)
    }

    fn window_partition(&self, window_size: [i64; 3], shift: [i64; 3]) -> Result<WindowPartition> {
        // A poisoned lock only means a panic elsewhere while inserting; entries are whole.
        let mut cache = match self.windows.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(found) = cache
            .iter()
            .find(|p| p.window_size() == window_size && p.shift() == shift)
        {
            return Ok(found.share());
        }
        let partition = WindowPartition::new(&self.coords, window_size, shift)?;
        cache.push(partition.share());
        Ok(partition)
    }
}
