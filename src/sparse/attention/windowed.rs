//! Windowed (swin) self-attention (`trellis/modules/sparse/attention/windowed_attn.py`): the
//! voxels are cut into axis-aligned windows of `window_size` voxels per axis, after shifting
//! the coordinates by `shift`, and every non-empty window of every batch element is an
//! independent attention sequence (no mask, no relative bias, no padding tokens).
//!
//! The partition follows the reference's `calc_window_partition`: with `c = xyz + shift`,
//! `NW_a = ⌈(max_a c_a + 1) / size_a⌉` over the whole batch, a voxel's window id is
//! `b·NWx·NWy·NWz + ⌊cx/sx⌋·NWy·NWz + ⌊cy/sy⌋·NWz + ⌊cz/sz⌋`, and the rows are sorted by it.
//! Windows therefore come in (batch, wx, wy, wz) order, exactly as in the reference. Inside a
//! window we keep the original row order (a stable sort); the reference's unstable `argsort`
//! may order them differently, which attention cannot see (it is permutation-invariant within
//! a sequence, and outputs go back to the original rows).

use tch::{Device, Kind, Tensor};

use super::full::{cu_seqlens, seq_lens, varlen_attention};
use crate::error::{Error, Result};

/// The attention sequences of one (window size, shift) over one set of coordinates. Build it
/// once per coordinate set and reuse it across blocks (the reference caches it the same way).
pub struct WindowPartition {
    window_size: [i64; 3],
    shift: [i64; 3],
    /// Rows in window order (the reference's `fwd_indices`): int64 `[N]` on the coords' device.
    forward: Tensor,
    /// The inverse permutation (`bwd_indices`): window order back to the original rows.
    backward: Tensor,
    /// `cu_seqlens` of the non-empty windows, in window-id order.
    cu_seqlens: Vec<i64>,
}

impl WindowPartition {
    /// Partitions sparse `coords` (`int [N, 4]`: batch, x, y, z) into windows of
    /// `window_size` voxels per axis after adding `shift` to x, y, z.
    pub fn new(coords: &Tensor, window_size: [i64; 3], shift: [i64; 3]) -> Result<Self> {
        let rows = check_coords(coords)?;
        if window_size.iter().any(|&s| s <= 0) {
            return Err(Error::invalid_argument(format!(
                "window attention: window size must be positive, got {window_size:?}"
            )));
        }
        let device = coords.device();
        if rows == 0 {
            let empty = Tensor::f_zeros([0], (Kind::Int64, device))?;
            return Ok(Self {
                window_size,
                shift,
                forward: empty.shallow_clone(),
                backward: empty,
                cu_seqlens: vec![0],
            });
        }
        let ids = window_ids(coords, window_size, shift)?;
        let (sorted_ids, forward) = ids.f_sort_stable(true, 0, false)?;
        let backward = inverse_permutation(&forward)?;
        let (_, _, counts) = sorted_ids.f_unique_consecutive(false, true, 0)?;
        let lengths: Vec<i64> = Vec::try_from(&counts.f_to_device(Device::Cpu)?)?;
        Ok(Self {
            window_size,
            shift,
            forward,
            backward,
            cu_seqlens: cu_seqlens(&lengths),
        })
    }

    /// Another handle to the same partition (index tensors shared, not copied).
    pub fn share(&self) -> Self {
        Self {
            window_size: self.window_size,
            shift: self.shift,
            forward: self.forward.shallow_clone(),
            backward: self.backward.shallow_clone(),
            cu_seqlens: self.cu_seqlens.clone(),
        }
    }

    pub fn window_size(&self) -> [i64; 3] {
        self.window_size
    }

    pub fn shift(&self) -> [i64; 3] {
        self.shift
    }

    /// Row order that groups the voxels window by window (int64 `[N]`).
    pub fn forward_indices(&self) -> &Tensor {
        &self.forward
    }

    /// The inverse of [`WindowPartition::forward_indices`].
    pub fn backward_indices(&self) -> &Tensor {
        &self.backward
    }

