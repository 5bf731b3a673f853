//! Hand-written CUDA kernels (`kernels/*.cu`) on libtorch's device and stream, through cudarc.
//!
//! * [`library`]: finds the CUDA driver and NVRTC at run time (cudarc's dynamic loading), with
//!   a fallback to the NVRTC that ships next to the libtorch we run on (the PyTorch wheels'
//!   `nvidia/cu13/lib`), so nothing needs `LD_LIBRARY_PATH` on a machine with a GPU driver.
//! * [`nvrtc`]: the kernel sources (embedded at build time) and their compilation to a cubin
//!   for the device's architecture (PTX for the newest one NVRTC knows when the device is
//!   newer than NVRTC). Needs no GPU: CI compiles every kernel for sm_80 and sm_90.
//! * [`device`]: one [`CudaDevice`] per device ordinal: the device's primary context (the one
//!   libtorch's runtime calls use), a per-process cache of compiled modules and functions, and
//!   launches on libtorch's current stream of that device.
//! * [`graph`]: CUDA graphs (capture once, replay per sampler step) over libtorch's work.
//! * [`fused`]: fused LayerNorm32 + adaLN modulation, multi-head RMS norm and gated residual
//!   kernels for the transformer blocks, used where they apply (the callers keep the unfused
//!   composition for everything else).
//! * [`sparse`]: the sparse-convolution kernels' host side (voxel hash, kernel map, gather /
//!   reduction around libtorch GEMMs), dispatched from `sparse::engine`.
//!
//! Memory is always libtorch's: kernels receive `Tensor::data_ptr()` of tensors allocated by
//! libtorch's caching allocator and are launched on libtorch's current stream, so the
//! allocator's stream-ordered reuse covers them exactly as it covers libtorch's own kernels
//! (a tensor dropped right after a launch is only reused by work queued after that launch).

pub mod alongside;
pub mod device;
pub mod fused;
pub mod graph;
#[cfg(recon_cuda_graph)]
mod graph_ffi;
pub mod library;
pub mod linalg;
pub mod memory;
pub mod nvrtc;
pub mod sparse;

pub use device::{cuda_device, CudaDevice, TorchStream};
pub use nvrtc::{Arch, KernelSource, Target};

use crate::error::{Error, ErrorKind};

/// An error of the CUDA layer (driver, NVRTC, launches), as a device error naming what failed.
pub(crate) fn device_error(what: &str, err: impl std::fmt::Display) -> Error {
    let text = err.to_string();
    let kind = if text.contains("OUT_OF_MEMORY") {
        ErrorKind::OutOfMemory
    } else {
        ErrorKind::Device
    };
    Error::new(kind, format!("CUDA: {what}: {text}"))
}
