//! The sparse-convolution engine: the bridge (cxx) to its C++ host code in `cpp/` and safe
//! wrappers over it.
//!
//! What lives where:
//! * `cpp/sparse_engine.{h,cpp}` (C++17 over ATen): the kernel-map build from voxel keys, the
//!   KRSC weight preparation (including spconv's 1×1×1 quirk) and the gather-GEMM-scatter
//!   submanifold convolution with a reused workspace.
//! * This file: the [`KernelMap`] type (cached per spatial level by [`SparseTensor`]) and the
//!   device dispatch. Every device currently runs the ATen implementation (on CUDA through
//!   ATen's CUDA operators). The hand-written CUDA kernels (NVRTC voxel hash, fused gather /
//!   scatter GEMM, `src/cuda/`) slot in here by matching on the device in
//!   [`build_submanifold_kernel_map`] and [`submanifold_conv`]; they must produce and consume
//!   the same [`KernelMap`] format.
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

use tch::{Kind, Tensor};

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
pub struct KernelMap {
    pub geometry: ConvGeometry,
    pub pairs: Tensor,
    pub pair_counts: Vec<i64>,
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
        }
    }
}

/// Builds the kernel map of `geometry` over `coords` (int32/int64 `[N, 4]`, unique rows) on
/// the coordinates' device.
pub fn build_submanifold_kernel_map(coords: &Tensor, geometry: ConvGeometry) -> Result<KernelMap> {
    geometry.validate()?;
    let mut pair_counts = vec![0i64; geometry.volume() as usize];
    // Every device runs the ATen implementation until the CUDA builder lands; it will be
    // dispatched here on `coords.device().is_cuda()`.
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
pub fn submanifold_conv(
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
