//! Variable-length attention (`trellis/modules/sparse/attention/full_attn.py`): many independent
//! softmax-attention problems packed along the row axis, sequence `i` being rows
//! `cu[i]..cu[i + 1]` (flash-attn's `cu_seqlens`). Full sparse attention uses one sequence per
//! batch element; cross-attention pairs each batch element's voxels with its condition tokens;
//! windowed attention ([`super::windowed`]) one sequence per window.
//!
//! Backends, all computing `softmax(q·kᵀ/√D)·v` per sequence and head:
//! - [`VarlenBackend::SegmentLoop`] (CPU default): one `scaled_dot_product_attention` per
//!   sequence on views of the packed tensors. Exact (no padding, no mask), and memory stays
//!   O(rows) because libtorch's CPU kernel is tiled (flash-style).
//! - [`VarlenBackend::Nested`] (CUDA, where the direct flash call does not apply): the
//!   sequences as one strided nested tensor. libtorch's SDPA on nested CUDA inputs calls its
//!   varlen flash kernel (`_flash_attention_forward` with `cu_seqlens`; fp16/bf16) or its
//!   varlen memory-efficient kernel (`_efficient_attention_forward`; also fp32).
//! - [`VarlenBackend::Flash`] (CUDA default for fp16/bf16): the same varlen flash kernel
//!   called directly with `cu_seqlens` through the C++ bridge (src/sparse/engine.rs). The
//!   nested path builds its nested tensors on the host (the decoders' windowed attention has
//!   hundreds of windows per call, about 1 ms of host time each call) and waits for the
//!   device to learn the longest sequence; this path does neither, and gives the same bits.
//! - [`VarlenBackend::Padded`] (fallback): sequences of similar length padded into batches
//!   `[n, H, L, D]` with a key-padding mask. Used on CUDA where the varlen kernels do not take
//!   the inputs (head dim not a multiple of 8 or above 256, other dtypes), and if libtorch
//!   refuses the nested call anyway (logged once).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, ErrorKind, Result};

/// Which implementation [`varlen_attention_with`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarlenBackend {
    /// [`VarlenBackend::SegmentLoop`] on CPU; on CUDA plain (batched) SDPA for sequences of
    /// one query length and one key length back to back (one sample, or a guided pair), else
    /// [`VarlenBackend::Flash`] where it applies, else [`VarlenBackend::Nested`], falling back
    /// to [`VarlenBackend::Padded`] where the varlen kernels do not take the inputs.
    Auto,
    SegmentLoop,
    /// libtorch's varlen flash kernel called directly (CUDA of compute capability 8.0 or newer,
    /// fp16/bf16, head dim a multiple of 8 up to 256 and equal to the value dim, every query
    /// sequence with keys, the stream not being captured); an `InvalidArgument` error where it
    /// does not apply.
    Flash,
    Nested,
    Padded,
}

/// Whether the nested path already failed once in this process (its warning is logged once).
static NESTED_FAILED: AtomicBool = AtomicBool::new(false);
/// The CUDA devices on which the direct flash call already failed once; it is not tried there
/// again. Per device, so that one GPU refusing it (another architecture, a kernel image
/// missing for it) leaves the others on the fast path.
fn flash_failed_on() -> MutexGuard<'static, HashSet<usize>> {
    static DEVICES: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();
    crate::parallel::lock(DEVICES.get_or_init(Default::default))
}

/// Whether the direct flash call failed on `cuda:<ordinal>` before.
fn flash_failed(ordinal: usize) -> bool {
    flash_failed_on().contains(&ordinal)
}

/// Records that the direct flash call failed on `cuda:<ordinal>`; true the first time.
fn mark_flash_failed(ordinal: usize) -> bool {
    flash_failed_on().insert(ordinal)
}
/// libtorch's flash kernel needs compute capability 8.0 (Ampere) or newer.
const FLASH_MIN_ARCH: i32 = 80;

