//! Host side of `kernels/sparse_conv.cu`: the CUDA path of the sparse engine.
//!
//! * [`VoxelHash`]: a GPU hash of voxel coordinates (insert, lookup).
//! * [`build_submanifold_kernel_map`]: the kernel map in the engine's format, pair for pair
//!   the one the CPU path builds (same grouping, same order), plus the [`pair_index`] the
//!   convolution reads. One device-to-host copy per map (the per-offset pair counts, which
//!   size the pair buffer and are part of the map's format); no other host round-trip.
//! * [`submanifold_conv`]: gather → per-offset GEMM (libtorch `mm`, i.e. cuBLAS) →
//!   reduction. The reduction is deterministic (no atomics): each output row sums its
//!   contributions in offset order, which in fp32 is exactly the CPU path's order of additions.
//!   No host round-trip. Convolutions with at most [`FUSED_MAX_CHANNELS`] channels run instead
//!   one fused kernel that gathers through `pair_index`, multiplies (fp16: on the tensor cores
//!   in whole MMA fragments; fp32: fp32 FMA on the CUDA cores, no TF32) and writes each output
//!   row once (no workspace, no atomics, offsets summed in order); at these widths the
//!   separate passes are bound by the traffic of their intermediate buffers.
//!
//! All tensors are libtorch's, on libtorch's current stream (see `device.rs`). Kernels take
//! the raw device pointers of contiguous tensors (`Tensor::data_ptr`).
//!
//! [`pair_index`]: crate::sparse::KernelMap::pair_index

use cudarc::driver::{DeviceRepr, PushKernelArg};
use tch::{Device, Kind, Tensor};

use super::device::{self, cuda_device, CudaDevice, TorchStream};
use super::nvrtc::SPARSE_CONV;
use crate::error::{Error, Result};
use crate::sparse::engine::ConvGeometry;

/// Threads per block of every sparse kernel (a multiple of 32: the kernel-map scan works on
/// whole warps).
const THREADS: u32 = 256;
/// Grid cap of the grid-stride kernels.
const MAX_BLOCKS: i64 = 1 << 20;
/// Default bound on the gather + product workspace of one convolution. Offsets are processed
/// in groups whose pairs fit; each group costs one extra pass over the output.
pub const DEFAULT_WORKSPACE_BYTES: usize = 256 << 20;

/// The kernels of `sparse_conv.cu` the host calls (the compile test checks they exist).
pub const KERNEL_NAMES: &[&str] = &[
    "voxel_hash_insert_i32",
    "voxel_hash_insert_i64",
    "voxel_hash_lookup_i32",
    "voxel_hash_lookup_i64",
    "kmap_probe_i32",
    "kmap_probe_i64",
    "kmap_compact",
    "pair_index_fill",
    "gather_rows_b16",
    "gather_rows_b4",
    "gather_rows_b2",
    "accumulate_offsets_f32",
    "accumulate_offsets_f32x4",
    "accumulate_offsets_f16",
    "accumulate_offsets_f16x4",
    "fused_subm_conv_f16",
    "fused_subm_conv_f32",
    "fused_subm_conv_f32_r64",
];

/// Threads per block of the fused kernels (`FUSED_THREADS` / `F32_THREADS` in the kernel file).
const FUSED_THREADS: u32 = 256;
/// Output rows and channels of one fused block (`FUSED_ROWS`, `FUSED_COLS`; the fp32 kernel's
/// `F32_ROWS`, `F32_COLS` are the same).
const FUSED_ROWS: i64 = 128;
const FUSED_COLS: i64 = 128;
/// Largest channel count (in or out) sent to the fused kernel: beyond it the GEMMs are
/// compute-bound and cuBLAS's Hopper kernels win (benches/RESULTS.md).
pub const FUSED_MAX_CHANNELS: i64 = 256;

/// Whether the sparse kernels work on `cuda:<ordinal>` (driver, NVRTC, compilation, module
/// load), checked once per device. `RECON_CUDA_KERNELS=0` turns them off (the engine then
/// runs its ATen implementation on CUDA too). The reason for a failure is logged once.
pub fn kernels_available(ordinal: usize) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static AVAILABLE: OnceLock<Mutex<HashMap<usize, bool>>> = OnceLock::new();
    if std::env::var("RECON_CUDA_KERNELS").is_ok_and(|v| v == "0") {
        return false;
    }
    let table = AVAILABLE.get_or_init(Default::default);
    let mut table = match table.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    *table.entry(ordinal).or_insert_with(|| {
        match cuda_device(ordinal).and_then(|d| d.function(&SPARSE_CONV, "kmap_probe_i32")) {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(
                    "sparse engine: CUDA kernels unavailable on cuda:{ordinal}, using ATen: {err}"
                );
                false
            }
        }
    })
}

