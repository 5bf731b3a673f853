//! Host side of `kernels/mesh_raster.cu`: the CUDA path of [`super::MeshScene::rasterize`].
//!
//! Four launches on libtorch's current stream, all memory from libtorch tensors: triangle
//! setup, the depth pass for small triangles (one thread each, queueing the large ones), the
//! depth pass for large triangles (one block each) and the per-pixel resolve. No host
//! synchronisation: the large-triangle count stays on the device and the large pass loops
//! over it grid-stride.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use tch::{Device, Kind, Tensor};

use super::setup::{Camera, SETUP_FLOATS};
use crate::cuda::device::{self, cuda_device};
use crate::cuda::nvrtc::MESH_RASTER;
use crate::error::{Error, Result};

// SAFETY: `Camera` is `repr(C)` plain data (18 f32 then 2 i32, no padding), laid out exactly
// as the kernels' `struct Camera`.
unsafe impl DeviceRepr for Camera {}

/// The kernels the host launches (the compile test checks they exist).
pub const KERNEL_NAMES: [&str; 4] = [
    "mesh_setup",
    "mesh_raster_small",
    "mesh_raster_large",
    "mesh_resolve",
];

const THREADS: u32 = 256;
const MAX_BLOCKS: i64 = 1 << 16;
/// Triangles whose pixel box exceeds this many pixels are rasterised by a whole block.
const LARGE_AREA: i64 = 256;
/// Blocks of the large-triangle pass (each loops over the queue with this stride).
const LARGE_BLOCKS: u32 = 1024;

/// Raw outputs on the device: triangle id `[H, W]` i32, barycentrics `[H, W, 2]`, depth
/// `[H, W]`, derivatives `[H, W, 4]`.
pub(crate) struct CudaRaster {
    pub triangle_id: Tensor,
    pub barycentrics: Tensor,
    pub depth: Tensor,
    pub derivatives: Tensor,
}

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// Rasterises `triangles` (`[F, 3]` i32, contiguous) of `positions` (`[V, 3]` f32,
/// contiguous), both on `cuda:<ordinal>`, for `cam`.
pub(crate) fn rasterize(
    positions: &Tensor,
    triangles: &Tensor,
    cam: &Camera,
) -> Result<CudaRaster> {
    let Device::Cuda(ordinal) = positions.device() else {
        return Err(Error::internal("CUDA mesh rasteriser given CPU tensors"));
    };
    let device = positions.device();
    let count = triangles.size()[0];
    let (h, w) = (i64::from(cam.height), i64::from(cam.width));
    let out = CudaRaster {
        triangle_id: Tensor::f_empty([h, w], (Kind::Int, device))?,
        barycentrics: Tensor::f_empty([h, w, 2], (Kind::Float, device))?,
        depth: Tensor::f_empty([h, w], (Kind::Float, device))?,
        derivatives: Tensor::f_empty([h, w, 4], (Kind::Float, device))?,
    };
    // Every bit set: u64::MAX, the empty key.
    let keys = Tensor::f_full([h * w], -1i64, (Kind::Int64, device))?;
    let setup = Tensor::f_empty([count.max(1), SETUP_FLOATS as i64], (Kind::Float, device))?;
    let bbox = Tensor::f_empty([count.max(1), 4], (Kind::Int, device))?;
    let large_list = Tensor::f_empty([count.max(1)], (Kind::Int, device))?;
    let large_count = Tensor::f_zeros([1], (Kind::Int, device))?;

    let gpu = cuda_device(ordinal)?;
    let stream = gpu.torch_stream()?;
    let (pos_ptr, tri_ptr) = (ptr(positions), ptr(triangles));
    let (setup_ptr, bbox_ptr, keys_ptr) = (ptr(&setup), ptr(&bbox), ptr(&keys));
    let (list_ptr, count_ptr) = (ptr(&large_list), ptr(&large_count));

    if count > 0 {
        let function = gpu.function(&MESH_RASTER, "mesh_setup")?;
        let mut args = stream.builder(&function);
        args.arg(&pos_ptr)
            .arg(&tri_ptr)
            .arg(&count)
            .arg(cam)
            .arg(&setup_ptr)
            .arg(&bbox_ptr);
        let config = device::grid(count, THREADS, MAX_BLOCKS)?;
        // SAFETY: positions [V,3] f32 and triangles [F,3] i32 (indices < V, checked when the
        // scene was made) are contiguous; setup [F,12] f32 and bbox [F,4] i32 are fresh.
        unsafe { device::launch(&mut args, config, "mesh_setup") }?;

        let function = gpu.function(&MESH_RASTER, "mesh_raster_small")?;
        let mut args = stream.builder(&function);
        args.arg(&setup_ptr)
            .arg(&bbox_ptr)
            .arg(&count)
            .arg(cam)
            .arg(&LARGE_AREA)
            .arg(&keys_ptr)
            .arg(&list_ptr)
            .arg(&count_ptr);
        // SAFETY: setup/bbox as written above; keys [H·W] u64; the queue holds up to F ids.
        unsafe { device::launch(&mut args, config, "mesh_raster_small") }?;

        let function = gpu.function(&MESH_RASTER, "mesh_raster_large")?;
        let mut args = stream.builder(&function);
        args.arg(&setup_ptr)
            .arg(&bbox_ptr)
            .arg(cam)
            .arg(&keys_ptr)
            .arg(&list_ptr)
            .arg(&count_ptr);
        let config = LaunchConfig {
            grid_dim: ((count as u32).clamp(1, LARGE_BLOCKS), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the queue and its count were written by the previous launch on this stream.
        unsafe { device::launch(&mut args, config, "mesh_raster_large") }?;
    }

    let function = gpu.function(&MESH_RASTER, "mesh_resolve")?;
    let mut args = stream.builder(&function);
    let (id_ptr, bary_ptr) = (ptr(&out.triangle_id), ptr(&out.barycentrics));
    let (depth_ptr, deriv_ptr) = (ptr(&out.depth), ptr(&out.derivatives));
    args.arg(&setup_ptr)
        .arg(&keys_ptr)
        .arg(cam)
        .arg(&id_ptr)
        .arg(&bary_ptr)
        .arg(&depth_ptr)
        .arg(&deriv_ptr);
    let config = device::grid(h * w, THREADS, MAX_BLOCKS)?;
    // SAFETY: keys [H·W]; a non-empty key names a triangle < F whose setup row was written;
    // the outputs are fresh contiguous tensors of the documented shapes.
    unsafe { device::launch(&mut args, config, "mesh_resolve") }?;
    drop(stream);
    Ok(out)
}