/// `cu_seqlens` of sequences with `lengths`: `[0, l0, l0 + l1, …]`.
pub fn cu_seqlens(lengths: &[i64]) -> Vec<i64> {
    let mut cu = Vec::with_capacity(lengths.len() + 1);
    cu.push(0);
    let mut total = 0;
    for &length in lengths {
        total += length;
        cu.push(total);
    }
    cu
}

/// Lengths of the sequences of `cu`.
pub fn seq_lens(cu: &[i64]) -> Vec<i64> {
    cu.windows(2).map(|pair| pair[1] - pair[0]).collect()
}

/// The rows of each batch element of sparse `coords` (`int [N, 4]`, batch index first) as
/// `cu_seqlens`, as the reference's `SparseTensor.layout` computes them (a bincount of the
/// batch column, so batch `b` is rows `cu[b]..cu[b + 1]`; batches without voxels are empty).
/// The rows of one batch element must be contiguous and in batch order.
pub fn batch_cu_seqlens(coords: &Tensor) -> Result<Vec<i64>> {
    match coords.size()[..] {
        [_, 4] => {}
        ref found => {
            return Err(Error::invalid_argument(format!(
                "sparse coords must be [N, 4] (batch, x, y, z), got {found:?}"
            )))
        }
    }
    let batch: Vec<i64> = Vec::try_from(
        &coords
            .f_select(1, 0)?
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Int64)?,
    )?;
    if let Some(row) = batch.windows(2).position(|pair| pair[1] < pair[0]) {
        return Err(Error::invalid_argument(format!(
            "sparse coords: batch elements must be contiguous and in order, but row {} has \
             batch {} after batch {}",
            row + 1,
            batch[row + 1],
            batch[row]
        )));
    }
    if let Some(&first) = batch.first() {
        if first < 0 {
            return Err(Error::invalid_argument(format!(
                "sparse coords: negative batch index {first}"
            )));
        }
    }
    let batch_size = batch.last().map_or(0, |&last| last + 1) as usize;
    let mut lengths = vec![0i64; batch_size];
    for &b in &batch {
        lengths[b as usize] += 1;
    }
    Ok(cu_seqlens(&lengths))
}

/// Variable-length attention with the default backend ([`VarlenBackend::Auto`]).
///
/// `q`: `[T, H, D]`, `k`: `[S, H, D]`, `v`: `[S, H, Dv]`; sequence `i` is
/// `q[cu_q[i]..cu_q[i+1]]` attending to `k, v[cu_k[i]..cu_k[i+1]]`, with scale `1/√D`.
/// Returns `[T, H, Dv]` in `q`'s dtype. A query sequence whose key sequence is empty gets
/// zeros (what flash-attn returns).
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_q: &[i64],
    cu_k: &[i64],
) -> Result<Tensor> {
    varlen_attention_with(VarlenBackend::Auto, q, k, v, cu_q, cu_k)
}

/// [`varlen_attention`] with a chosen backend (tests compare them).
pub fn varlen_attention_with(
    backend: VarlenBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_q: &[i64],
    cu_k: &[i64],
) -> Result<Tensor> {
    let shape = check_varlen_inputs(q, k, v, cu_q, cu_k)?;
    let segments = Segments::new(cu_q, cu_k);
    if backend == VarlenBackend::Auto && q.device() != Device::Cpu {
        if let Some((sequences, q_len, k_len)) = segments.uniform_batch(&shape, k.size()[0]) {
            return uniform_batch(q, k, v, sequences, q_len, k_len);
        }
    }
    match backend {
        VarlenBackend::SegmentLoop => segment_loop(q, k, v, &segments, &shape),
        VarlenBackend::Flash => flash(q, k, v, cu_q, cu_k, &segments)?.ok_or_else(|| {
            Error::invalid_argument(
                "varlen attention: the flash kernel does not take these inputs (CUDA fp16/bf16, \
                 head dim a multiple of 8 up to 256 and equal to the value dim, keys for every \
                 query sequence, no graph capture)",
            )
        }),
        VarlenBackend::Nested => nested(q, k, v, &segments, &shape),
        VarlenBackend::Padded => padded(q, k, v, &segments, &shape),
        VarlenBackend::Auto if q.device() == Device::Cpu => {
            segment_loop(q, k, v, &segments, &shape)
        }
        VarlenBackend::Auto => match flash(q, k, v, cu_q, cu_k, &segments) {
            Ok(Some(out)) => Ok(out),
            Ok(None) => nested_or_padded(q, k, v, &segments, &shape),
            Err(err) if err.kind() == ErrorKind::OutOfMemory => Err(err),
            Err(err) => {
                if let Device::Cuda(ordinal) = q.device() {
                    if mark_flash_failed(ordinal) {
                        tracing::warn!(
                            "sparse attention: libtorch refused its flash kernel on \
                             cuda:{ordinal} ({err}); using its nested path there instead"
                        );
                    }
                }
                nested_or_padded(q, k, v, &segments, &shape)
            }
        },
    }
}