/// The device ordinal of a CUDA tensor.
fn cuda_ordinal(tensor: &Tensor, what: &str) -> Result<usize> {
    match tensor.device() {
        Device::Cuda(ordinal) => Ok(ordinal),
        other => Err(Error::invalid_argument(format!(
            "CUDA sparse kernels: {what} is on {other:?}, not a CUDA device"
        ))),
    }
}

fn same_device(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::invalid_argument(format!(
            "CUDA sparse conv: {what} is on {:?} but the features are on {:?}",
            b.device(),
            a.device()
        )));
    }
    Ok(())
}

fn ptr(tensor: &Tensor) -> u64 {
    tensor.data_ptr() as u64
}

/// Validated voxel coordinates: contiguous int32 or int64 `[N, 4]` on a CUDA device.
fn checked_coords(coords: &Tensor) -> Result<Tensor> {
    let size = coords.size();
    if size.len() != 2 || size[1] != 4 {
        return Err(Error::invalid_argument(format!(
            "CUDA sparse kernels: coords must be [N, 4] (batch, x, y, z), got {size:?}"
        )));
    }
    if !matches!(coords.kind(), Kind::Int | Kind::Int64) {
        return Err(Error::invalid_argument(format!(
            "CUDA sparse kernels: coords must be int32 or int64, got {:?}",
            coords.kind()
        )));
    }
    if size[0] > i32::MAX as i64 {
        return Err(Error::unsupported(format!(
            "CUDA sparse kernels: {} voxels, at most {} (int32 row indices)",
            size[0],
            i32::MAX
        )));
    }
    cuda_ordinal(coords, "coords")?;
    Ok(coords.f_contiguous()?)
}

/// The `_i32` or `_i64` variant of a coordinate kernel.
fn coords_kernel(coords: &Tensor, i32_name: &'static str, i64_name: &'static str) -> &'static str {
    if coords.kind() == Kind::Int {
        i32_name
    } else {
        i64_name
    }
}

/// A hash of voxel coordinates on the GPU: open addressing (linear probing) over a
/// power-of-two table of row indices, at most half full.
pub struct VoxelHash {
    /// Contiguous int32/int64 `[N, 4]`; the table's slots refer to its rows.
    coords: Tensor,
    /// int32 `[capacity]`, -1 where empty.
    table: Tensor,
    mask: u64,
}

impl VoxelHash {
    /// Inserts every row of `coords` (int32/int64 `[N, 4]`, unique rows, on a CUDA device).
    pub fn build(coords: &Tensor) -> Result<Self> {
        let coords = checked_coords(coords)?;
        let n = coords.size()[0];
        let capacity = (2 * n.max(32) as u64).next_power_of_two();
        let table = Tensor::f_full([capacity as i64], -1, (Kind::Int, coords.device()))?;
        let hash = Self {
            mask: capacity - 1,
            coords,
            table,
        };
        if n > 0 {
            let gpu = cuda_device(cuda_ordinal(&hash.coords, "coords")?)?;
            let name = coords_kernel(
                &hash.coords,
                "voxel_hash_insert_i32",
                "voxel_hash_insert_i64",
            );
            let function = gpu.function(&SPARSE_CONV, name)?;
            let stream = gpu.torch_stream()?;
            let (coords_ptr, table_ptr) = (ptr(&hash.coords), ptr(&hash.table));
            let mut args = stream.builder(&function);
            args.arg(&coords_ptr)
                .arg(&n)
                .arg(&table_ptr)
                .arg(&hash.mask);
            // SAFETY: (coords [n, 4], n, table [mask + 1], mask) as the kernel declares.
            unsafe { device::launch(&mut args, device::grid(n, THREADS, MAX_BLOCKS)?, name) }?;
        }
        Ok(hash)
    }

