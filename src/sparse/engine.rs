//! The sparse-convolution engine: the bridge (cxx) to its C++ host code in `cpp/` and safe
//! wrappers over it.
//!
//! What lives where:
//! * `cpp/sparse_engine.{h,cpp}` (C++17 over ATen): the kernel-map build from voxel keys, the
//!   KRSC weight preparation (including spconv's 1×1×1 quirk) and the gather-GEMM-scatter
//!   submanifold convolution with a reused workspace.
//! * `src/cuda/sparse.rs` + `kernels/sparse_conv.cu`: the CUDA path (NVRTC kernels: voxel
//!   hash, kernel-map build, gather and a deterministic reduction around libtorch GEMMs).
//! * This file: the [`KernelMap`] type (cached per spatial level by [`SparseTensor`]) and the
//!   device dispatch. CUDA tensors of float32/float16 run the CUDA kernels; everything else
//!   (CPU; other dtypes; `RECON_CUDA_KERNELS=0`; a machine where the kernels cannot be loaded,
//!   which is logged once) runs the ATen implementation, also reachable directly as
//!   [`build_submanifold_kernel_map_aten`] / [`submanifold_conv_aten`] (the reference the CUDA
//!   tests compare with). Both paths produce and consume the same [`KernelMap`] format, and
//!   build identical maps.
//!
//! Tensors crossing the bridge: a `tch::Tensor` holds a `C_tensor*` that torch-sys's libtch
//! allocates as `new torch::Tensor(..)`, and `torch::Tensor` is `at::Tensor`
//! (`torch/types.h`: `namespace torch { using namespace at; }`; `libtch/torch_api.h`:
//! `typedef torch::Tensor *tensor`). So:
//! * a borrowed `&Tensor` is passed as `&at::Tensor` ([`borrow_at`]); the C++ side only reads
//!   it during the call (copying the handle, i.e. a refcount, when it needs to keep it);
//! * C++ returns `std::unique_ptr<at::Tensor>` allocated with `new`; [`adopt_at`] releases it
//!   into a `tch::Tensor`, which frees it with `delete` (torch-sys's `at_free`) on drop. Both
//!   sides use the same libstdc++ and libtorch, so the allocation and the free match.
//!
//! C++ exceptions (`c10::Error`, `std::exception`, anything else) are caught at the bridge
//! (the `trycatch` in `cpp/sparse_engine.h`) and come back as `Err`, never as an abort.
//!
//! [`SparseTensor`]: super::SparseTensor

use tch::{Device, Kind, Tensor};

use super::basic::CacheEntry;
use crate::error::{Error, Result};

#[cxx::bridge(namespace = "recon::sparse")]
mod ffi {
    #[namespace = "at"]
    unsafe extern "C++" {
        include!("recon/cpp/sparse_engine.h");

        /// `at::Tensor`, opaque to Rust (a `tch::Tensor`'s pointee).
        #[cxx_name = "Tensor"]
        type AtTensor;
    }

    unsafe extern "C++" {
        include!("recon/cpp/sparse_engine.h");

        fn build_submanifold_kernel_map(
            coords: &AtTensor,
            kernel_size: &[i64],
            dilation: &[i64],
            pair_counts: &mut [i64],
        ) -> Result<UniquePtr<AtTensor>>;

        fn prepare_conv_weight(weight_krsc: &AtTensor) -> Result<UniquePtr<AtTensor>>;

        /// # Safety
        /// `bias` is null or points to a live `at::Tensor` for the duration of the call.
        unsafe fn submanifold_conv(
            feats: &AtTensor,
            weight: &AtTensor,
            bias: *const AtTensor,
            pairs: &AtTensor,
            pair_counts: &[i64],
            centre: i64,
        ) -> Result<UniquePtr<AtTensor>>;

        /// libtorch's current CUDA stream of device `device_index` (`cudaStream_t` as an
        /// integer; 0 is the legacy default stream).
        fn current_cuda_stream(device_index: i8) -> Result<u64>;

        /// The CUDA caching allocator's `[allocated, peak allocated, reserved]` bytes.
        fn cuda_memory_stats(device_index: i8) -> Result<[u64; 3]>;
        fn reset_cuda_peak_memory(device_index: i8) -> Result<()>;
        fn empty_cuda_cache() -> Result<()>;

        fn addmm_gelu_tanh(
            bias: &AtTensor,
            mat1: &AtTensor,
            mat2: &AtTensor,
        ) -> Result<UniquePtr<AtTensor>>;

        fn flash_attention_varlen(
            q: &AtTensor,
            k: &AtTensor,
            v: &AtTensor,
            cu_q: &[i32],
            cu_k: &[i32],
            max_q: i64,
            max_k: i64,
        ) -> Result<UniquePtr<AtTensor>>;
    }
}

