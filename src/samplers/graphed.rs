//! [`GraphedFlow`]: a flow model whose forwards are replayed from a CUDA graph (issue 8).
//!
//! A flow sampler runs ~44 forwards of identical shapes per generation (25 steps, CFG inside
//! the guidance interval), each hundreds of kernels: the dense sparse-structure flow over its
//! fixed grid, and the structured-latent flow over the same voxels at every step (its
//! coordinate bookkeeping — kernel maps, down/upsampling maps, batch layouts — is cached on the
//! voxels' spatial levels by the first forward, so later forwards only compute). Issued one
//! by one from the host they keep the GPU waiting between kernels; captured once into a CUDA
//! graph they replay with one launch. The first call of a generation runs the forward eagerly
//! once (loading kernels, library handles, caches; that output is its result), then captures
//! it over static input buffers; later calls copy their inputs into the buffers and replay.
//! The graph serves every call with the same shapes (the condition, one tensor or a list of
//! per-view tensors, is an input buffer too); the all-zero negative condition's forwards,
//! which skip the cross-attentions, have a graph of their own, and so do guided steps that ask
//! for both velocities at once ([`FlowModel::predict_with_zeros`]). Anything else runs
//! eagerly. A replay runs the eager forward's kernels in the same order, so its outputs are
//! the eager forward's bits (the sparse flow's pooling sums without atomics, see
//! `nn::group_sum`, so that holds there too). `RECON_CUDA_GRAPHS=0` turns graphs off; a failed
//! capture (a host synchronisation inside the forward, a build without graph support) logs a
//! warning once and falls back to eager forwards.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tch::{Device, Tensor};

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

/// A condition a captured graph reads from a static buffer: one tensor, or a list of them.
pub trait GraphInput: Sized {
    /// A new buffer holding the same values (a copy, not a view).
    fn duplicate(&self) -> Result<Self>;
    /// Whether `self` can be copied into `buffer`: same shapes and dtypes, all on `device`.
    fn fits(&self, buffer: &Self, device: Device) -> bool;
    /// Copies the values into `buffer` (which `fits`).
    fn copy_into(&self, buffer: &mut Self) -> Result<()>;
    /// A handle to the same values (no copy).
    fn shallow(&self) -> Self;
}

impl GraphInput for Tensor {
    fn duplicate(&self) -> Result<Self> {
        duplicate(self)
    }

    fn fits(&self, buffer: &Self, device: Device) -> bool {
        self.device() == device && self.size() == buffer.size() && self.kind() == buffer.kind()
    }

    fn copy_into(&self, buffer: &mut Self) -> Result<()> {
        buffer.f_copy_(self)?;
        Ok(())
    }

    fn shallow(&self) -> Self {
        self.shallow_clone()
    }
}

impl GraphInput for Vec<Tensor> {
    fn duplicate(&self) -> Result<Self> {
        self.iter().map(duplicate).collect()
    }

    fn fits(&self, buffer: &Self, device: Device) -> bool {
        self.len() == buffer.len()
            && self
                .iter()
                .zip(buffer)
                .all(|(value, slot)| value.fits(slot, device))
    }

    fn copy_into(&self, buffer: &mut Self) -> Result<()> {
        self.iter()
            .zip(buffer.iter_mut())
            .try_for_each(|(value, slot)| value.copy_into(slot))
    }

    fn shallow(&self) -> Self {
        self.iter().map(Tensor::shallow_clone).collect()
    }
}

/// The condition and the all-zero condition of a guided pair.
impl<A: GraphInput, B: GraphInput> GraphInput for (A, B) {
    fn duplicate(&self) -> Result<Self> {
        Ok((self.0.duplicate()?, self.1.duplicate()?))
    }

    fn fits(&self, buffer: &Self, device: Device) -> bool {
        self.0.fits(&buffer.0, device) && self.1.fits(&buffer.1, device)
    }

    fn copy_into(&self, buffer: &mut Self) -> Result<()> {
        self.0.copy_into(&mut buffer.0)?;
        self.1.copy_into(&mut buffer.1)
    }

    fn shallow(&self) -> Self {
        (self.0.shallow(), self.1.shallow())
    }
}

/// `inner` with its CUDA forwards replayed from a graph (see the module docs); `C` is the
/// condition the forwards take. [`FlowModel::predict`], [`FlowModel::predict_zeros`] and
/// [`FlowModel::predict_with_zeros`] run different kernels, so each has its own graph.
pub struct GraphedFlow<M, C = Tensor> {
    inner: M,
    conditional: RefCell<State<C>>,
    zeros: RefCell<State<C>>,
    pair: RefCell<State<(C, C)>>,
}

enum State<C> {
    /// No call yet.
    Fresh,
    /// Captured for these input shapes.
    Ready(Box<Captured<C>>),
    /// Not graphed (CPU, disabled, or the capture failed): every call runs eagerly.
    Eager,
}

/// The graph and the buffers it reads (`x`, `t`, `cond`) and writes (`out`).
struct Captured<C> {
    graph: CudaGraph,
    x: Tensor,
    t: Tensor,
    cond: C,
    out: Vec<Tensor>,
}

impl<C: GraphInput> Captured<C> {
    fn serves(&self, x: &Tensor, t: &Tensor, cond: &C) -> bool {
        let device = self.x.device();
        // `t` may come from the host: the copy into its buffer moves it.
        let t_fits = t.size() == self.t.size() && t.kind() == self.t.kind();
        x.fits(&self.x, device) && t_fits && cond.fits(&self.cond, device)
    }

