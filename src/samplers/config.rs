//! A sampler as pipeline.json describes it (`{name, args, params}`), parsed strictly, with the
//! per-run overrides of [`SamplerOverrides`] applied on top (the reference merges
//! `{**pipeline_params, **user_params}`).

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::hub;
use crate::pipeline::SamplerOverrides;

/// Which reference sampler class runs (pipeline.json's `name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// `FlowEulerSampler`: the conditional velocity only.
    FlowEuler,
    /// `FlowEulerCfgSampler`: classifier-free guidance at every step.
    FlowEulerCfg,
    /// `FlowEulerGuidanceIntervalSampler`: guidance only while `cfg_interval[0] <= t <=
    /// cfg_interval[1]` (both ends inclusive, on the float64 `t` of the step start).
    FlowEulerGuidanceInterval,
}

impl SamplerKind {
    /// The reference class name.
    pub fn name(self) -> &'static str {
        match self {
            Self::FlowEuler => "FlowEulerSampler",
            Self::FlowEulerCfg => "FlowEulerCfgSampler",
            Self::FlowEulerGuidanceInterval => "FlowEulerGuidanceIntervalSampler",
        }
    }

    fn from_name(name: &str) -> Result<Self> {
        [
            Self::FlowEuler,
            Self::FlowEulerCfg,
            Self::FlowEulerGuidanceInterval,
        ]
        .into_iter()
        .find(|kind| kind.name() == name)
        .ok_or_else(|| {
            Error::format(format!(
                "unknown sampler '{name}' (known: FlowEulerSampler, FlowEulerCfgSampler, \
                 FlowEulerGuidanceIntervalSampler)"
            ))
        })
    }

    /// Whether this sampler ever calls the model with the negative condition.
    pub fn uses_guidance(self) -> bool {
        self != Self::FlowEuler
    }
}

/// How a guided step combines the conditional and negative velocities. The sampler names are
/// the same in both code bases; the formula depends on which code runs the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidanceFormula {
    /// TRELLIS (and ReconViaGen's Hugging Face Space): `(1 + s)·v_cond − s·v_neg`, two model
    /// calls whatever `s` is.
    Trellis,
    /// ReconViaGen GAP-LAB v0.2: `w·v_cond + (1 − w)·v_neg` (so `w = s + 1` of the TRELLIS
    /// formula), one call only when `w` is 1 (cond) or 0 (neg), then, when `guidance_rescale`
    /// φ > 0, the predicted x0 is pulled towards the conditional prediction's per-sample std.
    ReconViaGen,
}

/// The reference's `sample()` defaults, used where pipeline.json leaves a parameter out.
const DEFAULT_STEPS: usize = 50;
const DEFAULT_RESCALE_T: f64 = 1.0;
const DEFAULT_CFG_STRENGTH: f64 = 3.0;
const DEFAULT_CFG_INTERVAL: [f64; 2] = [0.0, 1.0];
/// ReconViaGen's default: no rescale.
const DEFAULT_GUIDANCE_RESCALE: f64 = 0.0;

/// Most sampler steps accepted; a guard against absurd values, far above the reference's 12–50.
pub const MAX_STEPS: usize = 10_000;

/// A fully resolved sampler: class, constructor args and call params.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    pub guidance: GuidanceFormula,
    /// `args.sigma_min`: the noise scale left at t = 0 (1e-5 in the published pipelines).
    pub sigma_min: f64,
    pub steps: usize,
    /// Warps the time grid towards t = 1 (`t ← r·t / (1 + (r − 1)·t)`).
    pub rescale_t: f64,
    /// `s` of the guidance formula (unused by [`SamplerKind::FlowEuler`]).
    pub cfg_strength: f64,
    /// `[lo, hi]`, used by [`SamplerKind::FlowEulerGuidanceInterval`] only.
    pub cfg_interval: [f64; 2],
    /// φ of [`GuidanceFormula::ReconViaGen`]; always 0 for [`GuidanceFormula::Trellis`].
    pub guidance_rescale: f64,
}