    /// The row of every query voxel (`[M, 4]`, the coordinates' dtype and device), int64
    /// `[M]`, -1 where absent.
    pub fn lookup(&self, queries: &Tensor) -> Result<Tensor> {
        let size = queries.size();
        if size.len() != 2 || size[1] != 4 {
            return Err(Error::invalid_argument(format!(
                "VoxelHash::lookup: queries must be [M, 4], got {size:?}"
            )));
        }
        same_device(&self.coords, queries, "the queries")?;
        if queries.kind() != self.coords.kind() {
            // Converting could truncate int64 queries onto int32 voxels: refuse instead.
            return Err(Error::invalid_argument(format!(
                "VoxelHash::lookup: queries are {:?}, the hashed coordinates {:?}",
                queries.kind(),
                self.coords.kind()
            )));
        }
        let queries = queries.f_contiguous()?;
        let m = size[0];
        let rows = Tensor::f_empty([m], (Kind::Int64, queries.device()))?;
        if m == 0 {
            return Ok(rows);
        }
        let gpu = cuda_device(cuda_ordinal(&queries, "queries")?)?;
        let name = coords_kernel(
            &self.coords,
            "voxel_hash_lookup_i32",
            "voxel_hash_lookup_i64",
        );
        let function = gpu.function(&SPARSE_CONV, name)?;
        let stream = gpu.torch_stream()?;
        let (coords_ptr, table_ptr, queries_ptr, rows_ptr) = (
            ptr(&self.coords),
            ptr(&self.table),
            ptr(&queries),
            ptr(&rows),
        );
        let mut args = stream.builder(&function);
        args.arg(&coords_ptr)
            .arg(&table_ptr)
            .arg(&self.mask)
            .arg(&queries_ptr)
            .arg(&m)
            .arg(&rows_ptr);
        // SAFETY: (coords, table, mask, queries [m, 4], m, rows [m]) as declared.
        unsafe { device::launch(&mut args, device::grid(m, THREADS, MAX_BLOCKS)?, name) }?;
        Ok(rows)
    }

    /// Number of slots.
    pub fn capacity(&self) -> i64 {
        self.mask as i64 + 1
    }
}

/// The kernel's `KernelShape` parameter (passed by value).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct KernelShape {
    size: [i32; 3],
    dilation: [i32; 3],
}

// SAFETY: plain `#[repr(C)]` ints, laid out as the kernel's struct of two int[3].
unsafe impl DeviceRepr for KernelShape {}

impl KernelShape {
    fn new(geometry: ConvGeometry) -> Result<Self> {
        let narrow = |v: i64| {
            i32::try_from(v).map_err(|_| {
                Error::unsupported(format!("sparse conv geometry {geometry:?} exceeds int32"))
            })
        };
        let [kx, ky, kz] = geometry.kernel_size;
        let [dx, dy, dz] = geometry.dilation;
        Ok(Self {
            size: [narrow(kx)?, narrow(ky)?, narrow(kz)?],
            dilation: [narrow(dx)?, narrow(dy)?, narrow(dz)?],
        })
    }
}

/// A kernel map built on the GPU, in the engine's format (see `engine::KernelMap`).
pub struct CudaKernelMap {
    /// int64 `[2, P]`: input rows, output rows; grouped by offset, output rows increasing.
    pub pairs: Tensor,
    /// Pairs per offset (the centre's is 0).
    pub pair_counts: Vec<i64>,
    /// int32 `[K, N]`: the position in `pairs` of (offset, output row), or -1. `None` for an
    /// empty map.
    pub pair_index: Option<Tensor>,
}

/// The kernel map of `geometry` over `coords` (int32/int64 `[N, 4]`, unique rows) on their
/// CUDA device.
pub fn build_submanifold_kernel_map(
    coords: &Tensor,
    geometry: ConvGeometry,
) -> Result<CudaKernelMap> {
    geometry.validate()?;
    let coords = checked_coords(coords)?;
    let n = coords.size()[0];
    let volume = geometry.volume();
    let empty = || -> Result<CudaKernelMap> {
        Ok(CudaKernelMap {
            pairs: Tensor::f_empty([2, 0], (Kind::Int64, coords.device()))?,
            pair_counts: vec![0; volume as usize],
            pair_index: None,
        })
    };
    if n == 0 || volume == 1 {
        return empty();
    }
    let hash = VoxelHash::build(&coords)?;
    let gpu = cuda_device(cuda_ordinal(&coords, "coords")?)?;
    let tiles_per_offset = (n + THREADS as i64 - 1) / THREADS as i64;
    let num_tiles = volume * tiles_per_offset;
    let device = coords.device();
    let pair_index = Tensor::f_empty([volume, n], (Kind::Int, device))?;
    let tile_counts = Tensor::f_empty([num_tiles], (Kind::Int, device))?;
    probe_neighbours(
        &gpu,
        &hash,
        geometry,
        tiles_per_offset,
        &pair_index,
        &tile_counts,
    )?;

    let tile_counts = tile_counts.f_to_kind(Kind::Int64)?;
    let tile_starts = tile_counts.f_cumsum(0, Kind::Int64)?.f_sub(&tile_counts)?;
    // The one device-to-host copy: per-offset totals size `pairs` and are the map's counts.
    let per_offset = tile_counts
        .f_view([volume, tiles_per_offset])?
        .f_sum_dim_intlist(1, false, Kind::Int64)?
        .f_to_device(Device::Cpu)?;
    let pair_counts = Vec::<i64>::try_from(&per_offset)?;
    let total: i64 = pair_counts.iter().sum();
    if total > i32::MAX as i64 {
        return Err(Error::unsupported(format!(
            "CUDA kernel map: {total} neighbour pairs, at most {} (int32 pair index)",
            i32::MAX
        )));
    }
    let pairs = Tensor::f_empty([2, total], (Kind::Int64, device))?;
    if total > 0 {
        compact_pairs(
            &gpu,
            n,
            volume,
            tiles_per_offset,
            &tile_starts,
            &pair_index,
            &pairs,
        )?;
    }
    Ok(CudaKernelMap {
        pairs,
        pair_counts,
        pair_index: Some(pair_index),
    })
}

