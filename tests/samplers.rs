//! The flow-Euler samplers against the reference, by replay: each golden case recorded every
//! call the reference sampler made to a toy velocity model (inputs and output). Here a
//! [`Replay`] model checks that our sampler makes the same calls in the same order with the
//! same inputs (x_t at rel. L2 <= 1e-4, the float32 timestep exactly, the same condition) and
//! answers with the recorded outputs; the final sample and the trajectory are then compared.
//!
//! Cases: tests/fixtures/golden/samplers_* (TRELLIS samplers and multi-image modes, written by
//! tools/golden/cases/samplers.py) and ../shared/golden/reconviagen/samplers (ReconViaGen's
//! guidance variants on its real small flow models).

mod common;

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use common::{harness_cases, read_json, read_tensors, rel_l2, shared_golden_dir, REL_L2_TOLERANCE};
use recon::hub;
use recon::models::NamedTensors;
use recon::pipeline::{MultiImageMode, RunControl, Stage};
use recon::samplers::{
    Condition, Conditioning, FlowModel, GuidanceFormula, LatentLayout, Negative, SampleOptions,
    SamplerConfig, SamplerKind,
};
use recon::{Error, ErrorKind, Result};
use serde_json::Value;
use tch::{Kind, Tensor};

/// One recorded model call.
struct RecordedCall {
    /// The latent the model was given (None: not recorded; the input is then not checked).
    x_t: Option<Tensor>,
    /// `[B]` float32 timestep.
    t: Tensor,
    /// Which condition: a view index, or -1 for the negative condition.
    cond: i64,
    out: Tensor,
}

/// Names the condition a call was given: a view index, -1 for the negative, None if unknown.
type Identify<C> = Box<dyn Fn(&C) -> Option<i64>>;

/// A flow model that replays recorded calls, checking the inputs of each.
struct Replay<C> {
    calls: Vec<RecordedCall>,
    next: Cell<usize>,
    identify: Identify<C>,
    sparse_batch: Option<(Tensor, i64)>,
    worst_input_rel_l2: Cell<f64>,
    /// Every call's (timestep, condition), for the manifest's calls_per_step check.
    seen: RefCell<Vec<(f32, i64)>>,
}

impl<C> Replay<C> {
    fn new(calls: Vec<RecordedCall>, identify: Identify<C>) -> Self {
        Self {
            calls,
            next: Cell::new(0),
            identify,
            sparse_batch: None,
            worst_input_rel_l2: Cell::new(0.0),
            seen: RefCell::new(Vec::new()),
        }
    }

    fn calls_made(&self) -> usize {
        self.next.get()
    }
}

impl<C> FlowModel<C> for Replay<C> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &C) -> Result<Tensor> {
        let index = self.next.get();
        self.next.set(index + 1);
        let call = self.calls.get(index).ok_or_else(|| {
            Error::internal(format!(
                "model call {index}: the reference made only {} calls",
                self.calls.len()
            ))
        })?;
        let which = (self.identify)(cond)
            .ok_or_else(|| Error::internal(format!("model call {index}: unknown condition")))?;
        self.seen
            .borrow_mut()
            .push((f32::try_from(t.get(0)).unwrap_or(f32::NAN), which));
        if which != call.cond {
            return Err(Error::internal(format!(
                "model call {index}: condition {which}, the reference used {}",
                call.cond
            )));
        }
        if t.kind() != Kind::Float || t.size() != call.t.size() || !t.equal(&call.t) {
            return Err(Error::internal(format!(
                "model call {index}: timestep {t:?} {:?}, the reference passed {:?}",
                Vec::<f32>::try_from(t.to_kind(Kind::Float)).unwrap_or_default(),
                Vec::<f32>::try_from(&call.t).unwrap_or_default()
            )));
        }
        if let Some(expected) = &call.x_t {
            if x_t.size() != expected.size() {
                return Err(Error::internal(format!(
                    "model call {index}: x_t {:?}, the reference passed {:?}",
                    x_t.size(),
                    expected.size()
                )));
            }
            let (rel, max_abs) = rel_l2(x_t, expected);
            self.worst_input_rel_l2
                .set(self.worst_input_rel_l2.get().max(rel));
            if rel > REL_L2_TOLERANCE {
                return Err(Error::internal(format!(
                    "model call {index}: x_t differs from the reference: rel_l2 {rel:.3e} max_abs {max_abs:.3e}"
                )));
            }
        }
        Ok(call.out.shallow_clone())
    }

    fn layout(&self) -> LatentLayout<'_> {
        match &self.sparse_batch {
            Some((batch_index, batch_size)) => LatentLayout::Sparse {
                batch_index,
                batch_size: *batch_size,
            },
            None => LatentLayout::Dense,
        }
    }
}