impl SamplerConfig {
    /// The reference defaults of `kind` (what `sample()` uses for parameters not given).
    pub fn new(kind: SamplerKind, guidance: GuidanceFormula, sigma_min: f64) -> Self {
        Self {
            kind,
            guidance,
            sigma_min,
            steps: DEFAULT_STEPS,
            rescale_t: DEFAULT_RESCALE_T,
            cfg_strength: DEFAULT_CFG_STRENGTH,
            cfg_interval: DEFAULT_CFG_INTERVAL,
            guidance_rescale: DEFAULT_GUIDANCE_RESCALE,
        }
    }

    /// Builds the sampler of a pipeline.json entry. Unknown sampler names, args and params are
    /// Format errors that name them; so are values of the wrong type or out of range.
    pub fn from_pipeline(entry: &hub::SamplerConfig, guidance: GuidanceFormula) -> Result<Self> {
        let kind = SamplerKind::from_name(&entry.name)?;
        let what = kind.name();
        let args = object(&entry.args, what, "args")?;
        reject_unknown(args, &["sigma_min"], what, "args")?;
        let sigma_min = number(args, "sigma_min", what, "args")?
            .ok_or_else(|| Error::format(format!("sampler {what}: `args.sigma_min` is missing")))?;
        let mut config = Self::new(kind, guidance, sigma_min);

        let params = object(&entry.params, what, "params")?;
        reject_unknown(params, &config.known_params(), what, "params")?;
        if let Some(steps) = params.get("steps") {
            config.steps = steps
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    Error::format(format!(
                        "sampler {what}: `params.steps` must be a non-negative integer, found {steps}"
                    ))
                })?;
        }
        if let Some(r) = number(params, "rescale_t", what, "params")? {
            config.rescale_t = r;
        }
        if let Some(s) = number(params, "cfg_strength", what, "params")? {
            config.cfg_strength = s;
        }
        if let Some(interval) = params.get("cfg_interval") {
            config.cfg_interval = pair(interval).ok_or_else(|| {
                Error::format(format!(
                    "sampler {what}: `params.cfg_interval` must be two numbers [lo, hi], found {interval}"
                ))
            })?;
        }
        if let Some(phi) = number(params, "guidance_rescale", what, "params")? {
            config.guidance_rescale = phi;
        }
        config
            .validate()
            .map_err(|e| Error::format(e.message().to_string()))?;
        Ok(config)
    }

    /// The params pipeline.json may give this sampler (`verbose` is accepted and ignored).
    fn known_params(&self) -> Vec<&'static str> {
        let mut known = vec!["steps", "rescale_t", "verbose"];
        match self.kind {
            SamplerKind::FlowEuler => {}
            SamplerKind::FlowEulerCfg => known.push("cfg_strength"),
            SamplerKind::FlowEulerGuidanceInterval => {
                known.extend(["cfg_strength", "cfg_interval"]);
            }
        }
        if self.kind.uses_guidance() && self.guidance == GuidanceFormula::ReconViaGen {
            known.push("guidance_rescale");
        }
        known
    }

    /// This sampler with a run's overrides applied (None keeps the configured value).
    pub fn with_overrides(mut self, overrides: &SamplerOverrides) -> Result<Self> {
        if let Some(steps) = overrides.steps {
            self.steps = steps as usize;
        }
        if let Some(strength) = overrides.cfg_strength {
            if !self.kind.uses_guidance() {
                return Err(Error::invalid_argument(format!(
                    "cfg_strength {strength} given, but {} has no classifier-free guidance",
                    self.kind.name()
                )));
            }
            self.cfg_strength = f64::from(strength);
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks every value is one the reference can run meaningfully (InvalidArgument).
    pub fn validate(&self) -> Result<()> {
        let what = self.kind.name();
        let bad = |text: String| Err(Error::invalid_argument(format!("sampler {what}: {text}")));
        if self.steps == 0 || self.steps > MAX_STEPS {
            return bad(format!("steps must be 1..={MAX_STEPS}, got {}", self.steps));
        }
        if !(self.sigma_min.is_finite() && (0.0..1.0).contains(&self.sigma_min)) {
            return bad(format!(
                "sigma_min must be in [0, 1), got {}",
                self.sigma_min
            ));
        }
        if !(self.rescale_t.is_finite() && self.rescale_t > 0.0) {
            return bad(format!(
                "rescale_t must be a positive number, got {}",
                self.rescale_t
            ));
        }
        if !self.cfg_strength.is_finite() {
            return bad(format!(
                "cfg_strength must be finite, got {}",
                self.cfg_strength
            ));
        }
        let [lo, hi] = self.cfg_interval;
        if !(lo.is_finite() && hi.is_finite()) {
            return bad(format!("cfg_interval must be finite, got [{lo}, {hi}]"));
        }
        if !(self.guidance_rescale.is_finite() && (0.0..=1.0).contains(&self.guidance_rescale)) {
            return bad(format!(
                "guidance_rescale must be in [0, 1], got {}",
                self.guidance_rescale
            ));
        }
        if self.guidance == GuidanceFormula::Trellis && self.guidance_rescale != 0.0 {
            return bad("guidance_rescale needs ReconViaGen's guidance formula".to_string());
        }
        Ok(())
    }

    /// The reference's time grid: `linspace(1, 0, steps + 1)` in float64 (numpy's arithmetic:
    /// `i·(−1/steps) + 1`, the last point exactly 0), then `r·t / (1 + (r − 1)·t)`. Step `i`
    /// goes from `t[i]` to `t[i + 1]`. Bit-exact, since the guidance interval test compares it.
    pub fn time_grid(&self) -> Vec<f64> {
        time_grid(self.steps, self.rescale_t)
    }

    /// The guidance strength of the step starting at `t`, or None for a conditional-only step.
    pub(crate) fn strength_at(&self, t: f64) -> Option<f64> {
        let [lo, hi] = self.cfg_interval;
        match self.kind {
            SamplerKind::FlowEuler => None,
            SamplerKind::FlowEulerCfg => Some(self.cfg_strength),
            SamplerKind::FlowEulerGuidanceInterval if lo <= t && t <= hi => Some(self.cfg_strength),
            SamplerKind::FlowEulerGuidanceInterval => None,
        }
    }
}

/// See [`SamplerConfig::time_grid`].
pub fn time_grid(steps: usize, rescale_t: f64) -> Vec<f64> {
    let step = -1.0 / steps as f64;
    (0..=steps)
        .map(|i| {
            if i == steps {
                0.0
            } else {
                i as f64 * step + 1.0
            }
        })
        .map(|t| rescale_t * t / (1.0 + (rescale_t - 1.0) * t))
        .collect()
}

fn object<'a>(value: &'a Value, sampler: &str, field: &str) -> Result<&'a Map<String, Value>> {
    value.as_object().ok_or_else(|| {
        Error::format(format!(
            "sampler {sampler}: `{field}` must be an object, found {value}"
        ))
    })
}