/// libtorch's varlen flash kernel on `cu_q` / `cu_k` as given, or `None` where it does not
/// apply (see [`VarlenBackend::Flash`]). A query sequence without keys is left to the other
/// paths, which return zeros for it explicitly.
fn flash(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_q: &[i64],
    cu_k: &[i64],
    segments: &Segments,
) -> Result<Option<Tensor>> {
    let Device::Cuda(ordinal) = q.device() else {
        return Ok(None);
    };
    let head_dim = q.size()[2];
    let kind = q.kind();
    let takes_inputs = matches!(kind, Kind::Half | Kind::BFloat16)
        && [k, v]
            .iter()
            .all(|t| t.kind() == kind && t.device() == q.device())
        && head_dim % 8 == 0
        && head_dim <= 256
        && v.size()[2] == head_dim
        && [q, k, v].iter().all(|t| t.stride()[2] == 1)
        && segments.all.iter().all(|s| s.k_len > 0);
    if !takes_inputs || flash_failed(ordinal) {
        return Ok(None);
    }
    let as_i32 =
        |cu: &[i64]| -> Option<Vec<i32>> { cu.iter().map(|&c| i32::try_from(c).ok()).collect() };
    let (Some(cu_q32), Some(cu_k32)) = (as_i32(cu_q), as_i32(cu_k)) else {
        return Ok(None);
    };
    let gpu = crate::cuda::cuda_device(ordinal)?;
    if gpu.arch().number() < FLASH_MIN_ARCH || gpu.torch_stream()?.is_capturing()? {
        return Ok(None);
    }
    let longest = |cu: &[i64]| seq_lens(cu).into_iter().max().unwrap_or(0);
    crate::sparse::engine::flash_attention_varlen(
        q,
        k,
        v,
        &cu_q32,
        &cu_k32,
        longest(cu_q),
        longest(cu_k),
    )
    .map(Some)
}

/// `sequences` sequences of `q_len` queries and `k_len` keys each, back to back, covering every
/// row (one sample, as the pipelines run the flows, or a guided pair of them): plain batched
/// SDPA on strided views of the packed rows, without building nested tensors or concatenating
/// per-sequence outputs.
fn uniform_batch(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    sequences: i64,
    q_len: i64,
    k_len: i64,
) -> Result<Tensor> {
    let batched = |rows: &Tensor, len: i64| -> Result<Tensor> {
        let size = rows.size();
        Ok(rows
            .f_reshape([sequences, len, size[1], size[2]])?
            .f_permute([0, 2, 1, 3])?)
    };
    let out = sdpa(
        &batched(q, q_len)?,
        &batched(k, k_len)?,
        &batched(v, k_len)?,
        None,
    )?;
    let size = out.size();
    Ok(out
        .f_permute([0, 2, 1, 3])?
        .f_reshape([sequences * q_len, size[1], size[3]])?)
}

