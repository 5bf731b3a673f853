//! The Euler loop of `FlowEulerSampler` and the guided velocity of its CFG / guidance-interval
//! variants, with the multi-image modes of `TrellisImageTo3DPipeline.inject_sampler_multi_image`.
//!
//! Scalar factors are computed in float64 and applied to the tensors as scalars, in the
//! reference's order of operations, so results match it to float32 rounding.

use tch::{Kind, Tensor};

use super::{
    Condition, Conditioning, FlowModel, GuidanceFormula, LatentLayout, Negative, SampleOptions,
    SamplerConfig,
};
use crate::error::{Error, Result, ResultExt};
use crate::pipeline::MultiImageMode;

/// What a sampling run returns (the reference's `{samples, pred_x_t, pred_x_0}`).
pub struct SampleOutput {
    /// The final sample (x at t = 0).
    pub samples: Tensor,
    /// Present when [`SampleOptions::keep_trajectory`] was set.
    pub trajectory: Option<Trajectory>,
}

/// Per-step predictions, one entry per step.
pub struct Trajectory {
    /// x after each Euler step.
    pub pred_x_t: Vec<Tensor>,
    /// x0 predicted from each step's (guided) velocity at the step's start.
    pub pred_x_0: Vec<Tensor>,
}

impl SamplerConfig {
    /// Samples from `model` starting at `noise` (t = 1).
    ///
    /// `neg_cond` is required by the guided samplers and ignored by `FlowEulerSampler`; all-zero
    /// tokens ([`Negative::Zeros`]) go to [`FlowModel::predict_zeros`]. With
    /// [`Conditioning::Views`], `stochastic` gives step i view `i mod K`, and `multidiffusion`
    /// averages the conditional velocity over all views, then guides that mean once. (The
    /// reference only defines multidiffusion for the guidance-interval sampler; here the plain
    /// sampler takes the mean and the CFG sampler guides it at every step.)
    ///
    /// Cancellation is checked before every step; progress is reported after each one.
    pub fn sample<C, M>(
        &self,
        model: &M,
        noise: &Tensor,
        cond: Conditioning<'_, C>,
        neg_cond: Option<Negative<'_, C>>,
        options: &SampleOptions<'_>,
    ) -> Result<SampleOutput>
    where
        C: Condition,
        M: FlowModel<C> + ?Sized,
    {
        self.validate()?;
        check_conditioning(self, &cond, neg_cond)?;
        let layout = model.layout();
        let batch = layout.batch_size(noise)?;
        if batch < 1 {
            return Err(Error::invalid_argument(format!(
                "sampler: the latent holds {batch} samples; expected at least 1"
            )));
        }
        let run = Run {
            config: self,
            model,
            layout,
            batch,
            cond,
            neg_cond,
        };
        let times = self.time_grid();
        let mut trajectory = options.keep_trajectory.then(|| Trajectory {
            pred_x_t: Vec::with_capacity(self.steps),
            pred_x_0: Vec::with_capacity(self.steps),
        });
        let mut x = noise.shallow_clone();
        for step in 0..self.steps {
            options.control.check_cancelled()?;
            let (t, t_prev) = (times[step], times[step + 1]);
            let _scope = crate::profiler::scope("sampler step");
            let v = run
                .velocity(&x, t, step)
                .context(format!("{} step {step} (t = {t})", self.kind.name()))?;
            let x_prev = x.f_sub(&v.f_mul_scalar(t - t_prev)?)?;
            if let Some(trajectory) = trajectory.as_mut() {
                trajectory.pred_x_0.push(self.x0_from_velocity(&x, t, &v)?);
                trajectory.pred_x_t.push(x_prev.shallow_clone());
            }
            x = x_prev;
            options
                .control
                .progress(options.stage, step + 1, self.steps)?;
        }
        Ok(SampleOutput {
            samples: x,
            trajectory,
        })
    }

    /// `x0 = (1 − σ)·x_t − (σ + (1 − σ)·t)·v`.
    fn x0_from_velocity(&self, x_t: &Tensor, t: f64, v: &Tensor) -> Result<Tensor> {
        let sigma = self.sigma_min;
        let noise_scale = sigma + (1.0 - sigma) * t;
        Ok(x_t
            .f_mul_scalar(1.0 - sigma)?
            .f_sub(&v.f_mul_scalar(noise_scale)?)?)
    }

