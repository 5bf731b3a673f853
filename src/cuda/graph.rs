//! CUDA graphs over libtorch work (issue 8): a fixed-shape computation — one flow-model forward
//! — is captured once and replayed with a single launch per sampler step, so the host no
//! longer issues its ~600 kernels one by one. libtorch's `at::cuda::CUDAGraph` does the
//! capture (its caching allocator serves the captured allocations from a private pool kept for
//! the replays); `cpp/cuda_graph.cpp` is the bridge. It needs the CUDA runtime headers at
//! build time (the torch wheels' `nvidia/cu13/include`); without them recon builds without
//! graphs and [`CudaGraph::new`] reports Unsupported, so callers run eagerly.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use tch::Device;

use crate::error::{Error, Result};

/// Graph captures underway in the process. libtorch's `emptyCache` walks the caching allocator
/// of every device and asserts that no capture is underway on any of them, so a model that
/// releases its cache (low-VRAM mode) must wait for the captures of models on other GPUs (one
/// model per GPU in one process): captures hold this shared, [`no_capture_underway`]
/// exclusively.
static CAPTURES: RwLock<()> = RwLock::new(());

/// Holds off every graph capture of the process until the guard is dropped, waiting for those
/// underway to end.
pub(crate) fn no_capture_underway() -> RwLockWriteGuard<'static, ()> {
    CAPTURES
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg_attr(not(recon_cuda_graph), allow(dead_code))]
fn capture_underway() -> RwLockReadGuard<'static, ()> {
    CAPTURES
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(recon_cuda_graph)]
use super::graph_ffi::ffi;

/// One captured graph on one CUDA device.
pub struct CudaGraph {
    #[cfg(recon_cuda_graph)]
    inner: cxx::UniquePtr<ffi::Graph>,
    captured: bool,
}

// SAFETY: the graph is only used through `&mut self` (never concurrently); CUDA graphs and
// libtorch streams may be used from any thread of the process.
unsafe impl Send for CudaGraph {}

fn graph_error(what: &str, err: impl std::fmt::Display) -> Error {
    crate::cuda::device_error(what, err)
}

impl CudaGraph {
    /// An empty graph for `device` (a CUDA device).
    pub fn new(device: Device) -> Result<Self> {
        let Device::Cuda(ordinal) = device else {
            return Err(Error::invalid_argument(format!(
                "CUDA graphs need a CUDA device, not {device:?}"
            )));
        };
        Self::for_ordinal(ordinal)
    }

    #[cfg(recon_cuda_graph)]
    fn for_ordinal(ordinal: usize) -> Result<Self> {
        let index = i8::try_from(ordinal)
            .map_err(|_| Error::invalid_argument(format!("CUDA device ordinal {ordinal}")))?;
        let inner = ffi::new_graph(index).map_err(|e| graph_error("creating a graph", e))?;
        Ok(Self {
            inner,
            captured: false,
        })
    }

    #[cfg(not(recon_cuda_graph))]
    fn for_ordinal(_ordinal: usize) -> Result<Self> {
        Err(Error::unsupported(
            "this build of recon has no CUDA graphs (built without the CUDA runtime headers)",
        ))
    }

    /// Runs `warm_up` then captures `body` on the graph's side stream (libtorch's current
    /// stream while they run), returning what `body` returned: the tensors it allocated live in
    /// the graph's pool and are rewritten by every [`replay`](Self::replay). `warm_up` runs
    /// eagerly first so that lazy one-time work (kernel loading, library handles, caches) is
    /// not captured. `body` must not synchronise with the host or copy from host memory;
    /// capture then fails and the error is returned (the graph stays unusable).
    pub fn capture<T>(
        &mut self,
        warm_up: impl FnOnce() -> Result<()>,
        body: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.capture_impl(warm_up, body)
    }

    #[cfg(recon_cuda_graph)]
    fn capture_impl<T>(
        &mut self,
        warm_up: impl FnOnce() -> Result<()>,
        body: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if self.captured {
            return Err(Error::internal("CUDA graph captured twice"));
        }
        ffi::enter_side_stream(self.inner.pin_mut())
            .map_err(|e| graph_error("switching to the capture stream", e))?;
        let result = warm_up().and_then(|()| {
            let _underway = capture_underway();
            ffi::capture_begin(self.inner.pin_mut())
                .map_err(|e| graph_error("beginning the capture", e))?;
            let captured = body();
            // The capture must end whatever happened inside it.
            let ended = ffi::capture_end(self.inner.pin_mut())
                .map_err(|e| graph_error("ending the capture", e));
            let value = captured?;
            ended?;
            Ok(value)
        });
        let left = ffi::leave_side_stream(self.inner.pin_mut())
            .map_err(|e| graph_error("leaving the capture stream", e));
        let value = result?;
        left?;
        self.captured = true;
        Ok(value)
    }

    #[cfg(not(recon_cuda_graph))]
    fn capture_impl<T>(
        &mut self,
        _warm_up: impl FnOnce() -> Result<()>,
        _body: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        Err(Error::unsupported("this build of recon has no CUDA graphs"))
    }

    /// Replays the captured work on libtorch's current stream.
    pub fn replay(&mut self) -> Result<()> {
        if !self.captured {
            return Err(Error::internal(
                "replaying a CUDA graph that was not captured",
            ));
        }
        self.replay_impl()
    }

    #[cfg(recon_cuda_graph)]
    fn replay_impl(&mut self) -> Result<()> {
        ffi::replay(self.inner.pin_mut()).map_err(|e| graph_error("replaying a graph", e))
    }

    #[cfg(not(recon_cuda_graph))]
    fn replay_impl(&mut self) -> Result<()> {
        Err(Error::unsupported("this build of recon has no CUDA graphs"))
    }
}
