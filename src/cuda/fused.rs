//! Host side of `kernels/fused_norm.cu`: LayerNorm32 (+ adaLN modulation), multi-head RMS
//! norm, the gated residual and the ordered sum of per-view shares, each one kernel where the reference runs a chain of
//! element-wise kernels (issue 8: these chains were 45 % of the sparse-structure flow's GPU
//! time on the H100, see benches/RESULTS.md).
//!
//! Every function returns `Ok(None)` when its fused kernel does not apply (CPU tensors, another
//! dtype, an unusual layout, or `RECON_FUSED_KERNELS=0` in the environment) and the caller then
//! runs the unfused reference composition, so the CPU path is unchanged and the two paths can
//! be compared on the same machine. Results match the unfused path's rounding op by op (see the
//! kernel file); only the fp32 reduction order of the statistics differs.

use std::sync::OnceLock;

use cudarc::driver::PushKernelArg;
use tch::{Device, Kind, Tensor};

use super::device::{self, cuda_device};
use super::nvrtc::FUSED_NORM;
use crate::error::Result;

const THREADS: u32 = 256;
const MAX_BLOCKS: i64 = 1 << 20;

/// Which modulation row (batch element) each feature row uses.
pub enum RowGroups<'a> {
    /// Consecutive runs of this many rows: dense `[B, L, C]` activations (L rows per element).
    Uniform(i64),
    /// An int64 group per row: a sparse tensor's batch index `[N]`.
    Indexed(&'a Tensor),
}

/// Whether the fused kernels may be used at all (`RECON_FUSED_KERNELS=0` turns them off, for
/// A/B measurements and for bisecting a numerical difference).
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("RECON_FUSED_KERNELS").map_or(true, |v| v != "0"))
}

/// The position of the activations' dtype in the kernel-name tables, when handled.
fn dtype_index(kind: Kind) -> Option<usize> {
    match kind {
        Kind::Half => Some(0),
        Kind::BFloat16 => Some(1),
        Kind::Float => Some(2),
        _ => None,
    }
}

/// The CUDA ordinal and dtype index when `x` is a CUDA tensor the kernels handle.
fn target(x: &Tensor) -> Option<(usize, usize)> {
    match x.device() {
        Device::Cuda(ordinal) if enabled() => dtype_index(x.kind()).map(|d| (ordinal, d)),
        _ => None,
    }
}

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

fn optional_ptr(t: Option<&Tensor>) -> u64 {
    t.map_or(0, ptr)
}

/// A `[G, C]` modulation view usable by the kernels: same dtype and device as `x`, unit stride
/// along channels; returns its row stride.
fn mod_row_stride(m: &Tensor, x: &Tensor, channels: i64) -> Option<i64> {
    let (size, stride) = (m.size(), m.stride());
    let fits = m.kind() == x.kind()
        && m.device() == x.device()
        && size.len() == 2
        && size[1] == channels
        && stride[1] == 1;
    fits.then_some(stride[0])
}

/// The kernels' group arguments: (row_group pointer or 0, rows per group), checked against
/// `rows` and the number of modulation rows `groups`.
fn group_args(
    row_groups: &RowGroups<'_>,
    rows: i64,
    groups: i64,
    x: &Tensor,
) -> Option<(u64, i64)> {
    match row_groups {
        RowGroups::Uniform(per) if *per > 0 && rows % per == 0 && rows / per == groups => {
            Some((0, *per))
        }
        RowGroups::Indexed(index)
            if index.kind() == Kind::Int64
                && index.device() == x.device()
                && index.size() == [rows]
                && index.is_contiguous() =>
        {
            Some((ptr(index), 1))
        }
        _ => None,
    }
}