    /// `v = ((1 − σ)·x_t − x0) / (σ + (1 − σ)·t)`, the inverse of [`Self::x0_from_velocity`].
    fn velocity_from_x0(&self, x_t: &Tensor, t: f64, x0: &Tensor) -> Result<Tensor> {
        let sigma = self.sigma_min;
        let noise_scale = sigma + (1.0 - sigma) * t;
        Ok(x_t
            .f_mul_scalar(1.0 - sigma)?
            .f_sub(x0)?
            .f_div_scalar(noise_scale)?)
    }
}

fn check_conditioning<C>(
    config: &SamplerConfig,
    cond: &Conditioning<'_, C>,
    neg_cond: Option<Negative<'_, C>>,
) -> Result<()> {
    if let Conditioning::Views { views, .. } = cond {
        if views.is_empty() {
            return Err(Error::invalid_argument(
                "sampler: multi-image conditioning with no views",
            ));
        }
    }
    if config.kind.uses_guidance() && neg_cond.is_none() {
        return Err(Error::invalid_argument(format!(
            "sampler {} needs a negative condition (neg_cond) for classifier-free guidance",
            config.kind.name()
        )));
    }
    Ok(())
}

/// One sampling run's fixed inputs.
struct Run<'a, C, M: ?Sized> {
    config: &'a SamplerConfig,
    model: &'a M,
    layout: LatentLayout<'a>,
    batch: i64,
    cond: Conditioning<'a, C>,
    neg_cond: Option<Negative<'a, C>>,
}