/// Finds `cond` among `known` (index, tensor), allowing a batch-1 tensor repeated to a batch.
fn identify_tensor(known: &[(i64, Tensor)], cond: &Tensor) -> Option<i64> {
    known.iter().find_map(|(index, reference)| {
        let same = if reference.size() == cond.size() {
            reference.equal(cond)
        } else {
            reference.size()[0] == 1
                && reference.size()[1..] == cond.size()[1..]
                && reference.expand(cond.size(), false).equal(cond)
        };
        same.then_some(*index)
    })
}

/// Compares our output with the reference; returns the report line and asserts the tolerance.
fn compare(case: &str, name: &str, ours: &Tensor, reference: &Tensor) -> String {
    let (rel, max_abs) = rel_l2(ours, reference);
    let line = format!("{case}: {name} rel_l2 {rel:.3e} max_abs {max_abs:.3e}");
    assert!(rel <= REL_L2_TOLERANCE, "{line}");
    line
}

fn run_control_none() -> RunControl<'static> {
    RunControl::none()
}

// --------------------------------------------------------------------------------------------
// TRELLIS samplers (tests/fixtures/golden/samplers_*)
// --------------------------------------------------------------------------------------------

fn pipeline_entry(sampler: &Value) -> hub::SamplerConfig {
    hub::SamplerConfig {
        name: sampler["name"].as_str().expect("sampler.name").to_string(),
        args: sampler["args"].clone(),
        params: sampler["params"].clone(),
    }
}