/// `LayerNorm32(x)` over the last axis (fp32 statistics and affine, result in `x`'s dtype),
/// then, with `modulation = (shift, scale, groups)`, `h · (1 + scale) + shift` per group.
/// `x` must be contiguous; `weight` / `bias` fp32 `[C]`.
pub fn layer_norm_modulate(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    modulation: Option<(&Tensor, &Tensor, RowGroups<'_>)>,
) -> Result<Option<Tensor>> {
    let Some((ordinal, dtype)) = target(x) else {
        return Ok(None);
    };
    let channels = x.size().last().copied().unwrap_or(0);
    if channels == 0 || !x.is_contiguous() || x.numel() == 0 || channels > i32::MAX as i64 {
        return Ok(None);
    }
    let rows = x.numel() as i64 / channels;
    let affine_ok = |t: Option<&Tensor>| {
        t.is_none_or(|t| {
            t.kind() == Kind::Float
                && t.device() == x.device()
                && t.size() == [channels]
                && t.is_contiguous()
        })
    };
    if weight.is_some() != bias.is_some() || !affine_ok(weight) || !affine_ok(bias) {
        return Ok(None);
    }
    let (shift, scale, mod_stride, groups) = match &modulation {
        None => (None, None, 0, (0, 1)),
        Some((shift, scale, row_groups)) => {
            let (Some(s1), Some(s2)) = (
                mod_row_stride(shift, x, channels),
                mod_row_stride(scale, x, channels),
            ) else {
                return Ok(None);
            };
            let n_groups = shift.size()[0];
            if s1 != s2 || scale.size()[0] != n_groups {
                return Ok(None);
            }
            let Some(groups) = group_args(row_groups, rows, n_groups, x) else {
                return Ok(None);
            };
            (Some(*shift), Some(*scale), s1, groups)
        }
    };
    let y = Tensor::f_empty_like(x)?;
    let n = pack_elements(x.kind());
    let vectorised = channels % n == 0
        && channels / n <= 32 * LN_PACKS
        && mod_stride % n == 0
        && [ptr(x), ptr(&y), optional_ptr(shift), optional_ptr(scale)]
            .into_iter()
            .all(aligned);
    let name = if vectorised {
        LAYER_NORM_MODULATE_VEC[dtype]
    } else {
        LAYER_NORM_MODULATE[dtype]
    };
    let gpu = cuda_device(ordinal)?;
    let function = gpu.function(&FUSED_NORM, name)?;
    let stream = gpu.torch_stream()?;
    let (x_ptr, y_ptr) = (ptr(x), ptr(&y));
    let (w_ptr, b_ptr) = (optional_ptr(weight), optional_ptr(bias));
    let (shift_ptr, scale_ptr) = (optional_ptr(shift), optional_ptr(scale));
    let channels = channels as i32;
    let eps = eps as f32;
    let mut args = stream.builder(&function);
    args.arg(&x_ptr)
        .arg(&y_ptr)
        .arg(&rows)
        .arg(&channels)
        .arg(&w_ptr)
        .arg(&b_ptr)
        .arg(&shift_ptr)
        .arg(&scale_ptr)
        .arg(&mod_stride)
        .arg(&groups.0)
        .arg(&groups.1)
        .arg(&eps);
    let config = if vectorised {
        // One warp per row.
        device::grid(rows * 32, THREADS, MAX_BLOCKS)?
    } else {
        cudarc::driver::LaunchConfig {
            grid_dim: (rows.clamp(1, MAX_BLOCKS) as u32, 1, 1),
            block_dim: (block_threads(channels), 1, 1),
            shared_mem_bytes: 0,
        }
    };
    // SAFETY: (the vectorised kernel also needs its 16-byte alignment and divisibility, checked
    // above) the arguments follow the kernel's parameter list; x and y are contiguous
    // [rows, channels] of the kernel's dtype, weight/bias [channels] fp32 or null, shift/scale
    // rows of `mod_stride` elements covering every group the row mapping yields (checked above).
    unsafe { device::launch(&mut args, config, name) }?;
    Ok(Some(y))
}

/// Threads per row block: enough to cover the row in a few passes, a multiple of 32.
fn block_threads(channels: i32) -> u32 {
    match channels {
        c if c >= 1024 => 256,
        c if c >= 256 => 128,
        _ => 64,
    }
}

/// Multi-head RMS norm of `x` `[R, H, D]` (rows may be strided, heads and channels
/// contiguous): `x / max(‖x‖, 1e-12) · gamma · scale` in fp32 per head, result contiguous in
/// `x`'s dtype. `gamma` fp32 `[H, D]`.
pub fn rms_norm_heads(x: &Tensor, gamma: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let Some((ordinal, dtype)) = target(x) else {
        return Ok(None);
    };
    let (size, stride) = (x.size(), x.stride());
    let [rows, heads, head_dim] = size[..] else {
        return Ok(None);
    };
    let layout_ok = stride[2] == 1 && stride[1] == head_dim && (rows == 1 || stride[0] > 0);
    let gamma_ok = gamma.kind() == Kind::Float
        && gamma.device() == x.device()
        && gamma.size() == [heads, head_dim]
        && gamma.is_contiguous();
    if !layout_ok || !gamma_ok || x.numel() == 0 || head_dim > i32::MAX as i64 {
        return Ok(None);
    }
    let y = Tensor::f_empty([rows, heads, head_dim], (x.kind(), x.device()))?;
    let n = pack_elements(x.kind());
    let lanes = head_dim / n;
    let vectorised = head_dim % n == 0
        && (1..=32).contains(&lanes)
        && 32 % lanes == 0
        && stride[0] % n == 0
        && aligned(ptr(x))
        && aligned(ptr(&y));
    let name = if vectorised {
        RMS_NORM_HEADS_VEC[dtype]
    } else {
        RMS_NORM_HEADS[dtype]
    };
    let gpu = cuda_device(ordinal)?;
    let function = gpu.function(&FUSED_NORM, name)?;
    let stream = gpu.torch_stream()?;
    let (x_ptr, y_ptr, gamma_ptr) = (ptr(x), ptr(&y), ptr(gamma));
    let row_stride = stride[0];
    let (heads_i32, head_dim_i32) = (heads as i32, head_dim as i32);
    let scale = scale as f32;
    let mut args = stream.builder(&function);
    args.arg(&x_ptr)
        .arg(&row_stride)
        .arg(&y_ptr)
        .arg(&rows)
        .arg(&heads_i32)
        .arg(&head_dim_i32)
        .arg(&gamma_ptr)
        .arg(&scale);
    // One warp (scalar) or `lanes` lanes (vectorised) per (row, head).
    let per_pair = if vectorised { lanes } else { 32 };
    let config = device::grid(rows * heads * per_pair, THREADS, MAX_BLOCKS)?;
    // SAFETY: (vectorised: alignment and pack divisibility checked above) x covers
    // rows × row_stride with heads × head_dim contiguous per row (checked), y
    // is a fresh contiguous [rows, heads, head_dim], gamma fp32 [heads, head_dim].
    unsafe { device::launch(&mut args, config, name) }?;
    Ok(Some(y))
}

/// `x + h · gate` per group (the reference rounds the product, then the sum, to the dtype):
/// `x`, `h` contiguous `[.., C]` of one shape, `gate` a `[G, C]` view.
pub fn gated_residual(
    x: &Tensor,
    h: &Tensor,
    gate: &Tensor,
    row_groups: RowGroups<'_>,
) -> Result<Option<Tensor>> {
    let Some((ordinal, dtype)) = target(x) else {
        return Ok(None);
    };
    let channels = x.size().last().copied().unwrap_or(0);
    let same = h.size() == x.size() && h.kind() == x.kind() && h.device() == x.device();
    if channels == 0 || !same || !x.is_contiguous() || !h.is_contiguous() || x.numel() == 0 {
        return Ok(None);
    }
    let rows = x.numel() as i64 / channels;
    let Some(gate_stride) = mod_row_stride(gate, x, channels) else {
        return Ok(None);
    };
    let Some(groups) = group_args(&row_groups, rows, gate.size()[0], x) else {
        return Ok(None);
    };
    let out = Tensor::f_empty_like(x)?;
    let n = pack_elements(x.kind());
    let vectorised = channels % n == 0
        && gate_stride % n == 0
        && [ptr(x), ptr(h), ptr(gate), ptr(&out)]
            .into_iter()
            .all(aligned);
    let name = if vectorised {
        GATED_RESIDUAL_VEC[dtype]
    } else {
        GATED_RESIDUAL[dtype]
    };
    let gpu = cuda_device(ordinal)?;
    let function = gpu.function(&FUSED_NORM, name)?;
    let stream = gpu.torch_stream()?;
    let (x_ptr, h_ptr, gate_ptr, out_ptr) = (ptr(x), ptr(h), ptr(gate), ptr(&out));
    let channels = channels as i32;
    let mut args = stream.builder(&function);
    args.arg(&x_ptr)
        .arg(&h_ptr)
        .arg(&gate_ptr)
        .arg(&gate_stride)
        .arg(&out_ptr)
        .arg(&rows)
        .arg(&channels)
        .arg(&groups.0)
        .arg(&groups.1);
    let per_thread = if vectorised { n } else { 1 };
    let config = device::grid(rows * channels as i64 / per_thread, THREADS, MAX_BLOCKS)?;
    // SAFETY: (vectorised: alignment and pack divisibility checked above) x, h and out are
    // contiguous [rows, channels] of the kernel's dtype; gate rows of
    // `gate_stride` elements cover every group the row mapping yields (checked above).
    unsafe { device::launch(&mut args, config, name) }?;
    Ok(Some(out))
}

/// `x + shares_1 / K + … + shares_K / K` with the views added one at a time, in order, each
/// share and each sum rounded to the dtype as the reference's
/// `x = x + cross_attn(h, ctx_k) / K` rounds them (one pass instead of a division and K adds).
/// `x` is contiguous `[N, C]`; `shares` is contiguous `[K, N, C]` (every view's output), or
/// `[1, C]` (one row every view adds to every row: an all-zero condition's constant output).
pub fn add_view_shares(x: &Tensor, shares: &Tensor, views: i64) -> Result<Option<Tensor>> {
    let Some((ordinal, dtype)) = target(x) else {
        return Ok(None);
    };
    let (rows, channels) = match x.size()[..] {
        [rows, channels] if rows > 0 && channels > 0 => (rows, channels),
        _ => return Ok(None),
    };
    let strides = match shares.size()[..] {
        [k, n, c] if k == views && n == rows && c == channels => (rows * channels, channels),
        [1, c] if c == channels => (0, 0),
        _ => return Ok(None),
    };
    let same = shares.kind() == x.kind() && shares.device() == x.device();
    let Ok(views_arg) = i32::try_from(views) else {
        return Ok(None);
    };
    if !same || views_arg < 1 || !x.is_contiguous() || !shares.is_contiguous() {
        return Ok(None);
    }
    let out = Tensor::f_empty_like(x)?;
    let n = pack_elements(x.kind());
    let vectorised = channels % n == 0 && [ptr(x), ptr(shares), ptr(&out)].into_iter().all(aligned);
    let name = if vectorised {
        ADD_VIEW_SHARES_VEC[dtype]
    } else {
        ADD_VIEW_SHARES[dtype]
    };
    let gpu = cuda_device(ordinal)?;
    let function = gpu.function(&FUSED_NORM, name)?;
    let stream = gpu.torch_stream()?;
    let (x_ptr, shares_ptr, out_ptr) = (ptr(x), ptr(shares), ptr(&out));
    let (view_stride, row_stride) = strides;
    // torch divides a tensor by a scalar as a product with the scalar's fp32 reciprocal.
    let inv = 1.0f32 / views_arg as f32;
    let channels_arg = channels as i32;
    let mut args = stream.builder(&function);
    args.arg(&x_ptr)
        .arg(&shares_ptr)
        .arg(&view_stride)
        .arg(&row_stride)
        .arg(&views_arg)
        .arg(&inv)
        .arg(&out_ptr)
        .arg(&rows)
        .arg(&channels_arg);
    let per_thread = if vectorised { n } else { 1 };
    let config = device::grid(rows * channels / per_thread, THREADS, MAX_BLOCKS)?;
    // SAFETY: (vectorised: alignment and pack divisibility of channels, hence of both strides,
    // checked above) x and out are contiguous [rows, channels] of the kernel's dtype; shares is
    // contiguous [views, rows, channels] (strides rows·channels, channels) or one [channels]
    // row (strides 0), so every index the kernel forms lies inside it.
    unsafe { device::launch(&mut args, config, name) }?;
    Ok(Some(out))
}

/// VGGT attention's q or k path as the reference runs it under autocast, in one kernel:
/// LayerNorm over each head's features in fp32 (`gamma`, `beta` fp32 `[D]`), then, with
/// `rope` = `(cos_row, sin_row, cos_col, sin_col)` (fp32 `[Bt, 1, N, D/2]`, `Bt` 1 or `B`),
/// VGGT's 2-D rotary embedding in fp32, then one cast to `x`'s dtype. `x` is the `[B, N, H, D]`
/// view of q or k inside the qkv projection (unit stride along `D`, heads adjacent, batches
/// `N` rows apart); the result is `[B, H, N, D]` contiguous, the layout SDPA takes. fp16/bf16
/// with `D` 32, 64 or 128 only.
pub fn qk_norm_rope(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    rope: Option<[&Tensor; 4]>,
) -> Result<Option<Tensor>> {
    let Some((ordinal, dtype)) = target(x) else {
        return Ok(None);
    };
    let (size, stride) = (x.size(), x.stride());
    let [batch, tokens, heads, dim] = size[..] else {
        return Ok(None);
    };
    // The kernels are compiled per head width (32 · features per lane).
    let width = match dim {
        32 => 0,
        64 => 1,
        128 => 2,
        _ => return Ok(None),
    };
    let row_stride = stride[1];
    let layout_fits = stride[3] == 1
        && stride[2] == dim
        && (batch == 1 || stride[0] == tokens * row_stride)
        && dtype < 2
        && batch * tokens * heads > 0;
    let params_fit = [gamma, beta].iter().all(|t| {
        t.kind() == Kind::Float
            && t.device() == x.device()
            && t.size() == [dim]
            && t.is_contiguous()
    });
    if !layout_fits || !params_fit {
        return Ok(None);
    }
    let half = dim / 2;
    let mut table_batches = 1;
    if let Some(tables) = &rope {
        let first = tables[0].size();
        table_batches = first.first().copied().unwrap_or(0);
        let fits = |t: &&Tensor| {
            t.kind() == Kind::Float
                && t.device() == x.device()
                && t.size() == first
                && t.is_contiguous()
        };
        if !(first.len() == 4
            && (table_batches == 1 || table_batches == batch)
            && first[1] == 1
            && first[2] == tokens
            && first[3] == half
            && tables.iter().all(fits))
        {
            return Ok(None);
        }
    }
    let out = Tensor::f_empty([batch, heads, tokens, dim], (x.kind(), x.device()))?;
    let name = QK_NORM_ROPE[dtype][width];
    let gpu = cuda_device(ordinal)?;
    let function = gpu.function(&FUSED_NORM, name)?;
    let stream = gpu.torch_stream()?;
    let [cos_row, sin_row, cos_col, sin_col] = rope.map_or([0; 4], |t| t.map(ptr));
    let (x_ptr, out_ptr, gamma_ptr, beta_ptr) = (ptr(x), ptr(&out), ptr(gamma), ptr(beta));
    let heads_arg = heads as i32;
    let eps = eps as f32;
    let mut args = stream.builder(&function);
    args.arg(&x_ptr)
        .arg(&row_stride)
        .arg(&out_ptr)
        .arg(&batch)
        .arg(&tokens)
        .arg(&heads_arg)
        .arg(&gamma_ptr)
        .arg(&beta_ptr)
        .arg(&eps)
        .arg(&cos_row)
        .arg(&sin_row)
        .arg(&cos_col)
        .arg(&sin_col)
        .arg(&table_batches);
    let config = device::grid(batch * tokens * heads * 32, THREADS, MAX_BLOCKS)?;
    // SAFETY: x covers batch × tokens rows of `row_stride` elements with heads × dim
    // contiguous per row (checked); out is a fresh contiguous [batch, heads, tokens, dim];
    // gamma and beta are fp32 [dim]; the tables, when given, are contiguous fp32
    // [table_batches, 1, tokens, dim / 2] (checked), else null.
    unsafe { device::launch(&mut args, config, name) }?;
    Ok(Some(out))
}

/// The kernels' names per activation dtype, in the order of [`dtype_index`].
const LAYER_NORM_MODULATE: [&str; 3] = [
    "layer_norm_modulate_f16",
    "layer_norm_modulate_bf16",
    "layer_norm_modulate_f32",
];
const RMS_NORM_HEADS: [&str; 3] = [
    "rms_norm_heads_f16",
    "rms_norm_heads_bf16",
    "rms_norm_heads_f32",
];
const GATED_RESIDUAL: [&str; 3] = [
    "gated_residual_f16",
    "gated_residual_bf16",
    "gated_residual_f32",
];
/// `qk_norm_rope` per 16-bit dtype (fp16, bf16) and head width (32, 64, 128).
const QK_NORM_ROPE: [[&str; 3]; 2] = [
    [
        "qk_norm_rope_d1_f16",
        "qk_norm_rope_d2_f16",
        "qk_norm_rope_d4_f16",
    ],
    [
        "qk_norm_rope_d1_bf16",
        "qk_norm_rope_d2_bf16",
        "qk_norm_rope_d4_bf16",
    ],
];
const ADD_VIEW_SHARES: [&str; 3] = [
    "add_view_shares_f16",
    "add_view_shares_bf16",
    "add_view_shares_f32",
];
/// The vectorised variants (16-byte packs, a warp per row), same order.
const LAYER_NORM_MODULATE_VEC: [&str; 3] = [
    "layer_norm_modulate_vec_f16",
    "layer_norm_modulate_vec_bf16",
    "layer_norm_modulate_vec_f32",
];
const RMS_NORM_HEADS_VEC: [&str; 3] = [
    "rms_norm_heads_vec_f16",
    "rms_norm_heads_vec_bf16",
    "rms_norm_heads_vec_f32",
];
const GATED_RESIDUAL_VEC: [&str; 3] = [
    "gated_residual_vec_f16",
    "gated_residual_vec_bf16",
    "gated_residual_vec_f32",
];
const ADD_VIEW_SHARES_VEC: [&str; 3] = [
    "add_view_shares_vec_f16",
    "add_view_shares_vec_bf16",
    "add_view_shares_vec_f32",
];

/// Every kernel the host launches (the compile test checks they exist).
pub const KERNEL_NAMES: [&str; 30] = [
    LAYER_NORM_MODULATE[0],
    LAYER_NORM_MODULATE[1],
    LAYER_NORM_MODULATE[2],
    RMS_NORM_HEADS[0],
    RMS_NORM_HEADS[1],
    RMS_NORM_HEADS[2],
    GATED_RESIDUAL[0],
    GATED_RESIDUAL[1],
    GATED_RESIDUAL[2],
    LAYER_NORM_MODULATE_VEC[0],
    LAYER_NORM_MODULATE_VEC[1],
    LAYER_NORM_MODULATE_VEC[2],
    RMS_NORM_HEADS_VEC[0],
    RMS_NORM_HEADS_VEC[1],
    RMS_NORM_HEADS_VEC[2],
    GATED_RESIDUAL_VEC[0],
    GATED_RESIDUAL_VEC[1],
    GATED_RESIDUAL_VEC[2],
    ADD_VIEW_SHARES[0],
    ADD_VIEW_SHARES[1],
    ADD_VIEW_SHARES[2],
    ADD_VIEW_SHARES_VEC[0],
    ADD_VIEW_SHARES_VEC[1],
    ADD_VIEW_SHARES_VEC[2],
    QK_NORM_ROPE[0][0],
    QK_NORM_ROPE[0][1],
    QK_NORM_ROPE[0][2],
    QK_NORM_ROPE[1][0],
    QK_NORM_ROPE[1][1],
    QK_NORM_ROPE[1][2],
];

/// Bytes of one vector load or store of the `_vec` kernels.
const PACK_BYTES: i64 = 16;
/// Packs of one row a lane of `layer_norm_modulate_vec` holds (`LN_PACKS` in the kernel).
const LN_PACKS: i64 = 8;

/// Elements of `kind` in one 16-byte pack.
fn pack_elements(kind: Kind) -> i64 {
    PACK_BYTES / kind.elt_size_in_bytes() as i64
}

/// Whether the pointer of `t` is 16-byte aligned (null counts as aligned: an absent operand).
fn aligned(pointer: u64) -> bool {
    pointer.is_multiple_of(PACK_BYTES as u64)
}