fn probe_neighbours(
    gpu: &CudaDevice,
    hash: &VoxelHash,
    geometry: ConvGeometry,
    tiles_per_offset: i64,
    pair_index: &Tensor,
    tile_counts: &Tensor,
) -> Result<()> {
    let n = hash.coords.size()[0];
    let volume = geometry.volume();
    let name = coords_kernel(&hash.coords, "kmap_probe_i32", "kmap_probe_i64");
    let function = gpu.function(&SPARSE_CONV, name)?;
    let stream = gpu.torch_stream()?;
    let shape = KernelShape::new(geometry)?;
    let centre = geometry.centre();
    let (coords_ptr, table_ptr, index_ptr, counts_ptr) = (
        ptr(&hash.coords),
        ptr(&hash.table),
        ptr(pair_index),
        ptr(tile_counts),
    );
    let mut args = stream.builder(&function);
    args.arg(&coords_ptr)
        .arg(&n)
        .arg(&table_ptr)
        .arg(&hash.mask)
        .arg(&shape)
        .arg(&centre)
        .arg(&volume)
        .arg(&tiles_per_offset)
        .arg(&index_ptr)
        .arg(&counts_ptr);
    let config = tile_grid(volume * tiles_per_offset);
    // SAFETY: (coords [n, 4], n, table, mask, shape, centre, K, tiles, pair_index [K, n],
    // tile_counts [K * tiles]) as declared; one block per tile, THREADS rows per tile.
    unsafe { device::launch(&mut args, config, name) }
}

fn compact_pairs(
    gpu: &CudaDevice,
    n: i64,
    volume: i64,
    tiles_per_offset: i64,
    tile_starts: &Tensor,
    pair_index: &Tensor,
    pairs: &Tensor,
) -> Result<()> {
    let function = gpu.function(&SPARSE_CONV, "kmap_compact")?;
    let stream = gpu.torch_stream()?;
    let total = pairs.size()[1];
    let (starts_ptr, index_ptr, pairs_ptr) = (ptr(tile_starts), ptr(pair_index), ptr(pairs));
    let mut args = stream.builder(&function);
    args.arg(&n)
        .arg(&volume)
        .arg(&tiles_per_offset)
        .arg(&starts_ptr)
        .arg(&index_ptr)
        .arg(&pairs_ptr)
        .arg(&total);
    // SAFETY: (n, K, tiles, tile_starts [K * tiles], pair_index [K, n], pairs [2, total],
    // total) as declared; the tile layout matches the probe's.
    unsafe {
        device::launch(
            &mut args,
            tile_grid(volume * tiles_per_offset),
            "kmap_compact",
        )
    }
}