/// The nested (varlen kernel) path where libtorch's varlen kernels take the inputs (head dim
/// a multiple of 8 up to 256, fp16/bf16 for flash, fp32 for memory-efficient), the padded one
/// otherwise or if libtorch refuses anyway. Running out of memory is not a reason to try the
/// padded path, which needs more.
fn nested_or_padded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &Segments,
    shape: &Shape,
) -> Result<Tensor> {
    let head_dim = q.size()[2];
    let kernels_take_it = head_dim % 8 == 0
        && head_dim <= 256
        && shape.value_dim == head_dim
        && matches!(q.kind(), Kind::Half | Kind::BFloat16 | Kind::Float);
    if !kernels_take_it {
        return padded(q, k, v, segments, shape);
    }
    match nested(q, k, v, segments, shape) {
        Ok(out) => Ok(out),
        Err(err) if err.kind() == ErrorKind::OutOfMemory => Err(err),
        Err(err) => {
            if !NESTED_FAILED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "sparse attention: libtorch refused its varlen kernels ({err}); using \
                     padded batches instead"
                );
            }
            padded(q, k, v, segments, shape)
        }
    }
}

/// Sizes shared by every backend.
struct Shape {
    heads: i64,
    value_dim: i64,
    rows: i64,
}

fn check_cu(name: &str, cu: &[i64], rows: i64) -> Result<()> {
    if cu.first() != Some(&0) {
        return Err(Error::invalid_argument(format!(
            "varlen attention: {name} must start at 0, got {:?}",
            cu.first()
        )));
    }
    if cu.windows(2).any(|pair| pair[1] < pair[0]) {
        return Err(Error::invalid_argument(format!(
            "varlen attention: {name} must be non-decreasing"
        )));
    }
    let last = cu.last().copied().unwrap_or(0);
    if last != rows {
        return Err(Error::invalid_argument(format!(
            "varlen attention: {name} ends at {last} but the tensor has {rows} rows"
        )));
    }
    Ok(())
}

fn check_varlen_inputs(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_q: &[i64],
    cu_k: &[i64],
) -> Result<Shape> {
    let (qs, ks, vs) = (q.size(), k.size(), v.size());
    let fits = qs.len() == 3
        && ks.len() == 3
        && vs.len() == 3
        && ks[1] == qs[1]
        && ks[2] == qs[2]
        && vs[0] == ks[0]
        && vs[1] == qs[1];
    if !fits {
        return Err(Error::invalid_argument(format!(
            "varlen attention: expected q [T, H, D], k [S, H, D], v [S, H, Dv]; got q {qs:?}, \
             k {ks:?}, v {vs:?}"
        )));
    }
    if cu_q.len() != cu_k.len() {
        return Err(Error::invalid_argument(format!(
            "varlen attention: {} query sequences but {} key sequences",
            cu_q.len().saturating_sub(1),
            cu_k.len().saturating_sub(1)
        )));
    }
    check_cu("cu_seqlens_q", cu_q, qs[0])?;
    check_cu("cu_seqlens_k", cu_k, ks[0])?;
    Ok(Shape {
        heads: qs[1],
        value_dim: vs[2],
        rows: qs[0],
    })
}

/// One attention problem: query rows `q_start..q_start+q_len`, key rows likewise.
#[derive(Debug, Clone, Copy)]
struct Segment {
    q_start: i64,
    q_len: i64,
    k_start: i64,
    k_len: i64,
}

/// The sequences of one call. Those without query rows produce nothing and are dropped;
/// those with queries but no keys produce zeros and are kept apart.
struct Segments {
    /// In row order.
    all: Vec<Segment>,
}

impl Segments {
    fn new(cu_q: &[i64], cu_k: &[i64]) -> Self {
        let all = cu_q
            .windows(2)
            .zip(cu_k.windows(2))
            .map(|(q, k)| Segment {
                q_start: q[0],
                q_len: q[1] - q[0],
                k_start: k[0],
                k_len: k[1] - k[0],
            })
            .filter(|s| s.q_len > 0)
            .collect();
        Self { all }
    }

