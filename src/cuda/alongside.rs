//! Two pieces of work at once on one CUDA device: one on the calling thread, the other on a
//! thread and a CUDA stream of its own. For host-bound work (many small launches and host
//! round trips, such as the camera registration's ICP) next to GPU-bound work (a decoder): the
//! GPU runs the second while the host drives the first, instead of idling between its
//! launches.
//!
//! The worker's stream first waits for everything the calling thread had queued on its current
//! stream when [`run_alongside`] was called (so the worker sees finished inputs), and the
//! worker waits for its stream to drain before it returns (so no kernel of it still reads a
//! tensor the caller may free once both are done). Without CUDA graphs support in this build
//! (no CUDA runtime headers), or off CUDA, the two run one after the other on the calling
//! thread.

use tch::Device;

use crate::error::{Error, Result};

#[cfg(recon_cuda_graph)]
use super::graph_ffi::ffi;

/// Runs `work` alongside `meanwhile` on `device` (see the module documentation) and returns
/// both results; `meanwhile` runs on the calling thread. A panic in `work` comes back as an
/// internal error once `meanwhile` has finished.
pub fn run_alongside<A: Send, B>(
    device: Device,
    work: impl FnOnce() -> A + Send,
    meanwhile: impl FnOnce() -> B,
) -> Result<(A, B)> {
    match device {
        Device::Cuda(ordinal) => concurrently(ordinal, work, meanwhile),
        _ => {
            let b = meanwhile();
            Ok((work(), b))
        }
    }
}

#[cfg(recon_cuda_graph)]
fn concurrently<A: Send, B>(
    ordinal: usize,
    work: impl FnOnce() -> A + Send,
    meanwhile: impl FnOnce() -> B,
) -> Result<(A, B)> {
    let index = i8::try_from(ordinal)
        .map_err(|_| Error::invalid_argument(format!("CUDA device ordinal {ordinal}")))?;
    let side = SideStream(
        ffi::new_alongside(index).map_err(|e| super::device_error("preparing a side stream", e))?,
    );
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || -> Result<A> {
            let mut side = side;
            ffi::enter_alongside(side.0.pin_mut())
                .map_err(|e| super::device_error("entering the side stream", e))?;
            let mut entered = Entered { side, left: false };
            let value = work();
            entered.leave()?;
            Ok(value)
        });
        let b = meanwhile();
        let a = worker
            .join()
            .map_err(|_| Error::internal("the work running alongside panicked"))??;
        Ok((a, b))
    })
}

#[cfg(not(recon_cuda_graph))]
fn concurrently<A: Send, B>(
    _ordinal: usize,
    work: impl FnOnce() -> A + Send,
    meanwhile: impl FnOnce() -> B,
) -> Result<(A, B)> {
    let b = meanwhile();
    Ok((work(), b))
}

/// The side stream's handle, moved from the calling thread to the worker.
#[cfg(recon_cuda_graph)]
struct SideStream(cxx::UniquePtr<ffi::Alongside>);

// SAFETY: it holds CUDA stream handles, an event and libtorch's thread-local state captured
// from the caller (applied on the worker, as `at::launch` does), which any thread of the
// process may use; it is used by one thread at a time (created by the caller, then moved to
// the worker).
#[cfg(recon_cuda_graph)]
unsafe impl Send for SideStream {}

/// The worker's side of [`SideStream`] once entered: leaving waits for the side stream's work
/// and restores the worker's stream and state, also when `work` panics (on unwinding).
#[cfg(recon_cuda_graph)]
struct Entered {
    side: SideStream,
    left: bool,
}

#[cfg(recon_cuda_graph)]
impl Entered {
    fn leave(&mut self) -> Result<()> {
        self.left = true;
        ffi::leave_alongside(self.side.0.pin_mut())
            .map_err(|e| super::device_error("leaving the side stream", e))
    }
}

#[cfg(recon_cuda_graph)]
impl Drop for Entered {
    fn drop(&mut self) {
        if !self.left {
            // Only on unwinding; the panic itself is reported by `run_alongside`.
            let _ = self.leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_cuda_both_run_and_both_results_come_back() {
        let (a, b) = run_alongside(Device::Cpu, || 2 + 2, || "meanwhile").unwrap();
        assert_eq!((a, b), (4, "meanwhile"));
    }
}