/// One block of THREADS per tile (grid-stride beyond the cap).
fn tile_grid(num_tiles: i64) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: (num_tiles.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `pair_index` for a map that came without one: -1 everywhere, then each offset's pairs.
pub fn pair_index_from_pairs(pairs: &Tensor, pair_counts: &[i64], n: i64) -> Result<Tensor> {
    let volume = pair_counts.len() as i64;
    let pair_index = Tensor::f_full([volume, n], -1, (Kind::Int, pairs.device()))?;
    let pairs = pairs.f_contiguous()?;
    let gpu = cuda_device(cuda_ordinal(&pairs, "the kernel map")?)?;
    let function = gpu.function(&SPARSE_CONV, "pair_index_fill")?;
    let stream = gpu.torch_stream()?;
    let total = pairs.size()[1];
    let out_rows_ptr = ptr(&pairs) + 8 * total as u64;
    let index_ptr = ptr(&pair_index);
    let mut start = 0i64;
    for (k, &count) in pair_counts.iter().enumerate() {
        if count > 0 {
            let k = k as i64;
            let mut args = stream.builder(&function);
            args.arg(&out_rows_ptr)
                .arg(&start)
                .arg(&count)
                .arg(&k)
                .arg(&n)
                .arg(&index_ptr);
            let config = device::grid(count, THREADS, MAX_BLOCKS)?;
            // SAFETY: (out_rows [total], start, count, k, n, pair_index [K, n]) as declared;
            // start + count <= total and the map's output rows are < n.
            unsafe { device::launch(&mut args, config, "pair_index_fill") }?;
        }
        start += count;
    }
    Ok(pair_index)
}

/// The inputs of one CUDA convolution, validated.
struct ConvInputs {
    x: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    n: i64,
    c_in: i64,
    c_out: i64,
}

fn check_conv_inputs(
    feats: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    pairs: &Tensor,
    pair_counts: &[i64],
    centre: i64,
) -> Result<ConvInputs> {
    cuda_ordinal(feats, "the features")?;
    let (fs, ws) = (feats.size(), weight.size());
    if fs.len() != 2 {
        return Err(Error::invalid_argument(format!(
            "CUDA sparse conv: features must be [N, C_in], got {fs:?}"
        )));
    }
    if ws.len() != 3 || ws[1] != fs[1] {
        return Err(Error::invalid_argument(format!(
            "CUDA sparse conv: weight must be [K, C_in, C_out] with C_in = {}, got {ws:?}",
            fs[1]
        )));
    }
    let kind = feats.kind();
    if !matches!(kind, Kind::Float | Kind::Half) {
        return Err(Error::unsupported(format!(
            "CUDA sparse conv kernels support float32 and float16 features, got {kind:?}"
        )));
    }
    if weight.kind() != kind || bias.is_some_and(|b| b.kind() != kind) {
        return Err(Error::invalid_argument(format!(
            "CUDA sparse conv: weight ({:?}) and bias ({:?}) must have the features' dtype {kind:?}",
            weight.kind(),
            bias.map(|b| b.kind())
        )));
    }
    same_device(feats, weight, "the weight")?;
    same_device(feats, pairs, "the kernel map")?;
    let (volume, c_out) = (ws[0], ws[2]);
    if let Some(b) = bias {
        same_device(feats, b, "the bias")?;
        if b.size() != [c_out] {
            return Err(Error::invalid_argument(format!(
                "CUDA sparse conv: bias must be [{c_out}], got {:?}",
                b.size()
            )));
        }
    }
    if pair_counts.len() as i64 != volume || centre < 0 || centre >= volume {
        return Err(Error::invalid_argument(format!(
            "CUDA sparse conv: {} pair counts and centre {centre} for a kernel of {volume} offsets",
            pair_counts.len()
        )));
    }
    if pair_counts[centre as usize] != 0 || pair_counts.iter().any(|&c| c < 0) {
        return Err(Error::invalid_argument(
            "CUDA sparse conv: pair counts must be non-negative and 0 for the centre offset",
        ));
    }
    let total: i64 = pair_counts.iter().sum();
    if pairs.size() != [2, total] || pairs.kind() != Kind::Int64 {
        return Err(Error::invalid_argument(format!(
            "CUDA sparse conv: pairs must be int64 [2, {total}], got {:?} {:?}",
            pairs.kind(),
            pairs.size()
        )));
    }
    Ok(ConvInputs {
        x: feats.f_contiguous()?,
        weight: weight.f_contiguous()?,
        bias: bias.map(|b| b.f_contiguous()).transpose()?,
        n: fs[0],
        c_in: fs[1],
        c_out,
    })
}

/// Offsets `k_begin..k_end` and their pairs `pair_begin..pair_end`, processed together.
#[derive(Debug, Clone, Copy)]
struct OffsetGroup {
    k_begin: usize,
    k_end: usize,
    pair_begin: i64,
    pair_end: i64,
}

/// Consecutive offsets grouped so that each group's pairs fit `max_pairs` (a single offset
/// may exceed it alone).
fn offset_groups(pair_counts: &[i64], max_pairs: i64) -> Vec<OffsetGroup> {
    let mut groups = Vec::new();
    let mut current = OffsetGroup {
        k_begin: 0,
        k_end: 0,
        pair_begin: 0,
        pair_end: 0,
    };
    for (k, &count) in pair_counts.iter().enumerate() {
        let size = current.pair_end - current.pair_begin;
        if size > 0 && size + count > max_pairs {
            groups.push(current);
            current = OffsetGroup {
                k_begin: k,
                k_end: k,
                pair_begin: current.pair_end,
                pair_end: current.pair_end,
            };
        }
        current.k_end = k + 1;
        current.pair_end += count;
    }
    if current.pair_end > current.pair_begin {
        groups.push(current);
    }
    groups
}

/// Submanifold convolution on CUDA: `feats [N, C_in]` (float32/float16) with
/// `weight [K, C_in, C_out]` over the map (`pairs`, `pair_counts`, optional `pair_index`),
/// plus `bias [C_out]`. Same maths as the engine's ATen path; see the module docs.
pub fn submanifold_conv(
    feats: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    pairs: &Tensor,
    pair_counts: &[i64],
    pair_index: Option<&Tensor>,
    centre: i64,
) -> Result<Tensor> {
    submanifold_conv_with_workspace(
        feats,
        weight,
        bias,
        pairs,
        pair_counts,
        pair_index,
        centre,
        DEFAULT_WORKSPACE_BYTES,
    )
}

/// [`submanifold_conv`] with an explicit bound on the gather + product workspace (bytes).
#[allow(clippy::too_many_arguments)]
pub fn submanifold_conv_with_workspace(
    feats: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    pairs: &Tensor,
    pair_counts: &[i64],
    pair_index: Option<&Tensor>,
    centre: i64,
    workspace_bytes: usize,
) -> Result<Tensor> {
    let _no_grad = tch::no_grad_guard();
    let inputs = check_conv_inputs(feats, weight, bias, pairs, pair_counts, centre)?;
    if fused_applies(&inputs) {
        let pair_index = checked_pair_index(feats, pair_index, pairs, pair_counts, inputs.n)?;
        return fused_conv(&inputs, &pairs.f_contiguous()?, &pair_index, centre);
    }
    let mut out = inputs.x.f_mm(&inputs.weight.f_select(0, centre)?)?;
    let total: i64 = pair_counts.iter().sum();
    // Without pairs (or with nothing to move) only the centre GEMM and the bias remain.
    if total == 0 || inputs.n == 0 || inputs.c_in == 0 || inputs.c_out == 0 {
        return match &inputs.bias {
            Some(b) => Ok(out.f_add_(b)?),
            None => Ok(out),
        };
    }
    let pair_index = checked_pair_index(feats, pair_index, pairs, pair_counts, inputs.n)?;
    let pairs = pairs.f_contiguous()?;
    let element = inputs.x.kind().elt_size_in_bytes() as i64;
    let bytes_per_pair = (inputs.c_in + inputs.c_out) * element;
    let largest = pair_counts.iter().copied().max().unwrap_or(0);
    let max_pairs = (workspace_bytes as i64 / bytes_per_pair.max(1)).max(largest);
    let groups = offset_groups(pair_counts, max_pairs);
    let capacity = groups
        .iter()
        .map(|g| g.pair_end - g.pair_begin)
        .max()
        .unwrap_or(0);
    let options = (inputs.x.kind(), inputs.x.device());
    let gathered = Tensor::f_empty([capacity, inputs.c_in], options)?;
    let product = Tensor::f_empty([capacity, inputs.c_out], options)?;
    let gpu = cuda_device(cuda_ordinal(feats, "the features")?)?;
    let starts: Vec<i64> = pair_counts
        .iter()
        .scan(0, |acc, &c| {
            let start = *acc;
            *acc += c;
            Some(start)
        })
        .collect();
    let run = ConvRun {
        gpu: &gpu,
        inputs: &inputs,
        pairs: &pairs,
        pair_index: &pair_index,
        gathered: &gathered,
        product: &product,
        out: &out,
    };
    for (i, group) in groups.iter().enumerate() {
        run.gather(group)?;
        for k in group.k_begin..group.k_end {
            let count = pair_counts[k];
            if count == 0 {
                continue;
            }
            let local = starts[k] - group.pair_begin;
            // mm_out writes into the product slice (contiguous, of the right shape) in place.
            let _product = gathered.f_narrow(0, local, count)?.f_mm_out(
                &product.f_narrow(0, local, count)?,
                &inputs.weight.f_select(0, k as i64)?,
            )?;
        }
        run.accumulate(group, i + 1 == groups.len())?;
    }
    Ok(out)
}

/// The buffers of one convolution.
struct ConvRun<'a> {
    gpu: &'a CudaDevice,
    inputs: &'a ConvInputs,
    pairs: &'a Tensor,
    pair_index: &'a Tensor,
    gathered: &'a Tensor,
    product: &'a Tensor,
    out: &'a Tensor,
}

