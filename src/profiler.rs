//! libtorch's Kineto profiler (host ops, and GPU kernels through CUPTI — ours launched
//! through cudarc included), for finding where a pipeline stage spends its time: `recon bench`
//! profiles one stage of its first timed run when `RECON_PROFILE` names a trace file (see
//! `benches/profile_summary.py`). Not part of the C ABI.

use crate::error::{Error, Result};

#[cxx::bridge(namespace = "recon::profiler")]
mod ffi {
    unsafe extern "C++" {
        include!("recon/cpp/profiler.h");

        type Scope;

        fn start(cuda: bool) -> Result<()>;
        fn enter(name: &str) -> Result<UniquePtr<Scope>>;
        fn stop() -> Result<()>;
        fn stop_and_save(path: &str) -> Result<()>;
    }
}

/// Marks the span of recon's own code until the returned guard drops, as a "user annotation"
/// named `name` in a running profile (so `benches/profile_summary.py` can say which part of a
/// stage the GPU's idle time and kernels belong to). Costs one small allocation when no profile
/// runs; a span that cannot be opened (out of memory) is left out of the trace.
pub fn scope(name: &str) -> ScopeGuard {
    ScopeGuard {
        _record: ffi::enter(name).unwrap_or_else(|_| cxx::UniquePtr::null()),
    }
}

/// See [`scope`].
#[must_use = "the span ends when the guard drops"]
pub struct ScopeGuard {
    _record: cxx::UniquePtr<ffi::Scope>,
}

/// A running profile; [`Profile::save`] stops it and writes the trace.
#[must_use = "a profile runs until saved"]
pub struct Profile {
    saved: bool,
}

impl Profile {
    /// Starts profiling libtorch's host ops, and the GPU's kernels when `cuda`. One profile at
    /// a time per process (libtorch's rule).
    pub fn start(cuda: bool) -> Result<Self> {
        ffi::start(cuda).map_err(|e| Error::internal(format!("starting the profiler: {e}")))?;
        Ok(Self { saved: false })
    }

    /// Stops the profile and writes it to `path` as a Chrome trace (JSON).
    pub fn save(mut self, path: &str) -> Result<()> {
        self.saved = true;
        ffi::stop_and_save(path).map_err(|e| Error::io(format!("writing the profile {path}: {e}")))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if !self.saved {
            // Dropped unsaved (an error on the way): stop, keep nothing.
            let _ = ffi::stop();
        }
    }
}