/// Views a tch tensor as the `at::Tensor` it wraps, for the duration of the borrow.
fn borrow_at(tensor: &Tensor) -> &ffi::AtTensor {
    // SAFETY: `as_ptr` is the `torch::Tensor*` (= `at::Tensor*`) that tch owns and keeps alive
    // as long as `tensor` is borrowed; the C++ side only reads through it.
    unsafe { &*(tensor.as_ptr() as *const ffi::AtTensor) }
}

/// Takes ownership of a tensor the engine returned.
fn adopt_at(ptr: cxx::UniquePtr<ffi::AtTensor>, what: &str) -> Result<Tensor> {
    if ptr.is_null() {
        return Err(Error::internal(format!(
            "sparse engine: {what} returned no tensor"
        )));
    }
    let raw = ptr.into_raw();
    // SAFETY: `raw` was allocated by `new at::Tensor` in the engine and is no longer owned by
    // the unique_ptr; tch's drop frees it with `delete`, matching that allocation.
    Ok(unsafe { Tensor::from_ptr(raw as *mut torch_sys::C_tensor) })
}

fn engine_error(what: &str, err: cxx::Exception) -> Error {
    let text = err.what();
    let message = format!("sparse engine: {what}: {text}");
    if text.contains("out of memory") {
        Error::new(crate::ErrorKind::OutOfMemory, message)
    } else {
        Error::internal(message)
    }
}

/// Kernel extent and dilation of a convolution, per spatial axis (x, y, z).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub kernel_size: [i64; 3],
    pub dilation: [i64; 3],
}

impl ConvGeometry {
    /// A cubic kernel `k×k×k` with dilation `d` on every axis.
    pub fn cubic(kernel_size: i64, dilation: i64) -> Self {
        Self {
            kernel_size: [kernel_size; 3],
            dilation: [dilation; 3],
        }
    }

    /// Number of kernel offsets.
    pub fn volume(&self) -> i64 {
        self.kernel_size.iter().product()
    }

    /// Index of the zero-displacement offset in KRSC order (x slowest, z fastest).
    pub fn centre(&self) -> i64 {
        let [kx, ky, kz] = self.kernel_size;
        ((kx / 2) * ky + ky / 2) * kz + kz / 2
    }

    /// Submanifold convolutions need odd, positive kernel sizes and positive dilations.
    pub fn validate(&self) -> Result<()> {
        if self.kernel_size.iter().any(|&k| k < 1 || k % 2 == 0) {
            return Err(Error::unsupported(format!(
                "submanifold sparse conv needs odd kernel sizes, got {:?}",
                self.kernel_size
            )));
        }
        if self.dilation.iter().any(|&d| d < 1) {
            return Err(Error::invalid_argument(format!(
                "sparse conv dilation must be positive, got {:?}",
                self.dilation
            )));
        }
        Ok(())
    }

    /// The spatial-cache key of this geometry's kernel map.
    pub fn cache_key(&self) -> String {
        format!(
            "submconv_kernel_map k{:?} d{:?}",
            self.kernel_size, self.dilation
        )
    }
}

/// The neighbour pairs of a submanifold convolution over one coordinate set (what spconv
/// calls indice pairs). Convolutions with the same geometry at the same spatial level share it
/// through the level's cache, which is spconv's `indice_key` without the key.
///
/// Format (the contract between kernel-map builders and convolutions on every device):
/// `pairs` is int64 `[2, P]` (row 0 input rows, row 1 output rows), grouped by kernel offset
/// in KRSC order, output rows increasing within an offset; `pair_counts[k]` is the number of
/// pairs of offset k. The centre offset is the identity and stores no pairs (count 0).
///
/// `pair_index` is an optional acceleration the CUDA builder adds: int32 `[K, N]`, the
/// position in `pairs` of the pair (offset k, output row o), or -1. The CUDA convolution
/// derives it from `pairs` when it is absent.
pub struct KernelMap {
    pub geometry: ConvGeometry,
    pub pairs: Tensor,
    pub pair_counts: Vec<i64>,
    pub pair_index: Option<Tensor>,
}

impl std::fmt::Debug for KernelMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMap")
            .field("geometry", &self.geometry)
            .field("pair_counts", &self.pair_counts)
            .field("device", &self.pairs.device())
            .finish()
    }
}

impl KernelMap {
    pub fn num_pairs(&self) -> i64 {
        self.pair_counts.iter().sum()
    }
}

impl CacheEntry for KernelMap {
    fn share(&self) -> Self {
        Self {
            geometry: self.geometry,
            pairs: self.pairs.shallow_clone(),
            pair_counts: self.pair_counts.clone(),
            pair_index: self.pair_index.as_ref().map(Tensor::shallow_clone),
        }
    }
}