impl ConvRun<'_> {
    /// `gathered[j] = x[in_rows[pair_begin + j]]` for the group's pairs.
    fn gather(&self, group: &OffsetGroup) -> Result<()> {
        let rows = group.pair_end - group.pair_begin;
        let row_bytes = self.inputs.c_in * self.inputs.x.kind().elt_size_in_bytes() as i64;
        let (src, dst) = (ptr(&self.inputs.x), ptr(self.gathered));
        let unit = [16i64, 4, 2]
            .into_iter()
            .find(|&u| row_bytes % u == 0 && src % u as u64 == 0 && dst % u as u64 == 0)
            .unwrap_or(2);
        let name = match unit {
            16 => "gather_rows_b16",
            4 => "gather_rows_b4",
            _ => "gather_rows_b2",
        };
        let units = row_bytes / unit;
        let function = self.gpu.function(&SPARSE_CONV, name)?;
        let stream: TorchStream = self.gpu.torch_stream()?;
        let in_rows = ptr(self.pairs) + 8 * group.pair_begin as u64;
        let mut args = stream.builder(&function);
        args.arg(&src)
            .arg(&in_rows)
            .arg(&rows)
            .arg(&units)
            .arg(&dst);
        let config = device::grid(rows * units, THREADS, MAX_BLOCKS)?;
        // SAFETY: (src [N, units], rows [rows], rows, units, dst [capacity, units]) as
        // declared; the map's input rows are < N and rows <= capacity.
        unsafe { device::launch(&mut args, config, name) }
    }

    /// Adds the group's products to `out` in offset order (and the bias after the last group).
    fn accumulate(&self, group: &OffsetGroup, add_bias: bool) -> Result<()> {
        let c_out = self.inputs.c_out;
        let half = self.inputs.x.kind() == Kind::Half;
        let element = if half { 2u64 } else { 4u64 };
        let bias_ptr = match (&self.inputs.bias, add_bias) {
            (Some(b), true) => ptr(b),
            _ => 0u64,
        };
        let (out_ptr, product_ptr) = (ptr(self.out), ptr(self.product));
        let pack_bytes = 4 * element;
        let packed = c_out % 4 == 0
            && [out_ptr, product_ptr, bias_ptr]
                .iter()
                .all(|&p| p % pack_bytes == 0);
        let name = match (half, packed) {
            (false, false) => "accumulate_offsets_f32",
            (false, true) => "accumulate_offsets_f32x4",
            (true, false) => "accumulate_offsets_f16",
            (true, true) => "accumulate_offsets_f16x4",
        };
        let threads_work = self.inputs.n * if packed { c_out / 4 } else { c_out };
        let function = self.gpu.function(&SPARSE_CONV, name)?;
        let stream = self.gpu.torch_stream()?;
        let index_ptr = ptr(self.pair_index);
        let (k_begin, k_end) = (group.k_begin as i64, group.k_end as i64);
        let mut args = stream.builder(&function);
        args.arg(&out_ptr)
            .arg(&self.inputs.n)
            .arg(&c_out)
            .arg(&product_ptr)
            .arg(&index_ptr)
            .arg(&k_begin)
            .arg(&k_end)
            .arg(&group.pair_begin)
            .arg(&bias_ptr);
        let config = device::grid(threads_work, THREADS, MAX_BLOCKS)?;
        // SAFETY: (out [N, C_out], N, C_out, product [capacity, C_out], pair_index [K, N],
        // k range, pair_base, bias [C_out] or null) as declared; the group's pair positions
        // minus pair_base are < capacity.
        unsafe { device::launch(&mut args, config, name) }
    }
}