    /// `(sequences, q_len, k_len)` when the sequences all have the same query and key lengths
    /// (keys present) and cover all `shape.rows` queries and `keys` keys back to back: one
    /// dense batch.
    fn uniform_batch(&self, shape: &Shape, keys: i64) -> Option<(i64, i64, i64)> {
        let first = self.all.first()?;
        let (q_len, k_len) = (first.q_len, first.k_len);
        let sequences = self.all.len() as i64;
        let back_to_back = self.all.iter().enumerate().all(|(i, s)| {
            let i = i as i64;
            s.q_len == q_len && s.k_len == k_len && s.q_start == i * q_len && s.k_start == i * k_len
        });
        (back_to_back && k_len > 0 && sequences * q_len == shape.rows && sequences * k_len == keys)
            .then_some((sequences, q_len, k_len))
    }

    /// Sequences that need attention computed (queries and keys present).
    fn attending(&self) -> impl Iterator<Item = &Segment> {
        self.all.iter().filter(|s| s.k_len > 0)
    }
}

/// `[L, H, D]` → `[1, H, L, D]`, the layout libtorch's SDPA wants.
fn to_sdpa_layout(rows: &Tensor) -> Result<Tensor> {
    Ok(rows.f_permute([1, 0, 2])?.f_unsqueeze(0)?)
}

fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention(
        q, k, v, mask, 0.0, false, None, false,
    )?)
}

fn zeros_rows(q: &Tensor, rows: i64, shape: &Shape) -> Result<Tensor> {
    Ok(Tensor::f_zeros(
        [rows, shape.heads, shape.value_dim],
        (q.kind(), q.device()),
    )?)
}

/// Exact per-sequence attention: one SDPA call per sequence, outputs concatenated in row order.
fn segment_loop(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &Segments,
    shape: &Shape,
) -> Result<Tensor> {
    let mut pieces = Vec::with_capacity(segments.all.len());
    for s in &segments.all {
        if s.k_len == 0 {
            pieces.push(zeros_rows(q, s.q_len, shape)?);
            continue;
        }
        let out = sdpa(
            &to_sdpa_layout(&q.f_narrow(0, s.q_start, s.q_len)?)?,
            &to_sdpa_layout(&k.f_narrow(0, s.k_start, s.k_len)?)?,
            &to_sdpa_layout(&v.f_narrow(0, s.k_start, s.k_len)?)?,
            None,
        )?;
        pieces.push(out.f_squeeze_dim(0)?.f_permute([1, 0, 2])?);
    }
    concat_rows(q, pieces, shape)
}

fn concat_rows(q: &Tensor, pieces: Vec<Tensor>, shape: &Shape) -> Result<Tensor> {
    if pieces.is_empty() {
        return zeros_rows(q, shape.rows, shape);
    }
    Ok(Tensor::f_cat(&pieces, 0)?)
}

/// The rows of `sequences` (`(start, len)` in `packed`, in order) as one gap-free contiguous
/// `[T', H, D]` tensor, and the lengths. libtorch's nested SDPA reads a nested tensor's storage
/// as packed rows from the first offset on (its gap check divides offsets by sizes and can
/// miss a gap), so the buffer must hold exactly these rows, back to back.
fn packed_rows(packed: &Tensor, sequences: &[(i64, i64)]) -> Result<(Tensor, Vec<i64>)> {
    let lengths: Vec<i64> = sequences.iter().map(|&(_, len)| len).collect();
    let tiles_all_rows = sequences
        .iter()
        .scan(0, |next, &(start, len)| {
            let in_place = start == *next;
            *next = start + len;
            Some(in_place)
        })
        .all(|in_place| in_place)
        && lengths.iter().sum::<i64>() == packed.size()[0];
    let rows = if tiles_all_rows {
        packed.f_contiguous()?
    } else {
        let index: Vec<i64> = sequences
            .iter()
            .flat_map(|&(start, len)| start..start + len)
            .collect();
        packed.f_index_select(
            0,
            &Tensor::f_from_slice(&index)?.f_to_device(packed.device())?,
        )?
    };
    Ok((rows, lengths))
}