fn reject_unknown(
    map: &Map<String, Value>,
    known: &[&str],
    sampler: &str,
    field: &str,
) -> Result<()> {
    let unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|key| !known.contains(key))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::format(format!(
        "sampler {sampler}: unknown {field} {} (known: {})",
        unknown.join(", "),
        known.join(", ")
    )))
}

/// A number field (None when absent); a present non-number is a Format error.
fn number(map: &Map<String, Value>, key: &str, sampler: &str, field: &str) -> Result<Option<f64>> {
    match map.get(key) {
        None => Ok(None),
        Some(value) => value.as_f64().map(Some).ok_or_else(|| {
            Error::format(format!(
                "sampler {sampler}: `{field}.{key}` must be a number, found {value}"
            ))
        }),
    }
}

fn pair(value: &Value) -> Option<[f64; 2]> {
    match value.as_array()?.as_slice() {
        [lo, hi] => Some([lo.as_f64()?, hi.as_f64()?]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    fn entry(name: &str, args: Value, params: Value) -> hub::SamplerConfig {
        hub::SamplerConfig {
            name: name.to_string(),
            args,
            params,
        }
    }

    #[test]
    fn published_trellis_entry() {
        let config = SamplerConfig::from_pipeline(
            &entry(
                "FlowEulerGuidanceIntervalSampler",
                json!({"sigma_min": 1e-5}),
                json!({"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}),
            ),
            GuidanceFormula::Trellis,
        )
        .unwrap();
        assert_eq!(config.kind, SamplerKind::FlowEulerGuidanceInterval);
        assert_eq!(config.steps, 25);
        assert_eq!(config.cfg_interval, [0.5, 1.0]);
        // research/trellis.md §2: CFG on the first 19 of 25 steps.
        let t = config.time_grid();
        let guided = (0..25)
            .filter(|&i| config.strength_at(t[i]).is_some())
            .count();
        assert_eq!(guided, 19);
        assert_eq!(t[0], 1.0);
        assert_eq!(t[25], 0.0);
        assert!((t[18] - 0.5385).abs() < 1e-4 && (t[19] - 0.4865).abs() < 1e-4);
    }

    #[test]
    fn defaults_are_the_reference_defaults() {
        let config = SamplerConfig::from_pipeline(
            &entry("FlowEulerCfgSampler", json!({"sigma_min": 0}), json!({})),
            GuidanceFormula::Trellis,
        )
        .unwrap();
        assert_eq!(
            (config.steps, config.rescale_t, config.cfg_strength),
            (50, 1.0, 3.0)
        );
    }

    #[test]
    fn unknown_names_args_and_params_are_format_errors() {
        let cases = [
            (
                entry("FlowHeunSampler", json!({"sigma_min": 1e-5}), json!({})),
                "unknown sampler 'FlowHeunSampler'",
            ),
            (
                entry(
                    "FlowEulerSampler",
                    json!({"sigma_min": 1e-5, "eta": 1}),
                    json!({}),
                ),
                "unknown args eta",
            ),
            (
                entry(
                    "FlowEulerSampler",
                    json!({"sigma_min": 1e-5}),
                    json!({"cfg_strength": 3}),
                ),
                "unknown params cfg_strength",
            ),
            (
                entry(
                    "FlowEulerGuidanceIntervalSampler",
                    json!({"sigma_min": 1e-5}),
                    json!({"guidance_rescale": 0.7}),
                ),
                "unknown params guidance_rescale",
            ),
            (
                entry("FlowEulerSampler", json!({}), json!({})),
                "`args.sigma_min` is missing",
            ),
            (
                entry(
                    "FlowEulerSampler",
                    json!({"sigma_min": 1e-5}),
                    json!({"steps": 2.5}),
                ),
                "`params.steps` must be a non-negative integer",
            ),
            (
                entry(
                    "FlowEulerGuidanceIntervalSampler",
                    json!({"sigma_min": 1e-5}),
                    json!({"cfg_interval": [0.5]}),
                ),
                "`params.cfg_interval` must be two numbers",
            ),
            (
                entry(
                    "FlowEulerSampler",
                    json!({"sigma_min": 1e-5}),
                    json!({"steps": 0}),
                ),
                "steps must be 1..=",
            ),
            (
                entry(
                    "FlowEulerSampler",
                    json!({"sigma_min": 1e-5}),
                    json!({"rescale_t": -1}),
                ),
                "rescale_t must be a positive number",
            ),
        ];
        for (entry, needle) in cases {
            let err = SamplerConfig::from_pipeline(&entry, GuidanceFormula::Trellis).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Format, "{err}");
            assert!(err.message().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn reconviagen_entry_takes_guidance_rescale() {
        let config = SamplerConfig::from_pipeline(
            &entry(
                "FlowEulerGuidanceIntervalSampler",
                json!({"sigma_min": 1e-5}),
                json!({"steps": 30, "cfg_strength": 7.5, "cfg_interval": [0.6, 1.0],
                       "rescale_t": 5.0, "guidance_rescale": 0.7}),
            ),
            GuidanceFormula::ReconViaGen,
        )
        .unwrap();
        assert_eq!(config.guidance_rescale, 0.7);
    }

    #[test]
    fn overrides_replace_steps_and_strength() {
        let base = SamplerConfig::new(SamplerKind::FlowEulerCfg, GuidanceFormula::Trellis, 1e-5);
        let run = base
            .clone()
            .with_overrides(&SamplerOverrides {
                steps: Some(12),
                cfg_strength: Some(5.0),
            })
            .unwrap();
        assert_eq!((run.steps, run.cfg_strength), (12, 5.0));
        let kept = base
            .clone()
            .with_overrides(&SamplerOverrides::default())
            .unwrap();
        assert_eq!(kept, base);
        let plain = SamplerConfig::new(SamplerKind::FlowEuler, GuidanceFormula::Trellis, 1e-5);
        let err = plain
            .with_overrides(&SamplerOverrides {
                steps: None,
                cfg_strength: Some(3.0),
            })
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("FlowEulerSampler"), "{err}");
    }
}