/// The map's `pair_index`, checked against `[K, N]` int32 on the features' device, or derived
/// from the pairs when the map came without one.
fn checked_pair_index(
    feats: &Tensor,
    pair_index: Option<&Tensor>,
    pairs: &Tensor,
    pair_counts: &[i64],
    n: i64,
) -> Result<Tensor> {
    match pair_index {
        Some(index) => {
            if index.size() != [pair_counts.len() as i64, n] || index.kind() != Kind::Int {
                return Err(Error::invalid_argument(format!(
                    "CUDA sparse conv: pair_index must be int32 [{}, {n}], got {:?} {:?}",
                    pair_counts.len(),
                    index.kind(),
                    index.size()
                )));
            }
            same_device(feats, index, "the pair index")?;
            Ok(index.f_contiguous()?)
        }
        None => pair_index_from_pairs(pairs, pair_counts, n),
    }
}

/// Whether a fused kernel takes this convolution, channels within [`FUSED_MAX_CHANNELS`] and
/// 16-byte aligned features in both cases: fp16 in whole MMA fragments (C_in % 16, C_out % 8),
/// or fp32 in float4s (C_in % 4, C_out % 4). `RECON_SPARSE_FUSED=0` turns them off (the
/// gather-GEMM-reduction path then runs).
fn fused_applies(inputs: &ConvInputs) -> bool {
    if std::env::var("RECON_SPARSE_FUSED").is_ok_and(|v| v == "0") {
        return false;
    }
    let (c_in, c_out) = (inputs.c_in, inputs.c_out);
    let shape_fits = match inputs.x.kind() {
        Kind::Half => {
            (16..=FUSED_MAX_CHANNELS).contains(&c_in)
                && (8..=FUSED_MAX_CHANNELS).contains(&c_out)
                && c_in % 16 == 0
                && c_out % 8 == 0
        }
        Kind::Float => {
            (4..=FUSED_MAX_CHANNELS).contains(&c_in)
                && (4..=FUSED_MAX_CHANNELS).contains(&c_out)
                && c_in % 4 == 0
                && c_out % 4 == 0
        }
        _ => false,
    };
    shape_fits && inputs.n > 0 && ptr(&inputs.x).is_multiple_of(16)
}

