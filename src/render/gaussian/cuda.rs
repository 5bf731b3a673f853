//! Host side of `kernels/gaussian_splat.cu`: preprocess, duplicate per touched tile, sort
//! (libtorch's stable sort on the 64-bit `tile | depth` keys), tile ranges, blend. Every
//! buffer is a libtorch tensor on the scene's device and every kernel runs on libtorch's
//! current stream, so the sort and the prefix sum (libtorch ops) are ordered with them.
//!
//! One device → host read per render: the number of (splat, tile) pairs, to size the key list.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use tch::{Device, Kind, Tensor};

use super::projection::{SplatCamera, TILE};
use crate::cuda::device::{self, cuda_device};
use crate::cuda::nvrtc::GAUSSIAN_SPLAT;
use crate::error::{Error, Result};

// SAFETY: `SplatCamera` is `#[repr(C)]`, made of f32/i32 only (no padding, no pointers), with
// the field order of `struct SplatCamera` in the kernel file.
unsafe impl DeviceRepr for SplatCamera {}

const PREPROCESS: &str = "splat_preprocess";
const DUPLICATE: &str = "splat_duplicate";
const TILE_RANGES: &str = "splat_tile_ranges";
const BLEND: &str = "splat_blend";

/// The entry points of `kernels/gaussian_splat.cu` launched here.
pub(crate) const KERNELS: [&str; 4] = [PREPROCESS, DUPLICATE, TILE_RANGES, BLEND];

const THREADS: u32 = 256;
const MAX_BLOCKS: i64 = 1 << 16;

/// The rendered planes on the device: colour `[H, W, 3]`, depth and alpha `[H, W]`.
pub(crate) struct DevicePlanes {
    pub color: Tensor,
    pub depth: Tensor,
    pub alpha: Tensor,
}

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// Renders the packed scene `gaussians` (`[count · 16]` f32 on `cuda:ordinal`) for `cam`.
pub(crate) fn render(
    gaussians: &Tensor,
    count: usize,
    ordinal: usize,
    cam: &SplatCamera,
) -> Result<DevicePlanes> {
    let device = Device::Cuda(ordinal);
    let gpu = cuda_device(ordinal)?;
    let n = count as i64;
    let (h, w) = (cam.height as i64, cam.width as i64);
    let tiles = cam.tile_count() as i64;

    let f32s = (Kind::Float, device);
    let splat_a = Tensor::f_empty([n.max(1), 4], f32s)?;
    let splat_b = Tensor::f_empty([n.max(1), 4], f32s)?;
    let rects = Tensor::f_empty([n.max(1), 4], (Kind::Int, device))?;
    let touched = Tensor::f_zeros([n], (Kind::Int, device))?;
    if n > 0 {
        let f = gpu.function(&GAUSSIAN_SPLAT, PREPROCESS)?;
        let stream = gpu.torch_stream()?;
        let (g, a, b, r, t) = (
            ptr(gaussians),
            ptr(&splat_a),
            ptr(&splat_b),
            ptr(&rects),
            ptr(&touched),
        );
        let mut args = stream.builder(&f);
        args.arg(&g)
            .arg(&n)
            .arg(cam)
            .arg(&a)
            .arg(&b)
            .arg(&r)
            .arg(&t);
        // SAFETY: gaussians holds n × 4 float4s; the outputs hold n entries of their types.
        unsafe { device::launch(&mut args, device::grid(n, THREADS, MAX_BLOCKS)?, PREPROCESS) }?;
    }

    let ends = touched.f_cumsum(0, Kind::Int64)?;
    let total = if n > 0 {
        ends.f_int64_value(&[n - 1])?
    } else {
        0
    };
    if total > i32::MAX as i64 {
        return Err(Error::unsupported(format!(
            "Gaussian splatting: {total} (Gaussian, tile) pairs exceed the rasteriser's 2^31 \
             limit; render at a lower resolution or with fewer, smaller Gaussians"
        )));
    }
    let ranges = Tensor::f_zeros([tiles, 2], (Kind::Int, device))?;
    // Keep the sorted list alive until the blend has been queued.
    let mut order = Tensor::f_empty([1], (Kind::Int, device))?;
    if total > 0 {
        let keys = Tensor::f_empty([total], (Kind::Int64, device))?;
        let values = Tensor::f_empty([total], (Kind::Int, device))?;
        {
            let f = gpu.function(&GAUSSIAN_SPLAT, DUPLICATE)?;
            let stream = gpu.torch_stream()?;
            let (a, r, t, e, k, v) = (
                ptr(&splat_a),
                ptr(&rects),
                ptr(&touched),
                ptr(&ends),
                ptr(&keys),
                ptr(&values),
            );
            let mut args = stream.builder(&f);
            args.arg(&n)
                .arg(&a)
                .arg(&r)
                .arg(&t)
                .arg(&e)
                .arg(&cam.tiles_x)
                .arg(&k)
                .arg(&v);
            // SAFETY: the inputs hold n entries; ends[n-1] == total sizes keys and values.
            unsafe { device::launch(&mut args, device::grid(n, THREADS, MAX_BLOCKS)?, DUPLICATE) }?;
        }
        // Stable: equal keys (same tile, same depth) keep Gaussian order, as the reference's
        // radix sort does.
        let (sorted, permutation) = keys.f_sort_stable(true, 0, false)?;
        order = values.f_index_select(0, &permutation)?;
        let f = gpu.function(&GAUSSIAN_SPLAT, TILE_RANGES)?;
        let stream = gpu.torch_stream()?;
        let (s, rg) = (ptr(&sorted), ptr(&ranges));
        let mut args = stream.builder(&f);
        args.arg(&total).arg(&s).arg(&rg);
        // SAFETY: sorted holds total keys whose tiles are < tiles; ranges is [tiles, 2] int32.
        unsafe {
            device::launch(
                &mut args,
                device::grid(total, THREADS, MAX_BLOCKS)?,
                TILE_RANGES,
            )
        }?;
    }

    let color = Tensor::f_empty([h, w, 3], f32s)?;
    let depth = Tensor::f_empty([h, w], f32s)?;
    let alpha = Tensor::f_empty([h, w], f32s)?;
    let f = gpu.function(&GAUSSIAN_SPLAT, BLEND)?;
    let stream = gpu.torch_stream()?;
    let (rg, o, a, b, g) = (
        ptr(&ranges),
        ptr(&order),
        ptr(&splat_a),
        ptr(&splat_b),
        ptr(gaussians),
    );
    let (c, d, al) = (ptr(&color), ptr(&depth), ptr(&alpha));
    let mut args = stream.builder(&f);
    args.arg(&rg)
        .arg(&o)
        .arg(&a)
        .arg(&b)
        .arg(&g)
        .arg(cam)
        .arg(&c)
        .arg(&d)
        .arg(&al);
    let config = LaunchConfig {
        grid_dim: (cam.tiles_x as u32, cam.tiles_y as u32, 1),
        block_dim: (TILE, TILE, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: ranges covers every tile; the ranges index `order` (total entries) whose values
    // index the n splats and Gaussians; the outputs are [H, W(, 3)] f32.
    unsafe { device::launch(&mut args, config, BLEND) }?;
    drop(stream);
    Ok(DevicePlanes {
        color,
        depth,
        alpha,
    })
}