impl<C: Condition, M: FlowModel<C> + ?Sized> Run<'_, C, M> {
    /// The velocity of the step starting at `x` and `t` (step index `step`), guided as the
    /// sampler prescribes.
    fn velocity(&self, x: &Tensor, t: f64, step: usize) -> Result<Tensor> {
        let Some(strength) = self.config.strength_at(t) else {
            return self.conditional(x, t, step);
        };
        match self.config.guidance {
            GuidanceFormula::Trellis => {
                let (pos, neg) = self.conditional_and_negative(x, t, step)?;
                Ok(pos
                    .f_mul_scalar(1.0 + strength)?
                    .f_sub(&neg.f_mul_scalar(strength)?)?)
            }
            GuidanceFormula::ReconViaGen => self.weighted_guidance(x, t, step, strength),
        }
    }

    /// ReconViaGen (GAP-LAB): `w·pos + (1 − w)·neg`, then the optional std rescale of x0.
    fn weighted_guidance(&self, x: &Tensor, t: f64, step: usize, w: f64) -> Result<Tensor> {
        // The reference short-cuts these two weights to a single model call.
        if w == 1.0 {
            return self.conditional(x, t, step);
        }
        if w == 0.0 {
            return self.negative(x, t);
        }
        let (pos, neg) = self.conditional_and_negative(x, t, step)?;
        let guided = pos.f_mul_scalar(w)?.f_add(&neg.f_mul_scalar(1.0 - w)?)?;
        let phi = self.config.guidance_rescale;
        if phi <= 0.0 {
            return Ok(guided);
        }
        let x0_pos = self.config.x0_from_velocity(x, t, &pos)?;
        let x0_guided = self.config.x0_from_velocity(x, t, &guided)?;
        let ratio = self
            .layout
            .per_sample_std(&x0_pos)?
            .f_div(&self.layout.per_sample_std(&x0_guided)?)?;
        let x0_rescaled = x0_guided.f_mul(&ratio)?;
        let x0 = x0_rescaled
            .f_mul_scalar(phi)?
            .f_add(&x0_guided.f_mul_scalar(1.0 - phi)?)?;
        self.config.velocity_from_x0(x, t, &x0)
    }

    /// The conditional velocity of this step: the single condition, the step's view
    /// (stochastic), or the mean over all views (multidiffusion).
    fn conditional(&self, x: &Tensor, t: f64, step: usize) -> Result<Tensor> {
        match self.single_condition(step) {
            Some(cond) => self.call(x, t, cond),
            None => self.mean_over_views(x, t),
        }
    }

    /// The mean of the conditional velocities over all views (a single condition is one view).
    fn mean_over_views(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let views = match self.cond {
            Conditioning::Views { views, .. } => views,
            Conditioning::Single(cond) => std::slice::from_ref(cond),
        };
        // sum(preds) / len(preds): accumulated in view order, then one division.
        let mut sum = self.call(x, t, &views[0])?;
        for view in &views[1..] {
            sum = sum.f_add(&self.call(x, t, view)?)?;
        }
        Ok(sum.f_div_scalar(views.len() as f64)?)
    }

    /// The one condition of this step's conditional velocity: the single condition, or the
    /// step's view (stochastic); `None` for multidiffusion, which averages over all views.
    fn single_condition(&self, step: usize) -> Option<&C> {
        match self.cond {
            Conditioning::Single(cond) => Some(cond),
            Conditioning::Views {
                views,
                mode: MultiImageMode::Stochastic,
            } => Some(&views[step % views.len()]),
            Conditioning::Views {
                mode: MultiImageMode::Multidiffusion,
                ..
            } => None,
        }
    }

    /// The conditional and the negative velocity of a guided step. Under all-zero negative
    /// tokens, with a conditional velocity from one model call, one
    /// [`FlowModel::predict_with_zeros`] gives both; otherwise two separate evaluations.
    fn conditional_and_negative(
        &self,
        x: &Tensor,
        t: f64,
        step: usize,
    ) -> Result<(Tensor, Tensor)> {
        match (self.single_condition(step), self.neg_cond) {
            (Some(cond), Some(Negative::Zeros(zeros))) => {
                let timestep = self.timestep(x, t)?;
                let (cond, zeros) = (cond.for_batch(self.batch)?, zeros.for_batch(self.batch)?);
                let (pos, neg) = self.model.predict_with_zeros(x, &timestep, &cond, &zeros)?;
                check_velocity(&pos, x)?;
                check_velocity(&neg, x)?;
                Ok((pos, neg))
            }
            _ => Ok((self.conditional(x, t, step)?, self.negative(x, t)?)),
        }
    }

    fn negative(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let neg = self.neg_cond.ok_or_else(|| {
            Error::invalid_argument("sampler: guidance needs a negative condition (neg_cond)")
        })?;
        match neg {
            Negative::Tokens(tokens) => self.call(x, t, tokens),
            Negative::Zeros(zeros) => self.call_with(x, t, zeros, M::predict_zeros),
        }
    }

    /// One network evaluation, as the reference's `FlowEulerSampler._inference_model`: the
    /// timestep `[1000·t] * B` in float32, a batch-1 condition repeated to the batch.
    fn call(&self, x: &Tensor, t: f64, cond: &C) -> Result<Tensor> {
        self.call_with(x, t, cond, M::predict)
    }

    /// [`Self::call`] through `predict` (the model's [`FlowModel::predict`] or
    /// [`FlowModel::predict_zeros`]).
    fn call_with(
        &self,
        x: &Tensor,
        t: f64,
        cond: &C,
        predict: impl Fn(&M, &Tensor, &Tensor, &C) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let timestep = self.timestep(x, t)?;
        let cond = cond.for_batch(self.batch)?;
        let v = predict(self.model, x, &timestep, &cond)?;
        check_velocity(&v, x)?;
        Ok(v)
    }

    /// The network's timestep input: `[1000·t] * B` in float32 on `x`'s device.
    fn timestep(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        // Filled on the device: a copy from host memory would make the host wait for the
        // device's queue to drain before every forward.
        Ok(Tensor::f_full(
            [self.batch],
            f64::from((1000.0 * t) as f32),
            (Kind::Float, x.device()),
        )?)
    }
}

/// An Internal error unless the velocity `v` has the latent `x`'s shape.
fn check_velocity(v: &Tensor, x: &Tensor) -> Result<()> {
    if v.size() != x.size() {
        return Err(Error::internal(format!(
            "flow model returned a velocity of shape {:?} for a latent of shape {:?}",
            v.size(),
            x.size()
        )));
    }
    Ok(())
}