/// The fused kernels (`fused_subm_conv_f16` / `fused_subm_conv_f32` in the kernel file): one
/// pass, no workspace.
fn fused_conv(
    inputs: &ConvInputs,
    pairs: &Tensor,
    pair_index: &Tensor,
    centre: i64,
) -> Result<Tensor> {
    let device = inputs.x.device();
    let kind = inputs.x.kind();
    let out = Tensor::f_empty([inputs.n, inputs.c_out], (kind, device))?;
    // fp16 reads [K, C_out, C_in] (each output channel's weights contiguous along C_in, as the
    // B fragments want them); fp32 reads the engine's [K, C_in, C_out] rows as float4s. A
    // fresh contiguous tensor is 16-byte aligned.
    let gpu = cuda_device(cuda_ordinal(&inputs.x, "the features")?)?;
    let col_tiles = (inputs.c_out + FUSED_COLS - 1) / FUSED_COLS;
    let (name, w, rows) = if kind == Kind::Half {
        (
            "fused_subm_conv_f16",
            inputs.weight.f_transpose(1, 2)?.f_contiguous()?,
            FUSED_ROWS,
        )
    } else {
        // 128-row tiles reuse each shared load more; below two blocks per multiprocessor the
        // device is not full, and 64-row tiles (twice the blocks) finish sooner.
        let blocks = (inputs.n + FUSED_ROWS - 1) / FUSED_ROWS * col_tiles;
        let (name, rows) = if blocks < 2 * gpu.multiprocessors() {
            ("fused_subm_conv_f32_r64", FUSED_ROWS / 2)
        } else {
            ("fused_subm_conv_f32", FUSED_ROWS)
        };
        (name, inputs.weight.f_contiguous()?, rows)
    };
    if !ptr(&w).is_multiple_of(16) {
        return Err(Error::internal(
            "fused convolution: weights not 16-byte aligned",
        ));
    }
    let volume = pair_index.size()[0];
    let function = gpu.function(&SPARSE_CONV, name)?;
    let stream = gpu.torch_stream()?;
    let bias_ptr = inputs.bias.as_ref().map_or(0u64, ptr);
    let (x_ptr, w_ptr, rows_ptr, index_ptr, out_ptr) = (
        ptr(&inputs.x),
        ptr(&w),
        ptr(pairs),
        ptr(pair_index),
        ptr(&out),
    );
    let mut args = stream.builder(&function);
    args.arg(&x_ptr)
        .arg(&inputs.n)
        .arg(&inputs.c_in)
        .arg(&inputs.c_out)
        .arg(&w_ptr)
        .arg(&bias_ptr)
        .arg(&rows_ptr)
        .arg(&index_ptr)
        .arg(&volume)
        .arg(&centre)
        .arg(&out_ptr);
    let row_tiles = (inputs.n + rows - 1) / rows;
    let config = cudarc::driver::LaunchConfig {
        grid_dim: (row_tiles.clamp(1, MAX_BLOCKS) as u32, col_tiles as u32, 1),
        block_dim: (FUSED_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: (x [N, C_in], N, C_in, C_out, w ([K, C_out, C_in] fp16 / [K, C_in, C_out] fp32),
    // bias [C_out] or null, pairs row 0 [P], pair_index [K, N], K, centre, out [N, C_out]) as
    // declared, all of x's kind; fused_applies checked the channel multiples and x's alignment,
    // w's alignment is checked above, the map's positions are < P and its
    // input rows < N.
    unsafe { device::launch(&mut args, config, name) }?;
    Ok(out)
}
