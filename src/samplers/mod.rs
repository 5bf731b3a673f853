//! Rectified-flow Euler samplers (`trellis/pipelines/samplers/`), their classifier-free
//! guidance variants and the multi-image modes of `run_multi_image`.
//!
//! The flow convention (TRELLIS training): `x_t = (1 − t)·x_0 + (σ_min + (1 − σ_min)·t)·ε` with
//! t = 1 pure noise; the network predicts the velocity `v = (1 − σ_min)·ε − x_0`. Sampling walks
//! a warped time grid from 1 to 0 with Euler steps `x ← x − (t − t_prev)·v`.
//!
//! - [`FlowModel`]: the velocity network, generic over its condition type (the SS flow DiT and
//!   the SLat flow implement it; a sparse latent is passed as its feature tensor `[N, C]`, the
//!   coordinates held by the implementer, which reports them through [`FlowModel::layout`]).
//! - [`SamplerConfig`]: pipeline.json's `{name, args, params}`, parsed strictly, plus per-run
//!   overrides; [`SamplerConfig::sample`] runs it.
//! - [`Conditioning`]: one condition, or several views combined `stochastic`-ally (step i uses
//!   view i mod K) or by `multidiffusion` (the conditional velocity is the mean over the views;
//!   guidance is then applied once to that mean, with one negative call).

mod config;
mod flow_euler;
mod graphed;

pub use config::{time_grid, GuidanceFormula, SamplerConfig, SamplerKind, MAX_STEPS};
pub use flow_euler::{SampleOutput, Trajectory};
pub use graphed::{graphs_enabled, GraphInput, GraphedFlow};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::group_sum::GroupedRows;
use crate::pipeline::{MultiImageMode, RunControl, Stage};

/// A velocity network `v(x_t, t, cond)`.
pub trait FlowModel<C> {
    /// Predicts the velocity at `x_t` (same shape as `x_t`). `t` is `[B]` float32 holding
    /// `1000·t`, one entry per sample, as the reference passes it. `cond` has already been
    /// matched to the batch (see [`Condition::for_batch`]).
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &C) -> Result<Tensor>;

    /// [`FlowModel::predict`] under the all-zero condition `zeros` (a [`Negative::Zeros`]).
    /// Every context token is then the same vector, so each cross-attention's softmax is
    /// uniform and its output is one constant vector: models override this to skip those
    /// attentions. The default runs [`FlowModel::predict`] on the zeros.
    fn predict_zeros(&self, x_t: &Tensor, t: &Tensor, zeros: &C) -> Result<Tensor> {
        self.predict(x_t, t, zeros)
    }

    /// Both velocities classifier-free guidance needs at one `x_t` and `t`: `(predict(x_t, t,
    /// cond), predict_zeros(x_t, t, zeros))`. The two forwards share their input and timestep,
    /// so models override this to compute what comes before the condition once and to run the
    /// rest of both as one batch. The default makes the two calls.
    fn predict_with_zeros(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &C,
        zeros: &C,
    ) -> Result<(Tensor, Tensor)> {
        Ok((
            self.predict(x_t, t, cond)?,
            self.predict_zeros(x_t, t, zeros)?,
        ))
    }

    /// How `x_t` holds its samples. Dense by default; a sparse implementer returns the batch
    /// index of each feature row.
    fn layout(&self) -> LatentLayout<'_> {
        LatentLayout::Dense
    }
}

/// How a latent tensor holds the samples of its batch.
#[derive(Debug, Clone, Copy)]
pub enum LatentLayout<'a> {
    /// `[B, C, ...]`: sample b is `x[b]`.
    Dense,
    /// Sparse features `[N, C]` of `batch_size` samples; `batch_index[i]` (`[N]`, any integer
    /// kind: the coords' first column) is the sample that row i belongs to.
    Sparse {
        batch_index: &'a Tensor,
        batch_size: i64,
    },
}

impl LatentLayout<'_> {
    /// The number of samples (the reference's `x_t.shape[0]`; for a SparseTensor the batch size).
    pub fn batch_size(&self, x: &Tensor) -> Result<i64> {
        match *self {
            Self::Dense => x.size().first().copied().ok_or_else(|| {
                Error::invalid_argument("sampler: the latent is a 0-d tensor; expected [B, C, ...]")
            }),
            Self::Sparse { batch_size, .. } => Ok(batch_size),
        }
    }

    /// The standard deviation of each sample over all its values, shaped to broadcast against
    /// the latent: dense `[B, 1, ...]` with torch's unbiased std (as `Tensor.std(dim=1..)`);
    /// sparse `[N, 1]` as ReconViaGen's `SparseTensor.std`: `sqrt(E[x²] − E[x]²)` with E the
    /// mean over each sample's voxels of the per-voxel channel means (population std).
    pub fn per_sample_std(&self, x: &Tensor) -> Result<Tensor> {
        match *self {
            Self::Dense => {
                let dims: Vec<i64> = (1..x.dim() as i64).collect();
                Ok(x.f_std_dim(dims.as_slice(), true, true)?)
            }
            Self::Sparse {
                batch_index,
                batch_size,
            } => sparse_std(x, batch_index, batch_size),
        }
    }
}