fn check_trellis_case(case: &Path) -> Vec<String> {
    let label = case.file_name().unwrap().to_string_lossy().to_string();
    let manifest = read_json(&case.join("manifest.json"));
    let config = SamplerConfig::from_pipeline(
        &pipeline_entry(&manifest["sampler"]),
        GuidanceFormula::Trellis,
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    let inputs = read_tensors(&case.join("inputs.safetensors"));
    let outputs = read_tensors(&case.join("outputs.safetensors"));

    // The time grid must be bit-exact: the guidance interval test compares it.
    let t_seq = Vec::<f64>::try_from(&outputs["t_seq"]).unwrap();
    assert_eq!(config.time_grid(), t_seq, "{label}: time grid");

    let views: Vec<Tensor> = (0..)
        .map_while(|k| inputs.get(&format!("cond.{k}")).map(Tensor::shallow_clone))
        .collect();
    let neg_cond = inputs["neg_cond"].shallow_clone();
    let mut known: Vec<(i64, Tensor)> = views
        .iter()
        .enumerate()
        .map(|(k, c)| (k as i64, c.shallow_clone()))
        .collect();
    known.push((-1, neg_cond.shallow_clone()));

    let calls = outputs["model_calls.cond"].size()[0];
    let recorded = (0..calls)
        .map(|i| RecordedCall {
            x_t: Some(outputs["model_calls.x_t"].get(i)),
            t: outputs["model_calls.t"].get(i),
            cond: i64::try_from(outputs["model_calls.cond"].get(i)).unwrap(),
            out: outputs["model_calls.out"].get(i),
        })
        .collect();
    let mut model: Replay<Tensor> = Replay::new(
        recorded,
        Box::new(move |c: &Tensor| identify_tensor(&known, c)),
    );
    if manifest["layout"]["kind"] == "sparse" {
        let coords = &inputs["coords"];
        let batch_index = coords.select(1, 0);
        let batch_size = i64::try_from(batch_index.max()).unwrap() + 1;
        model.sparse_batch = Some((batch_index, batch_size));
    }

    let conditioning = match manifest["multi_image"]["mode"].as_str() {
        None => Conditioning::Single(&views[0]),
        Some(mode) => Conditioning::Views {
            views: &views,
            mode: match mode {
                "stochastic" => MultiImageMode::Stochastic,
                "multidiffusion" => MultiImageMode::Multidiffusion,
                other => panic!("{label}: unknown multi-image mode {other}"),
            },
        },
    };
    let control = run_control_none();
    let options = SampleOptions::new(Stage::SparseStructure, &control).with_trajectory();
    let out = config
        .sample(
            &model,
            &inputs["noise"],
            conditioning,
            Some(Negative::Tokens(&neg_cond)),
            &options,
        )
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(
        model.calls_made() as i64,
        calls,
        "{label}: number of model calls"
    );
    check_calls_per_step(&label, &manifest, &model);

    let trajectory = out.trajectory.expect("trajectory was requested");
    let mut report = vec![
        format!(
            "{label}: {calls} model calls replayed, worst x_t input rel_l2 {:.3e}",
            model.worst_input_rel_l2.get()
        ),
        compare(&label, "samples", &out.samples, &outputs["samples"]),
    ];
    for (name, ours) in [
        ("pred_x_t", &trajectory.pred_x_t),
        ("pred_x_0", &trajectory.pred_x_0),
    ] {
        assert_eq!(ours.len(), config.steps, "{label}: {name} length");
        report.push(compare(
            &label,
            name,
            &Tensor::stack(ours, 0),
            &outputs[name],
        ));
    }
    report
}

/// The manifest's per-step condition lists match the calls we made.
fn check_calls_per_step<C>(label: &str, manifest: &Value, model: &Replay<C>) {
    let seen = model.seen.borrow();
    let mut steps: Vec<Vec<i64>> = Vec::new();
    for (i, (t, cond)) in seen.iter().enumerate() {
        if i == 0 || seen[i - 1].0 != *t {
            steps.push(Vec::new());
        }
        steps.last_mut().unwrap().push(*cond);
    }
    let expected: Vec<Vec<i64>> =
        serde_json::from_value(manifest["calls_per_step"].clone()).expect("calls_per_step");
    assert_eq!(steps, expected, "{label}: conditions per step");
}

#[test]
fn trellis_samplers_replay_the_reference() {
    for case in harness_cases("sampler") {
        for line in check_trellis_case(&case) {
            println!("{line}");
        }
    }
}

// --------------------------------------------------------------------------------------------
// ReconViaGen guidance variants (../shared/golden/reconviagen/samplers)
// --------------------------------------------------------------------------------------------

/// A ReconViaGen case's sampler as its pipeline.json would give it.
fn reconviagen_config(case: &Value) -> SamplerConfig {
    let formula = match case["variant"].as_str() {
        Some("gaplab") => GuidanceFormula::ReconViaGen,
        Some("space") => GuidanceFormula::Trellis,
        other => panic!("unknown variant {other:?}"),
    };
    let entry = hub::SamplerConfig {
        name: "FlowEulerGuidanceIntervalSampler".to_string(),
        args: serde_json::json!({"sigma_min": case["sigma_min"]}),
        params: case["params"].clone(),
    };
    SamplerConfig::from_pipeline(&entry, formula).unwrap_or_else(|e| panic!("{e}"))
}

/// The recorded calls of a case. Model inputs were not recorded; the input of every call of
/// step s is the noise (s = 0) or the reference's `pred_x_t[s − 1]`, so that is checked.
fn reconviagen_calls(
    name: &str,
    noise: &Tensor,
    outputs: &NamedTensors,
    steps: usize,
) -> Vec<RecordedCall> {
    let t = &outputs[&format!("{name}.model_calls.t")];
    let is_neg = &outputs[&format!("{name}.model_calls.is_neg")];
    let out = &outputs[&format!("{name}.model_calls.out")];
    let pred_x_t = &outputs[&format!("{name}.pred_x_t")];
    let times = Vec::<f32>::try_from(t).unwrap();
    let mut step = 0usize;
    let mut calls = Vec::new();
    for (i, time) in times.iter().enumerate() {
        if i > 0 && *time != times[i - 1] {
            step += 1;
        }
        assert!(step < steps, "{name}: more timesteps than steps");
        let x_t = if step == 0 {
            noise.shallow_clone()
        } else {
            pred_x_t.get(step as i64 - 1)
        };
        calls.push(RecordedCall {
            x_t: Some(x_t),
            t: t.narrow(0, i as i64, 1),
            cond: if i64::try_from(is_neg.get(i as i64)).unwrap() == 1 {
                -1
            } else {
                0
            },
            out: out.get(i as i64),
        });
    }
    calls
}

fn check_reconviagen_case<C: Condition>(
    name: &str,
    case: &Value,
    outputs: &NamedTensors,
    noise: &Tensor,
    model: Replay<C>,
    cond: &C,
    neg_cond: &C,
) -> Vec<String> {
    let config = reconviagen_config(case);
    let t_seq = Vec::<f64>::try_from(&outputs[&format!("{name}.t_seq")]).unwrap();
    assert_eq!(config.time_grid(), t_seq, "{name}: time grid");
    let active: Vec<bool> = serde_json::from_value(case["cfg_active_per_step"].clone()).unwrap();
    let control = run_control_none();
    let options = SampleOptions::new(Stage::StructuredLatent, &control).with_trajectory();
    let out = config
        .sample(
            &model,
            noise,
            Conditioning::Single(cond),
            Some(Negative::Tokens(neg_cond)),
            &options,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected_calls = case["num_model_calls"].as_u64().unwrap() as usize;
    assert_eq!(model.calls_made(), expected_calls, "{name}: model calls");
    let guided_steps = model.seen.borrow().iter().filter(|(_, c)| *c == -1).count();
    assert_eq!(
        guided_steps,
        active.iter().filter(|a| **a).count(),
        "{name}: guided steps"
    );
    let trajectory = out.trajectory.unwrap();
    let mut report = vec![
        format!(
            "reconviagen {name}: {expected_calls} calls replayed, worst x_t input rel_l2 {:.3e}",
            model.worst_input_rel_l2.get()
        ),
        compare(
            name,
            "samples",
            &out.samples,
            &outputs[&format!("{name}.samples")],
        ),
    ];
    report.push(compare(
        name,
        "pred_x_t",
        &Tensor::stack(&trajectory.pred_x_t, 0),
        &outputs[&format!("{name}.pred_x_t")],
    ));
    report.push(compare(
        name,
        "pred_x_0",
        &Tensor::stack(&trajectory.pred_x_0, 0),
        &outputs[&format!("{name}.pred_x_0")],
    ));
    report
}

#[test]
fn reconviagen_samplers_replay_the_reference() {
    let root = shared_golden_dir().join("reconviagen/samplers");
    let manifest = read_json(&root.join("manifest.json"));
    let inputs = read_tensors(&root.join("inputs.safetensors"));
    let outputs = read_tensors(&root.join("outputs.safetensors"));
    let cases = manifest["cases"].as_object().expect("cases");
    assert!(
        cases.len() >= 5,
        "expected the five ReconViaGen sampler cases"
    );

    let ss_cond = inputs["ss.cond"].shallow_clone();
    let ss_neg = ss_cond.zeros_like();
    let slat_cond: Vec<Tensor> = (0..)
        .map_while(|k| {
            inputs
                .get(&format!("slat.cond_list.{k}"))
                .map(Tensor::shallow_clone)
        })
        .collect();
    let slat_neg: Vec<Tensor> = slat_cond.iter().map(Tensor::zeros_like).collect();
    let coords = &inputs["slat.coords"];
    let batch_index = coords.select(1, 0);
    let batch_size = i64::try_from(batch_index.max()).unwrap() + 1;

    for (name, case) in cases {
        let steps = case["params"]["steps"].as_u64().unwrap() as usize;
        let lines = if case["model"] == "sparse_structure_flow_model" {
            let noise = &inputs["ss.noise"];
            let known = vec![(0, ss_cond.shallow_clone()), (-1, ss_neg.shallow_clone())];
            let model: Replay<Tensor> = Replay::new(
                reconviagen_calls(name, noise, &outputs, steps),
                Box::new(move |c: &Tensor| identify_tensor(&known, c)),
            );
            check_reconviagen_case(name, case, &outputs, noise, model, &ss_cond, &ss_neg)
        } else {
            let noise = &inputs["slat.noise"];
            let (pos, neg) = (
                slat_cond
                    .iter()
                    .map(Tensor::shallow_clone)
                    .collect::<Vec<_>>(),
                slat_neg
                    .iter()
                    .map(Tensor::shallow_clone)
                    .collect::<Vec<_>>(),
            );
            let mut model: Replay<Vec<Tensor>> = Replay::new(
                reconviagen_calls(name, noise, &outputs, steps),
                Box::new(move |c: &Vec<Tensor>| {
                    let equal = |a: &[Tensor]| {
                        a.len() == c.len() && a.iter().zip(c).all(|(x, y)| x.equal(y))
                    };
                    if equal(&pos) {
                        Some(0)
                    } else if equal(&neg) {
                        Some(-1)
                    } else {
                        None
                    }
                }),
            );
            model.sparse_batch = Some((batch_index.shallow_clone(), batch_size));
            check_reconviagen_case(name, case, &outputs, noise, model, &slat_cond, &slat_neg)
        };
        for line in lines {
            println!("{line}");
        }
    }
}

// --------------------------------------------------------------------------------------------
// Behaviour that needs no reference data
// --------------------------------------------------------------------------------------------

/// v = x·0.5 + cond, counting calls (cond a scalar tensor tag).
struct Counting {
    calls: Cell<usize>,
    negatives: Cell<usize>,
}

impl FlowModel<Tensor> for Counting {
    fn predict(&self, x_t: &Tensor, _t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        if f64::try_from(cond.sum(Kind::Double)).unwrap() == 0.0 {
            self.negatives.set(self.negatives.get() + 1);
        }
        Ok(x_t * 0.5 + cond.mean(Kind::Float))
    }
}

fn counting() -> Counting {
    Counting {
        calls: Cell::new(0),
        negatives: Cell::new(0),
    }
}

/// [`Counting`] with its own zero-condition forward, counted apart.
struct CountingWithZeros {
    inner: Counting,
    zero_calls: Cell<usize>,
}

impl FlowModel<Tensor> for CountingWithZeros {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        self.inner.predict(x_t, t, cond)
    }

    fn predict_zeros(&self, x_t: &Tensor, _t: &Tensor, zeros: &Tensor) -> Result<Tensor> {
        self.zero_calls.set(self.zero_calls.get() + 1);
        Ok(x_t * 0.5 + zeros.mean(Kind::Float))
    }
}

#[test]
fn all_zero_negative_conditions_go_to_the_zero_condition_forward() {
    let noise = Tensor::ones([1, 2, 2], (Kind::Float, tch::Device::Cpu));
    let cond = Tensor::ones([1, 3], (Kind::Float, tch::Device::Cpu));
    let neg = cond.zeros_like();
    let control = run_control_none();
    for formula in [GuidanceFormula::Trellis, GuidanceFormula::ReconViaGen] {
        let config = interval_sampler(formula, 3.0);
        let run = |negative: Negative<'_, Tensor>| {
            let model = CountingWithZeros {
                inner: counting(),
                zero_calls: Cell::new(0),
            };
            let out = config
                .sample(
                    &model,
                    &noise,
                    Conditioning::Single(&cond),
                    Some(negative),
                    &SampleOptions::new(Stage::SparseStructure, &control),
                )
                .unwrap();
            (out.samples, model)
        };
        let (given, given_model) = run(Negative::Tokens(&neg));
        let (zeros, zeros_model) = run(Negative::Zeros(&neg));
        // Steps 0 and 1 are guided: one negative call each, through the forward the variant
        // names; the conditional calls are the same.
        assert_eq!(given_model.inner.negatives.get(), 2, "{formula:?}");
        assert_eq!(given_model.zero_calls.get(), 0, "{formula:?}");
        assert_eq!(zeros_model.inner.negatives.get(), 0, "{formula:?}");
        assert_eq!(zeros_model.zero_calls.get(), 2, "{formula:?}");
        assert_eq!(zeros_model.inner.calls.get(), 4, "{formula:?}");
        assert!(given.equal(&zeros), "{formula:?}");
    }
}