/// The sequences of `packed` (`[T, H, D]`) as a strided nested tensor `[n, H, *, D]` over one
/// gap-free buffer (a view, no copy, when they already tile a contiguous `packed`).
fn nested_heads_first(packed: &Tensor, sequences: &[(i64, i64)]) -> Result<Tensor> {
    let (rows, lengths) = packed_rows(packed, sequences)?;
    let (heads, dim) = (rows.size()[1], rows.size()[2]);
    let row = heads * dim;
    let sizes: Vec<i64> = lengths.iter().flat_map(|&len| [len, heads, dim]).collect();
    let strides: Vec<i64> = lengths.iter().flat_map(|_| [row, dim, 1]).collect();
    let offsets: Vec<i64> = cu_seqlens(&lengths)[..lengths.len()]
        .iter()
        .map(|&start| start * row)
        .collect();
    let n = lengths.len() as i64;
    let nested = rows.f_view([-1])?.f_internal_nested_view_from_buffer(
        &Tensor::f_from_slice(&sizes)?.f_view([n, 3])?,
        &Tensor::f_from_slice(&strides)?.f_view([n, 3])?,
        &Tensor::f_from_slice(&offsets)?,
    )?;
    let nested = nested.f_transpose(1, 2)?;
    // libtorch's CPU (math) kernel only takes contiguous nested inputs; the CUDA varlen
    // kernels read the transposed view of the packed rows directly.
    if rows.device() == Device::Cpu {
        Ok(nested.f_contiguous()?)
    } else {
        Ok(nested)
    }
}

/// All sequences in one SDPA call on nested tensors (libtorch's varlen kernels on CUDA).
fn nested(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &Segments,
    shape: &Shape,
) -> Result<Tensor> {
    let attending: Vec<Segment> = segments.attending().copied().collect();
    if attending.is_empty() {
        return segment_loop(q, k, v, segments, shape);
    }
    let q_seqs: Vec<(i64, i64)> = attending.iter().map(|s| (s.q_start, s.q_len)).collect();
    let k_seqs: Vec<(i64, i64)> = attending.iter().map(|s| (s.k_start, s.k_len)).collect();
    let out = sdpa(
        &nested_heads_first(q, &q_seqs)?,
        &nested_heads_first(k, &k_seqs)?,
        &nested_heads_first(v, &k_seqs)?,
        None,
    )?;
    let mut computed = out.f_transpose(1, 2)?.f_unbind(0)?.into_iter();
    let mut pieces = Vec::with_capacity(segments.all.len());
    for s in &segments.all {
        if s.k_len == 0 {
            pieces.push(zeros_rows(q, s.q_len, shape)?);
        } else {
            let piece = computed.next().ok_or_else(|| {
                Error::internal("nested attention returned fewer sequences than it was given")
            })?;
            pieces.push(piece);
        }
    }
    concat_rows(q, pieces, shape)
}

/// Sequences batched for the padded path: lengths within a factor 2 of the batch's longest,
/// so padding at most doubles the work.
fn length_buckets(segments: &[Segment]) -> Vec<Vec<Segment>> {
    let mut sorted = segments.to_vec();
    let key = |s: &Segment| s.q_len.max(s.k_len);
    sorted.sort_by_key(|s| std::cmp::Reverse(key(s)));
    let mut buckets: Vec<Vec<Segment>> = Vec::new();
    for s in sorted {
        match buckets.last_mut() {
            Some(bucket) if key(&s) * 2 >= key(&bucket[0]) => bucket.push(s),
            _ => buckets.push(vec![s]),
        }
    }
    buckets
}

/// Row indices `[n · len]` gathering each sequence into a padded slot; padding points at
/// `pad_row` (an extra zero row appended to the packed tensor).
fn padded_index(sequences: &[(i64, i64)], len: i64, pad_row: i64) -> Vec<i64> {
    sequences
        .iter()
        .flat_map(|&(start, n)| (0..len).map(move |i| if i < n { start + i } else { pad_row }))
        .collect()
}

/// `packed` (`[T, H, D]`) with one zero row appended: row `T` is what padding gathers.
fn with_zero_row(packed: &Tensor) -> Result<Tensor> {
    let size = packed.size();
    Ok(Tensor::f_cat(
        &[
            packed.shallow_clone(),
            Tensor::f_zeros([1, size[1], size[2]], (packed.kind(), packed.device()))?,
        ],
        0,
    )?)
}