/// Whether the CUDA kernels serve tensors on `device`.
fn cuda_kernels_for(device: Device) -> bool {
    match device {
        Device::Cuda(ordinal) => crate::cuda::sparse::kernels_available(ordinal),
        _ => false,
    }
}

/// libtorch's current stream on `cuda:<ordinal>`, for launching our kernels in order with
/// libtorch's.
pub(crate) fn torch_current_cuda_stream(ordinal: usize) -> Result<u64> {
    let index = i8::try_from(ordinal)
        .map_err(|_| Error::invalid_argument(format!("CUDA device ordinal {ordinal}")))?;
    ffi::current_cuda_stream(index).map_err(|e| engine_error("current CUDA stream", e))
}

/// libtorch's CUDA memory on `cuda:<ordinal>`: `[allocated, peak allocated, reserved]` bytes.
pub(crate) fn torch_cuda_memory_stats(ordinal: usize) -> Result<[u64; 3]> {
    let index = i8::try_from(ordinal)
        .map_err(|_| Error::invalid_argument(format!("CUDA device ordinal {ordinal}")))?;
    ffi::cuda_memory_stats(index).map_err(|e| engine_error("CUDA memory stats", e))
}

/// Resets the peak reported by [`torch_cuda_memory_stats`].
pub(crate) fn torch_reset_cuda_peak_memory(ordinal: usize) -> Result<()> {
    let index = i8::try_from(ordinal)
        .map_err(|_| Error::invalid_argument(format!("CUDA device ordinal {ordinal}")))?;
    ffi::reset_cuda_peak_memory(index).map_err(|e| engine_error("CUDA peak reset", e))
}

/// Returns libtorch's cached, unused CUDA blocks to the driver.
/// `gelu_tanh(mat1 @ mat2 + bias)` in one GEMM with a bias + GELU epilogue on CUDA (ATen's
/// `_addmm_activation`; see the C++ side for why not through tch). `bias` `[N]`, `mat1`
/// `[M, K]`, `mat2` `[K, N]`.
pub(crate) fn addmm_gelu_tanh(bias: &Tensor, mat1: &Tensor, mat2: &Tensor) -> Result<Tensor> {
    let out = ffi::addmm_gelu_tanh(borrow_at(bias), borrow_at(mat1), borrow_at(mat2))
        .map_err(|e| Error::internal(format!("GEMM with GELU epilogue: {e}")))?;
    adopt_at(out, "addmm_gelu_tanh")
}

/// Variable-length attention through libtorch's flash kernel on CUDA (see the C++ side): `q`
/// `[T, H, D]`, `k` / `v` `[S, H, D]` fp16/bf16 with unit stride along `D`, sequences given by
/// int32 `cu_seqlens`; returns `[T, H, D]`. Must not be called while the stream is being
/// captured into a CUDA graph (the offsets are copied from host memory).
pub(crate) fn flash_attention_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_q: &[i32],
    cu_k: &[i32],
    max_q: i64,
    max_k: i64,
) -> Result<Tensor> {
    let out = ffi::flash_attention_varlen(
        borrow_at(q),
        borrow_at(k),
        borrow_at(v),
        cu_q,
        cu_k,
        max_q,
        max_k,
    )
    .map_err(|e| engine_error("flash varlen attention", e))?;
    adopt_at(out, "flash_attention_varlen")
}

pub(crate) fn torch_empty_cuda_cache() -> Result<()> {
    ffi::empty_cuda_cache().map_err(|e| engine_error("emptying the CUDA cache", e))
}

/// Builds the kernel map of `geometry` over `coords` (int32/int64 `[N, 4]`, unique rows) on
/// the coordinates' device (CUDA kernels on CUDA, ATen elsewhere).
pub fn build_submanifold_kernel_map(coords: &Tensor, geometry: ConvGeometry) -> Result<KernelMap> {
    geometry.validate()?;
    if cuda_kernels_for(coords.device()) {
        let map = crate::cuda::sparse::build_submanifold_kernel_map(coords, geometry)?;
        return Ok(KernelMap {
            geometry,
            pairs: map.pairs,
            pair_counts: map.pair_counts,
            pair_index: map.pair_index,
        });
    }
    build_submanifold_kernel_map_aten(coords, geometry)
}