/// [`CountingWithZeros`] answering both guided velocities at once, counting those calls.
struct CountingPairs {
    inner: CountingWithZeros,
    pair_calls: Cell<usize>,
}

impl FlowModel<Tensor> for CountingPairs {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        self.inner.predict(x_t, t, cond)
    }

    fn predict_zeros(&self, x_t: &Tensor, t: &Tensor, zeros: &Tensor) -> Result<Tensor> {
        self.inner.predict_zeros(x_t, t, zeros)
    }

    fn predict_with_zeros(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        zeros: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.pair_calls.set(self.pair_calls.get() + 1);
        Ok((
            self.inner.predict(x_t, t, cond)?,
            self.inner.predict_zeros(x_t, t, zeros)?,
        ))
    }
}

/// A guided step with all-zero negative tokens and one conditional call asks the model for
/// both velocities at once (single condition, or stochastic views); multidiffusion's mean over
/// views and given negative tokens keep the separate calls. The samples are the same.
#[test]
fn guided_steps_under_zero_negatives_ask_for_both_velocities_at_once() {
    let noise = Tensor::ones([1, 2, 2], (Kind::Float, tch::Device::Cpu));
    let views = [
        Tensor::ones([1, 3], (Kind::Float, tch::Device::Cpu)),
        Tensor::full([1, 3], 2.0, (Kind::Float, tch::Device::Cpu)),
    ];
    let neg = views[0].zeros_like();
    let control = run_control_none();
    let options = SampleOptions::new(Stage::StructuredLatent, &control);
    let conditionings = [
        (Conditioning::Single(&views[0]), 2),
        (
            Conditioning::Views {
                views: &views,
                mode: MultiImageMode::Stochastic,
            },
            2,
        ),
        (
            Conditioning::Views {
                views: &views,
                mode: MultiImageMode::Multidiffusion,
            },
            0,
        ),
    ];
    for formula in [GuidanceFormula::Trellis, GuidanceFormula::ReconViaGen] {
        let config = interval_sampler(formula, 3.0);
        for (cond, pairs) in conditionings {
            for (negative, expected_pairs) in
                [(Negative::Zeros(&neg), pairs), (Negative::Tokens(&neg), 0)]
            {
                let model = CountingPairs {
                    inner: CountingWithZeros {
                        inner: counting(),
                        zero_calls: Cell::new(0),
                    },
                    pair_calls: Cell::new(0),
                };
                let paired = config
                    .sample(&model, &noise, cond, Some(negative), &options)
                    .unwrap()
                    .samples;
                let separate = config
                    .sample(&model.inner, &noise, cond, Some(negative), &options)
                    .unwrap()
                    .samples;
                assert_eq!(
                    model.pair_calls.get(),
                    expected_pairs,
                    "{formula:?} {cond:?} {negative:?}"
                );
                assert!(paired.equal(&separate), "{formula:?} {cond:?}");
            }
        }
    }
}