    /// Copies the inputs into the buffers, replays, and returns copies of the outputs (the
    /// buffers are overwritten by the next replay, e.g. the unconditional pass of CFG).
    fn run(&mut self, x: &Tensor, t: &Tensor, cond: &C) -> Result<Vec<Tensor>> {
        self.x.f_copy_(x)?;
        self.t.f_copy_(t)?;
        cond.copy_into(&mut self.cond)?;
        self.graph.replay()?;
        self.out.iter().map(duplicate).collect()
    }
}

/// A new tensor with `t`'s values (a copy, not a view).
fn duplicate(t: &Tensor) -> Result<Tensor> {
    let mut copy = Tensor::f_empty_like(t)?;
    copy.f_copy_(t)?;
    Ok(copy)
}

/// One of the inner model's forwards, its outputs as a list: [`FlowModel::predict`] or
/// [`FlowModel::predict_zeros`] on a condition `I`, or [`FlowModel::predict_with_zeros`] on a
/// pair of them.
type Forward<M, I> = fn(&M, &Tensor, &Tensor, &I) -> Result<Vec<Tensor>>;

fn conditional_forward<M: FlowModel<C>, C>(
    m: &M,
    x: &Tensor,
    t: &Tensor,
    cond: &C,
) -> Result<Vec<Tensor>> {
    Ok(vec![m.predict(x, t, cond)?])
}

fn zeros_forward<M: FlowModel<C>, C>(
    m: &M,
    x: &Tensor,
    t: &Tensor,
    zeros: &C,
) -> Result<Vec<Tensor>> {
    Ok(vec![m.predict_zeros(x, t, zeros)?])
}

fn pair_forward<M: FlowModel<C>, C>(
    m: &M,
    x: &Tensor,
    t: &Tensor,
    (cond, zeros): &(C, C),
) -> Result<Vec<Tensor>> {
    let (conditional, unconditional) = m.predict_with_zeros(x, t, cond, zeros)?;
    Ok(vec![conditional, unconditional])
}

impl<M: FlowModel<C>, C: GraphInput> GraphedFlow<M, C> {
    pub fn new(inner: M) -> Self {
        Self {
            inner,
            conditional: RefCell::new(State::Fresh),
            zeros: RefCell::new(State::Fresh),
            pair: RefCell::new(State::Fresh),
        }
    }

    /// Whether the conditional forwards are being replayed from a captured graph (false
    /// before the first call, on the CPU, when disabled or after a failed capture).
    pub fn is_graphed(&self) -> bool {
        matches!(*self.conditional.borrow(), State::Ready(_))
    }

    /// Whether the zero-condition forwards are being replayed from a captured graph.
    pub fn is_zeros_graphed(&self) -> bool {
        matches!(*self.zeros.borrow(), State::Ready(_))
    }

    /// Whether guided steps' velocity pairs are being replayed from a captured graph.
    pub fn is_pair_graphed(&self) -> bool {
        matches!(*self.pair.borrow(), State::Ready(_))
    }

    /// Warm-up, then capture of one `forward` over copies of the inputs. Returns the warm-up's
    /// outputs too: they are this call's velocities, so the first call needs no replay.
    fn capture<I: GraphInput>(
        &self,
        forward: Forward<M, I>,
        x: &Tensor,
        t: &Tensor,
        cond: &I,
    ) -> Result<(Captured<I>, Vec<Tensor>)> {
        let device = x.device();
        let (x, t, cond) = (
            duplicate(x)?,
            duplicate(&t.f_to_device(device)?)?,
            cond.duplicate()?,
        );
        let mut graph = CudaGraph::new(device)?;
        let mut first = None;
        let out = graph.capture(
            || {
                first = Some(forward(&self.inner, &x, &t, &cond)?);
                Ok(())
            },
            || forward(&self.inner, &x, &t, &cond),
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

    /// `forward` replayed from the graph in `state` (captured by the first call), or eagerly.
    fn run<I: GraphInput>(
        &self,
        state: &RefCell<State<I>>,
        forward: Forward<M, I>,
        x_t: &Tensor,
        t: &Tensor,
        cond: &I,
    ) -> Result<Vec<Tensor>> {
        let mut state = state.borrow_mut();
        if matches!(*state, State::Fresh) {
            if !(x_t.device().is_cuda() && graphs_enabled()) {
                *state = State::Eager;
            } else {
                match self.capture(forward, x_t, t, cond) {
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
            _ => forward(&self.inner, x_t, t, cond),
        }
    }
}

/// The outputs of a forward expected to return `N` tensors.
fn outputs<const N: usize>(outputs: Vec<Tensor>) -> Result<[Tensor; N]> {
    let found = outputs.len();
    outputs.try_into().map_err(|_| {
        Error::internal(format!(
            "a graphed flow forward returned {found} outputs; expected {N}"
        ))
    })
}

impl<M: FlowModel<C>, C: GraphInput> FlowModel<C> for GraphedFlow<M, C> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &C) -> Result<Tensor> {
        let [v] = outputs(self.run(&self.conditional, conditional_forward, x_t, t, cond)?)?;
        Ok(v)
    }

    fn predict_zeros(&self, x_t: &Tensor, t: &Tensor, zeros: &C) -> Result<Tensor> {
        let [v] = outputs(self.run(&self.zeros, zeros_forward, x_t, t, zeros)?)?;
        Ok(v)
    }

    fn predict_with_zeros(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &C,
        zeros: &C,
    ) -> Result<(Tensor, Tensor)> {
        let inputs = (cond.shallow(), zeros.shallow());
        let [conditional, unconditional] =
            outputs(self.run(&self.pair, pair_forward, x_t, t, &inputs)?)?;
        Ok((conditional, unconditional))
    }

    fn layout(&self) -> super::LatentLayout<'_> {
        self.inner.layout()
    }
}
