//! [`GraphedFlow`]: a dense flow model whose forwards are replayed from a CUDA graph (issue 8).
//!
//! The sparse-structure flow runs 44 forwards of identical shapes per generation (25 steps,
//! CFG inside the guidance interval), each ~600 kernels. Issued one by one from the host they
//! keep the GPU waiting between kernels; captured once into a CUDA graph they replay with one
//! launch. The first call of a generation runs the forward eagerly once (loading kernels,
//! library handles, caches; that output is its result), then captures it over static input
//! buffers; later calls
//! copy their inputs into the buffers and replay. The graph serves every call with the same
//! shapes (conditional and unconditional passes alike: the condition is an input buffer too);
//! anything else runs eagerly. Outputs are bit-identical to the eager forward (same kernels,
//! same order). `RECON_CUDA_GRAPHS=0` turns graphs off; a failed capture (a host
//! synchronisation inside the forward, a build without graph support) logs a warning once
//! and falls back to eager forwards.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tch::Tensor;

use super::FlowModel;
use crate::cuda::graph::CudaGraph;
use crate::error::{Error, Result};

/// Whether CUDA graphs may be used (`RECON_CUDA_GRAPHS=0` turns them off).
pub fn graphs_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("RECON_CUDA_GRAPHS").map_or(true, |v| v != "0"))
}

/// Set once a capture failed in this process, so the warning is logged once.
static CAPTURE_FAILED: AtomicBool = AtomicBool::new(false);

/// `inner` with its CUDA forwards replayed from a graph (see the module docs).
pub struct GraphedFlow<M> {
    inner: M,
    state: RefCell<State>,
}

enum State {
    /// No call yet.
    Fresh,
    /// Captured for these input shapes.
    Ready(Box<Captured>),
    /// Not graphed (CPU, disabled, or the capture failed): every call runs eagerly.
    Eager,
}

/// The graph and the buffers it reads (`x`, `t`, `cond`) and writes (`out`).
struct Captured {
    graph: CudaGraph,
    x: Tensor,
    t: Tensor,
    cond: Tensor,
    out: Tensor,
}

impl Captured {
    fn serves(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> bool {
        let same = |a: &Tensor, b: &Tensor| a.size() == b.size() && a.kind() == b.kind();
        x.device() == self.x.device()
            && cond.device() == self.x.device()
            && same(x, &self.x)
            && same(t, &self.t)
            && same(cond, &self.cond)
    }

    /// Copies the inputs into the buffers, replays, and returns a copy of the output (the
    /// buffer is overwritten by the next replay, e.g. the unconditional pass of CFG).
    fn run(&mut self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        self.x.f_copy_(x)?;
        self.t.f_copy_(t)?;
        self.cond.f_copy_(cond)?;
        self.graph.replay()?;
        duplicate(&self.out)
    }
}

/// A new tensor with `t`'s values (a copy, not a view).
fn duplicate(t: &Tensor) -> Result<Tensor> {
    let mut copy = Tensor::f_empty_like(t)?;
    copy.f_copy_(t)?;
    Ok(copy)
}

impl<M: FlowModel<Tensor>> GraphedFlow<M> {
    pub fn new(inner: M) -> Self {
        Self {
            inner,
            state: RefCell::new(State::Fresh),
        }
    }

    /// Whether the forwards are being replayed from a captured graph (false before the first
    /// call, on the CPU, when disabled or after a failed capture).
    pub fn is_graphed(&self) -> bool {
        matches!(*self.state.borrow(), State::Ready(_))
    }

    /// Warm-up, then capture of one forward over copies of the inputs. Returns the warm-up's
    /// output too: it is this call's velocity, so the first call needs no replay.
    fn capture(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Result<(Captured, Tensor)> {
        let device = x.device();
        let (x, t, cond) = (
            duplicate(x)?,
            duplicate(&t.f_to_device(device)?)?,
            duplicate(cond)?,
        );
        let mut graph = CudaGraph::new(device)?;
        let mut first = None;
        let out = graph.capture(
            || {
                first = Some(self.inner.predict(&x, &t, &cond)?);
                Ok(())
            },
            || self.inner.predict(&x, &t, &cond),
        )?;
        let first = first.ok_or_else(|| Error::internal("CUDA graph warm-up produced nothing"))?;
        let captured = Captured {
            graph,
            x,
            t,
            cond,
            out,
        };
        Ok((captured, first))
    }
}

impl<M: FlowModel<Tensor>> FlowModel<Tensor> for GraphedFlow<M> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let mut state = self.state.borrow_mut();
        if matches!(*state, State::Fresh) {
            if !(x_t.device().is_cuda() && graphs_enabled()) {
                *state = State::Eager;
            } else {
                match self.capture(x_t, t, cond) {
                    Ok((captured, first)) => {
                        *state = State::Ready(Box::new(captured));
                        return Ok(first);
                    }
                    Err(err) => {
                        if !CAPTURE_FAILED.swap(true, Ordering::Relaxed) {
                            tracing::warn!("CUDA graph capture failed, running eagerly: {err}");
                        }
                        *state = State::Eager;
                    }
                }
            }
        }
        match &mut *state {
            State::Ready(captured) if captured.serves(x_t, t, cond) => captured.run(x_t, t, cond),
            _ => self.inner.predict(x_t, t, cond),
        }
    }

    fn layout(&self) -> super::LatentLayout<'_> {
        self.inner.layout()
    }
}