/// The ATen implementation of [`build_submanifold_kernel_map`] on any device.
pub fn build_submanifold_kernel_map_aten(
    coords: &Tensor,
    geometry: ConvGeometry,
) -> Result<KernelMap> {
    geometry.validate()?;
    let mut pair_counts = vec![0i64; geometry.volume() as usize];
    let pairs = ffi::build_submanifold_kernel_map(
        borrow_at(coords),
        &geometry.kernel_size,
        &geometry.dilation,
        &mut pair_counts,
    )
    .map_err(|e| engine_error("kernel map", e))?;
    Ok(KernelMap {
        geometry,
        pairs: adopt_at(pairs, "kernel map")?,
        pair_counts,
        pair_index: None,
    })
}

/// The engine's weight layout `[K, C_in, C_out]` from the stored KRSC layout
/// `[C_out, kx, ky, kz, C_in]` (a kernel volume of 1 follows spconv's reinterpretation, see
/// `cpp/sparse_engine.h`).
pub fn prepare_conv_weight(weight_krsc: &Tensor) -> Result<Tensor> {
    let prepared = ffi::prepare_conv_weight(borrow_at(weight_krsc))
        .map_err(|e| engine_error("conv weight", e))?;
    adopt_at(prepared, "conv weight")
}

/// `feats [N, C_in]` convolved with `weight [K, C_in, C_out]` (from [`prepare_conv_weight`])
/// over `map`, plus `bias [C_out]`. `map` may be `None` only for a kernel volume of 1.
/// CUDA float32/float16 features run the CUDA kernels, everything else ATen.
pub fn submanifold_conv(
    feats: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    map: Option<&KernelMap>,
) -> Result<Tensor> {
    if matches!(feats.kind(), Kind::Float | Kind::Half) && cuda_kernels_for(feats.device()) {
        let volume = weight.size().first().copied().unwrap_or(0);
        return match map {
            Some(map) => crate::cuda::sparse::submanifold_conv(
                feats,
                weight,
                bias,
                &map.pairs,
                &map.pair_counts,
                map.pair_index.as_ref(),
                map.geometry.centre(),
            ),
            None if volume == 1 => crate::cuda::sparse::submanifold_conv(
                feats,
                weight,
                bias,
                &Tensor::f_empty([2, 0], (Kind::Int64, feats.device()))?,
                &[0],
                None,
                0,
            ),
            None => Err(Error::internal(format!(
                "sparse conv with {volume} kernel offsets called without a kernel map"
            ))),
        };
    }
    submanifold_conv_aten(feats, weight, bias, map)
}

/// The ATen implementation of [`submanifold_conv`] on any device.
pub fn submanifold_conv_aten(
    feats: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    map: Option<&KernelMap>,
) -> Result<Tensor> {
    let volume = weight.size().first().copied().unwrap_or(0);
    let (pairs, pair_counts, centre) = match map {
        Some(map) => (
            map.pairs.shallow_clone(),
            map.pair_counts.clone(),
            map.geometry.centre(),
        ),
        None if volume == 1 => (
            Tensor::f_empty([2, 0], (Kind::Int64, feats.device()))?,
            vec![0],
            0,
        ),
        None => {
            return Err(Error::internal(format!(
                "sparse conv with {volume} kernel offsets called without a kernel map"
            )))
        }
    };
    let bias_ptr = bias.map_or(std::ptr::null(), |b| borrow_at(b) as *const ffi::AtTensor);
    // SAFETY: `bias_ptr` is null or borrowed from `bias`, alive for the whole call.
    let out = unsafe {
        ffi::submanifold_conv(
            borrow_at(feats),
            borrow_at(weight),
            bias_ptr,
            borrow_at(&pairs),
            &pair_counts,
            centre,
        )
    }
    .map_err(|e| engine_error("submanifold conv", e))?;
    adopt_at(out, "submanifold conv")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The op is a GELU, not the ReLU that tch's own binding of `_addmm_activation` silently
    /// computes. On the CPU ATen's fallback applies the exact (erf) GELU, unlike its CUDA
    /// paths (tanh, cuBLASLt's epilogue); recon calls the op on CUDA only, and
    /// tests/fused_cuda.rs checks the tanh form there.
    #[test]
    fn addmm_gelu_tanh_is_a_gelu_of_the_biased_product() {
        let opts = (Kind::Float, Device::Cpu);
        // Under recon's lock on the global generator: other lib tests seed it in parallel.
        let (x, w, b) = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
            tch::manual_seed(0);
            (
                Tensor::randn([16, 8], opts),
                Tensor::randn([12, 8], opts),
                Tensor::randn([12], opts),
            )
        });
        let fused = addmm_gelu_tanh(&b, &x, &w.tr()).unwrap();
        let reference = x.linear(&w, Some(&b)).gelu("none");
        let diff = f64::try_from((&fused - &reference).abs().max()).unwrap();
        assert!(diff < 1e-5, "max |diff| {diff}");
    }
}