    /// `cu_seqlens` of the non-empty windows over the rows in window order.
    pub fn cu_seqlens(&self) -> &[i64] {
        &self.cu_seqlens
    }

    /// Voxel count of every non-empty window, in window order.
    pub fn seq_lens(&self) -> Vec<i64> {
        seq_lens(&self.cu_seqlens)
    }

    pub fn num_windows(&self) -> usize {
        self.cu_seqlens.len() - 1
    }
}

/// Number of rows of valid sparse coordinates `int [N, 4]`.
fn check_coords(coords: &Tensor) -> Result<i64> {
    let integral = matches!(
        coords.kind(),
        Kind::Int | Kind::Int64 | Kind::Int16 | Kind::Int8 | Kind::Uint8
    );
    match coords.size()[..] {
        [rows, 4] if integral => Ok(rows),
        ref found => Err(Error::invalid_argument(format!(
            "window attention: coords must be an integer [N, 4] tensor (batch, x, y, z), got \
             {:?} {found:?}",
            coords.kind()
        ))),
    }
}

/// The window id of every row (int64 `[N]`), as the reference numbers windows.
fn window_ids(coords: &Tensor, window_size: [i64; 3], shift: [i64; 3]) -> Result<Tensor> {
    let device = coords.device();
    let coords = coords.f_to_kind(Kind::Int64)?;
    let shifted = coords
        .f_narrow(1, 1, 3)?
        .f_add(&Tensor::f_from_slice(&shift)?.f_to_device(device)?)?;
    let max: Vec<i64> = Vec::try_from(&shifted.f_amax([0i64], false)?.f_to_device(Device::Cpu)?)?;
    // ⌈(max + 1) / size⌉ windows per axis (Python's math.ceil on the quotient).
    let counts: Vec<i64> = max
        .iter()
        .zip(window_size)
        .map(|(&m, size)| (m + 1 + size - 1).div_euclid(size))
        .collect();
    let strides = [
        counts[0] * counts[1] * counts[2],
        counts[1] * counts[2],
        counts[2],
    ];
    let windows = shifted.f_div_tensor_mode(
        &Tensor::f_from_slice(&window_size)?.f_to_device(device)?,
        "floor",
    )?;
    let ids = coords
        .f_select(1, 0)?
        .f_mul_scalar(strides[0])?
        .f_add(&windows.f_select(1, 0)?.f_mul_scalar(strides[1])?)?
        .f_add(&windows.f_select(1, 1)?.f_mul_scalar(strides[2])?)?
        .f_add(&windows.f_select(1, 2)?)?;
    Ok(ids)
}

/// `inverse[perm[i]] = i`.
fn inverse_permutation(perm: &Tensor) -> Result<Tensor> {
    let n = perm.size()[0];
    let positions = Tensor::f_arange(n, (Kind::Int64, perm.device()))?;
    let mut inverse = Tensor::f_empty([n], (Kind::Int64, perm.device()))?;
    let _ = inverse.f_scatter_(0, perm, &positions)?;
    Ok(inverse)
}

/// Windowed self-attention of packed `qkv` (`[N, 3, H, D]`, rows as the coordinates the
/// partition was built from): every window attends within itself. Returns `[N, H, D]` in the
/// original row order.
pub fn windowed_self_attention(qkv: &Tensor, partition: &WindowPartition) -> Result<Tensor> {
    let rows = partition.forward.size()[0];
    match qkv.size()[..] {
        [n, 3, _, _] if n == rows => {}
        ref found => {
            return Err(Error::invalid_argument(format!(
                "window attention: qkv must be [{rows}, 3, H, D] (one row per voxel), got \
                 {found:?}"
            )))
        }
    }
    let grouped = qkv.f_index_select(0, &partition.forward)?;
    let (q, k, v) = (
        grouped.f_select(1, 0)?,
        grouped.f_select(1, 1)?,
        grouped.f_select(1, 2)?,
    );
    let out = varlen_attention(&q, &k, &v, &partition.cu_seqlens, &partition.cu_seqlens)?;
    Ok(out.f_index_select(0, &partition.backward)?)
}