fn interval_sampler(formula: GuidanceFormula, strength: f64) -> SamplerConfig {
    let mut config = SamplerConfig::new(SamplerKind::FlowEulerGuidanceInterval, formula, 1e-5);
    config.steps = 4;
    config.rescale_t = 3.0;
    config.cfg_strength = strength;
    // Grid 1, 0.9, 0.75, 0.5, 0: steps 0 and 1 are guided.
    config.cfg_interval = [0.8, 1.0];
    config
}

#[test]
fn progress_is_reported_once_per_step_and_cancels_between_steps() {
    let config = interval_sampler(GuidanceFormula::Trellis, 3.0);
    let model = counting();
    let noise = Tensor::ones([1, 2, 2], (Kind::Float, tch::Device::Cpu));
    let cond = Tensor::ones([1, 3], (Kind::Float, tch::Device::Cpu));
    let neg = cond.zeros_like();
    let reports = RefCell::new(Vec::new());
    let progress = |stage: Stage, step: usize, total: usize| {
        reports.borrow_mut().push((stage, step, total));
        step < 2 // cancel once step 2 is done
    };
    let control = RunControl {
        cancel: None,
        progress: Some(&progress),
    };
    let err = config
        .sample(
            &model,
            &noise,
            Conditioning::Single(&cond),
            Some(Negative::Tokens(&neg)),
            &SampleOptions::new(Stage::StructuredLatent, &control),
        )
        .err()
        .expect("the callback cancels");
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(
        *reports.borrow(),
        vec![
            (Stage::StructuredLatent, 1, 4),
            (Stage::StructuredLatent, 2, 4)
        ]
    );
    // Steps 0 and 1 are guided: two calls each; nothing ran after the cancel.
    assert_eq!(model.calls.get(), 4);

    let flag = AtomicBool::new(true);
    let control = RunControl {
        cancel: Some(&flag),
        progress: None,
    };
    let model = counting();
    let err = config
        .sample(
            &model,
            &noise,
            Conditioning::Single(&cond),
            Some(Negative::Tokens(&neg)),
            &SampleOptions::new(Stage::SparseStructure, &control),
        )
        .err()
        .expect("the flag cancels");
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(model.calls.get(), 0);
}