/// Rows of `extended` (from [`with_zero_row`]) gathered into `[n, H, len, D]`, sequences
/// padded with its last (zero) row.
fn gather_padded(extended: &Tensor, sequences: &[(i64, i64)], len: i64) -> Result<Tensor> {
    let size = extended.size();
    let index = Tensor::f_from_slice(&padded_index(sequences, len, size[0] - 1))?
        .f_to_device(extended.device())?;
    let n = sequences.len() as i64;
    Ok(extended
        .f_index_select(0, &index)?
        .f_view([n, len, size[1], size[2]])?
        .f_permute([0, 2, 1, 3])?)
}

/// Padded batches with a key-padding mask, one SDPA call per length bucket.
fn padded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &Segments,
    shape: &Shape,
) -> Result<Tensor> {
    // Zero rows stay where no attention is computed (queries without keys).
    let mut out = zeros_rows(q, shape.rows, shape)?;
    let (q_ext, k_ext, v_ext) = (with_zero_row(q)?, with_zero_row(k)?, with_zero_row(v)?);
    let attending: Vec<Segment> = segments.attending().copied().collect();
    for bucket in length_buckets(&attending) {
        let q_len = bucket.iter().map(|s| s.q_len).max().unwrap_or(0);
        // A multiple of 16 keeps libtorch from re-padding the mask for its kernels.
        let longest_keys = bucket.iter().map(|s| s.k_len).max().unwrap_or(0);
        let k_len = (longest_keys + 15) / 16 * 16;
        let q_seqs: Vec<(i64, i64)> = bucket.iter().map(|s| (s.q_start, s.q_len)).collect();
        let k_seqs: Vec<(i64, i64)> = bucket.iter().map(|s| (s.k_start, s.k_len)).collect();
        let n = bucket.len() as i64;
        let valid_keys: Vec<bool> = k_seqs
            .iter()
            .flat_map(|&(_, len)| (0..k_len).map(move |i| i < len))
            .collect();
        let mask = Tensor::f_from_slice(&valid_keys)?
            .f_view([n, 1, 1, k_len])?
            .f_to_device(q.device())?;
        let attended = sdpa(
            &gather_padded(&q_ext, &q_seqs, q_len)?,
            &gather_padded(&k_ext, &k_seqs, k_len)?,
            &gather_padded(&v_ext, &k_seqs, k_len)?,
            Some(&mask),
        )?;
        // [n, H, q_len, Dv] → the real query rows, scattered back to their packed positions.
        let flat = attended.f_permute([0, 2, 1, 3])?.f_reshape([
            n * q_len,
            shape.heads,
            shape.value_dim,
        ])?;
        let (slots, rows): (Vec<i64>, Vec<i64>) = q_seqs
            .iter()
            .enumerate()
            .flat_map(|(slot, &(start, len))| {
                (0..len).map(move |i| (slot as i64 * q_len + i, start + i))
            })
            .unzip();
        let slots = Tensor::f_from_slice(&slots)?.f_to_device(q.device())?;
        let rows = Tensor::f_from_slice(&rows)?.f_to_device(q.device())?;
        let _ = out.f_index_copy_(0, &rows, &flat.f_index_select(0, &slots)?)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device on which the flash call failed stays off it; the others keep it. Ordinals far
    /// above any real GPU's, so that no other test's device shares the process-wide set.
    #[test]
    fn the_flash_fallback_is_remembered_per_device() {
        let (failing, other) = (1_000_001, 1_000_002);
        assert!(!flash_failed(failing) && !flash_failed(other));
        assert!(
            mark_flash_failed(failing),
            "the first failure is new (and warned about)"
        );
        assert!(
            !mark_flash_failed(failing),
            "a second failure is not warned about again"
        );
        assert!(flash_failed(failing));
        assert!(!flash_failed(other), "another device keeps the flash path");
    }
}