fn sparse_std(x: &Tensor, batch_index: &Tensor, batch_size: i64) -> Result<Tensor> {
    let index = batch_index.f_to_kind(Kind::Int64)?;
    // Summed in the same order at every run (CUDA's index_add is not).
    let samples = GroupedRows::new(&index, batch_size)?;
    let segment_mean = |per_row: &Tensor| -> Result<Tensor> {
        let sums = samples.sum(per_row)?;
        let counts = samples.sum(&per_row.f_ones_like()?)?;
        Ok(sums.f_div(&counts)?)
    };
    let mean = segment_mean(&x.f_mean_dim(1, false, None::<Kind>)?)?;
    let mean_sq = segment_mean(&x.f_square()?.f_mean_dim(1, false, None::<Kind>)?)?;
    let std = mean_sq.f_sub(&mean.f_square()?)?.f_sqrt()?;
    Ok(std.f_index_select(0, &index)?.f_unsqueeze(1)?)
}

/// A condition the sampler can match to the latent's batch.
pub trait Condition: Sized {
    /// This condition for a batch of `batch` samples. The reference repeats a tensor with a
    /// batch of 1 along dim 0 when the latent has more samples; anything else passes unchanged.
    fn for_batch(&self, batch: i64) -> Result<Self>;
}

impl Condition for Tensor {
    fn for_batch(&self, batch: i64) -> Result<Self> {
        let size = self.size();
        match size.first() {
            Some(1) if batch > 1 => {
                let mut repeats = vec![1i64; size.len()];
                repeats[0] = batch;
                Ok(self.f_repeat(repeats.as_slice())?)
            }
            _ => Ok(self.shallow_clone()),
        }
    }
}

/// A list of conditions (e.g. ReconViaGen's per-view SLat conditions), each matched alike.
impl<T: Condition> Condition for Vec<T> {
    fn for_batch(&self, batch: i64) -> Result<Self> {
        self.iter().map(|c| c.for_batch(batch)).collect()
    }
}

/// The condition(s) of one sampling run.
#[derive(Debug)]
pub enum Conditioning<'a, C> {
    /// One condition (the reference's `run`).
    Single(&'a C),
    /// Several views, each a batch-1 condition, combined as `run_multi_image` does. In
    /// stochastic mode, views beyond the number of steps are never used (the reference only
    /// prints a warning).
    Views {
        views: &'a [C],
        mode: MultiImageMode,
    },
}

/// The negative condition of classifier-free guidance.
#[derive(Debug)]
pub enum Negative<'a, C> {
    /// Given condition tokens.
    Tokens(&'a C),
    /// All-zero tokens shaped as given: TRELLIS's and ReconViaGen's `zeros_like(cond)`. The
    /// sampler calls [`FlowModel::predict_zeros`] with them.
    Zeros(&'a C),
}

impl<'a, C> Negative<'a, C> {
    /// The condition tensor(s), whichever the variant.
    pub fn tokens(&self) -> &'a C {
        match *self {
            Self::Tokens(c) | Self::Zeros(c) => c,
        }
    }
}

// Manual impls: a derive would require `C: Copy`, but only references are held.
impl<C> Clone for Negative<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Negative<'_, C> {}

impl<C> Clone for Conditioning<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Conditioning<'_, C> {}

/// Progress, cancellation and what to keep, for one sampling run.
#[derive(Clone, Copy)]
pub struct SampleOptions<'a> {
    /// Reported to the progress callback, once per finished step.
    pub stage: Stage,
    pub control: &'a RunControl<'a>,
    /// Keep `pred_x_t` / `pred_x_0` of every step (the reference's returned lists).
    pub keep_trajectory: bool,
}

impl<'a> SampleOptions<'a> {
    pub fn new(stage: Stage, control: &'a RunControl<'a>) -> Self {
        Self {
            stage,
            control,
            keep_trajectory: false,
        }
    }

    pub fn with_trajectory(mut self) -> Self {
        self.keep_trajectory = true;
        self
    }
}