#[test]
fn reconviagen_weights_one_and_zero_make_a_single_call() {
    let noise = Tensor::ones([1, 2, 2], (Kind::Float, tch::Device::Cpu));
    let cond = Tensor::ones([1, 3], (Kind::Float, tch::Device::Cpu));
    let neg = cond.zeros_like();
    let control = run_control_none();
    for (w, negatives) in [(1.0, 0), (0.0, 2)] {
        let config = interval_sampler(GuidanceFormula::ReconViaGen, w);
        let model = counting();
        config
            .sample(
                &model,
                &noise,
                Conditioning::Single(&cond),
                Some(Negative::Tokens(&neg)),
                &SampleOptions::new(Stage::SparseStructure, &control),
            )
            .unwrap();
        // 4 steps, one call each; with w = 0 the two guided steps call only the negative.
        assert_eq!(model.calls.get(), 4, "w = {w}");
        assert_eq!(model.negatives.get(), negatives, "w = {w}");
    }
}

#[test]
fn guided_samplers_require_a_negative_condition() {
    let config = interval_sampler(GuidanceFormula::Trellis, 3.0);
    let noise = Tensor::ones([1, 2], (Kind::Float, tch::Device::Cpu));
    let cond = Tensor::ones([1, 3], (Kind::Float, tch::Device::Cpu));
    let control = run_control_none();
    let err = config
        .sample(
            &counting(),
            &noise,
            Conditioning::Single(&cond),
            None,
            &SampleOptions::new(Stage::SparseStructure, &control),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("neg_cond"), "{err}");
    let err = config
        .sample(
            &counting(),
            &noise,
            Conditioning::Views {
                views: &[],
                mode: MultiImageMode::Stochastic,
            },
            Some(Negative::Tokens(&cond)),
            &SampleOptions::new(Stage::SparseStructure, &control),
        )
        .err()
        .unwrap();
    assert!(err.message().contains("no views"), "{err}");
}
