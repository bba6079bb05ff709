//! The σ-space samplers (Euler, Euler ancestral, Heun, LMS) and their options resolved against a
//! scheduler config: the config's keys the class has, the caller's overrides ([`SigmaKeys`],
//! and the keys shared with the multistep solvers in [`SolverKeys`]), the class defaults; an
//! option a sampler lacks is refused by name.

use anyhow::{bail, ensure, Result};
use serde_json::{json, Map, Value};

use super::config::{PredictionType, SchedulerConfig};
use super::sigma_keys::SigmaKeys;
use super::solver_options::{FinalSigmas, SolverKeys};

/// Which σ-space sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigmaSampler {
    Euler,
    EulerAncestral,
    Heun,
    Lms,
}

impl SigmaSampler {
    pub const ALL: [Self; 4] = [Self::Euler, Self::EulerAncestral, Self::Heun, Self::Lms];

    /// diffusers' class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Euler => "EulerDiscreteScheduler",
            Self::EulerAncestral => "EulerAncestralDiscreteScheduler",
            Self::Heun => "HeunDiscreteScheduler",
            Self::Lms => "LMSDiscreteScheduler",
        }
    }

    /// The sampler a diffusers `_class_name` names, if it is one of these.
    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.class_name() == name)
    }

    /// The command line's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-ancestral",
            Self::Heun => "heun",
            Self::Lms => "lms",
        }
    }

    /// Whether the class has karras / exponential / beta σ schedules.
    pub fn has_sigma_schedules(self) -> bool {
        self != Self::EulerAncestral
    }
}

/// Which σ values the grid is replaced with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigmaSchedule {
    /// σ interpolated at the grid's timesteps.
    Grid,
    Karras,
    Exponential,
    Beta,
}

impl SigmaSchedule {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grid => "grid",
            Self::Karras => "karras",
            Self::Exponential => "exponential",
            Self::Beta => "beta",
        }
    }
}

/// The resolved options of one σ-space run.
#[derive(Clone, Debug, PartialEq)]
pub struct SigmaOptions {
    pub sampler: SigmaSampler,
    pub schedule: SigmaSchedule,
    /// Euler's interpolation_type log_linear.
    pub log_linear: bool,
    /// Euler's final_sigmas_type sigma_min (σ at t = 0 after the last step, not 0).
    pub final_sigma_min: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Euler's timestep_type continuous (used with v_prediction only).
    pub continuous: bool,
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
    /// Heun's clip_sample: the range x0 is clamped to.
    pub clip: Option<f64>,
}

impl SigmaOptions {
    /// Resolves the options of `sampler`: the config's keys (those its class has, as
    /// `from_config` reads them), then the caller's overrides (`solver`: the keys shared with the
    /// multistep solvers; `sigma`: the others), then the class defaults. Options the sampler does
    /// not have are refused by name.
    pub fn resolve(
        sampler: SigmaSampler,
        cfg: &SchedulerConfig,
        solver: &SolverKeys,
        sigma: &SigmaKeys,
    ) -> Result<Self> {
        let name = sampler.as_str();
        let shared_ok = ["use_karras_sigmas", "final_sigmas_type"];
        if let Some((key, _)) = solver
            .given()
            .into_iter()
            .find(|(k, _)| !shared_ok.contains(k))
        {
            bail!("`{key}` is an option of the multistep solvers (dpm-solver++, unipc), not of {name}");
        }
        let euler = sampler == SigmaSampler::Euler;
        let only_euler = [
            ("final_sigmas_type", solver.final_sigmas_type.is_some()),
            ("interpolation_type", sigma.interpolation_type.is_some()),
            ("sigma_min", sigma.sigma_min.is_some()),
            ("sigma_max", sigma.sigma_max.is_some()),
            ("timestep_type", sigma.timestep_type.is_some()),
            ("s_churn", sigma.s_churn.is_some()),
            ("s_tmin", sigma.s_tmin.is_some()),
            ("s_tmax", sigma.s_tmax.is_some()),
            ("s_noise", sigma.s_noise.is_some()),
        ];
        if let Some((key, _)) = only_euler.iter().find(|(_, given)| *given && !euler) {
            bail!("`{key}` is an option of euler only, not of {name}");
        }
        let schedules = [
            ("use_karras_sigmas", solver.use_karras_sigmas.is_some()),
            (
                "use_exponential_sigmas",
                sigma.use_exponential_sigmas.is_some(),
            ),
            ("use_beta_sigmas", sigma.use_beta_sigmas.is_some()),
        ];
        if let Some((key, _)) = schedules
            .iter()
            .find(|(_, given)| *given && !sampler.has_sigma_schedules())
        {
            bail!("`{key}` is not an option of {name} (EulerAncestralDiscreteScheduler has none)");
        }
        let file = &cfg.sigma_keys;
        let has = sampler.has_sigma_schedules();
        let pick =
            |over: Option<bool>, config: Option<bool>| has && over.or(config).unwrap_or(false);
        let karras = pick(solver.use_karras_sigmas, cfg.solver_keys.use_karras_sigmas);
        let exponential = pick(sigma.use_exponential_sigmas, file.use_exponential_sigmas);
        let beta = pick(sigma.use_beta_sigmas, file.use_beta_sigmas);
        ensure!(
            [karras, exponential, beta].iter().filter(|&&b| b).count() <= 1,
            "only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas may be \
             true (diffusers refuses more)"
        );
        let schedule = if karras {
            SigmaSchedule::Karras
        } else if exponential {
            SigmaSchedule::Exponential
        } else if beta {
            SigmaSchedule::Beta
        } else {
            SigmaSchedule::Grid
        };
        let euler_key = |over: Option<String>, config: Option<String>| {
            if euler {
                over.or(config)
            } else {
                None
            }
        };
        let log_linear = match euler_key(
            sigma.interpolation_type.clone(),
            file.interpolation_type.clone(),
        )
        .as_deref()
        {
            None | Some("linear") => false,
            Some("log_linear") => true,
            Some(other) => {
                bail!("`interpolation_type`: unknown value {other:?}; allowed: linear, log_linear")
            }
        };
        let final_sigma_min = match euler_key(
            solver.final_sigmas_type.clone(),
            cfg.solver_keys.final_sigmas_type.clone(),
        ) {
            None => false,
            Some(f) => FinalSigmas::parse("final_sigmas_type", &f)? == FinalSigmas::SigmaMin,
        };
        let continuous =
            match euler_key(sigma.timestep_type.clone(), file.timestep_type.clone()).as_deref() {
                None | Some("discrete") => false,
                Some("continuous") => true,
                Some(other) => {
                    bail!("`timestep_type`: unknown value {other:?}; allowed: discrete, continuous")
                }
            };
        let range = |over: Option<f64>, config: Option<f64>| -> Result<Option<f64>> {
            let v = if euler { over.or(config) } else { None };
            if let Some(s) = v {
                ensure!(
                    s > 0.0 && s.is_finite(),
                    "sigma_min and sigma_max must be > 0, got {s}"
                );
            }
            Ok(v)
        };
        let sigma_min = range(sigma.sigma_min, file.sigma_min)?;
        let sigma_max = range(sigma.sigma_max, file.sigma_max)?;
        let s_churn = sigma.s_churn.unwrap_or(0.0);
        let s_noise = sigma.s_noise.unwrap_or(1.0);
        let s_tmin = sigma.s_tmin.unwrap_or(0.0);
        let s_tmax = sigma.s_tmax.unwrap_or(f64::INFINITY);
        ensure!(
            s_churn >= 0.0 && s_churn.is_finite(),
            "`s_churn` must be a finite number ≥ 0, got {s_churn}"
        );
        ensure!(
            s_noise.is_finite(),
            "`s_noise` must be finite, got {s_noise}"
        );
        ensure!(
            !s_tmin.is_nan() && !s_tmax.is_nan(),
            "`s_tmin` and `s_tmax` must be numbers"
        );
        if sampler == SigmaSampler::EulerAncestral {
            ensure!(
                cfg.prediction_type != PredictionType::Sample,
                "euler-ancestral does not support prediction_type sample (diffusers raises \
                 NotImplementedError); use epsilon or v_prediction"
            );
        }
        let clip = (sampler == SigmaSampler::Heun && file.clip_sample.unwrap_or(false))
            .then_some(cfg.clip_sample_range);
        Ok(Self {
            sampler,
            schedule,
            log_linear,
            final_sigma_min,
            sigma_min,
            sigma_max,
            continuous,
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
            clip,
        })
    }

    /// The options as a JSON object in diffusers' key names (only those of this class).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("_class_name".into(), json!(self.sampler.class_name()));
        if self.sampler.has_sigma_schedules() {
            m.insert(
                "use_karras_sigmas".into(),
                json!(self.schedule == SigmaSchedule::Karras),
            );
            m.insert(
                "use_exponential_sigmas".into(),
                json!(self.schedule == SigmaSchedule::Exponential),
            );
            m.insert(
                "use_beta_sigmas".into(),
                json!(self.schedule == SigmaSchedule::Beta),
            );
        }
        match self.sampler {
            SigmaSampler::Euler => {
                let linear = if self.log_linear {
                    "log_linear"
                } else {
                    "linear"
                };
                m.insert("interpolation_type".into(), json!(linear));
                let last = if self.final_sigma_min {
                    "sigma_min"
                } else {
                    "zero"
                };
                m.insert("final_sigmas_type".into(), json!(last));
                m.insert("sigma_min".into(), json!(self.sigma_min));
                m.insert("sigma_max".into(), json!(self.sigma_max));
                let t = if self.continuous {
                    "continuous"
                } else {
                    "discrete"
                };
                m.insert("timestep_type".into(), json!(t));
                m.insert("s_churn".into(), json!(self.s_churn));
                m.insert("s_tmin".into(), json!(self.s_tmin));
                m.insert(
                    "s_tmax".into(),
                    if self.s_tmax.is_finite() {
                        json!(self.s_tmax)
                    } else {
                        json!(self.s_tmax.to_string())
                    },
                );
                m.insert("s_noise".into(), json!(self.s_noise));
            }
            SigmaSampler::Heun => {
                m.insert("clip_sample".into(), json!(self.clip.is_some()));
            }
            _ => {}
        }
        Value::Object(m)
    }
}

/// The config a σ sampler reads: `cfg` with the class defaults where the config leaves a key out
/// (Heun's betas 0.00085…0.012) and without the keys the class lacks (zero-SNR rescaling exists
/// for Euler and Euler ancestral only).
pub(crate) fn class_config(sampler: SigmaSampler, cfg: &SchedulerConfig) -> SchedulerConfig {
    let mut c = cfg.clone();
    if sampler == SigmaSampler::Heun {
        c.beta_start = cfg.sigma_keys.beta_start.unwrap_or(0.00085);
        c.beta_end = cfg.sigma_keys.beta_end.unwrap_or(0.012);
    }
    if matches!(sampler, SigmaSampler::Heun | SigmaSampler::Lms) {
        c.rescale_betas_zero_snr = false;
    }
    c
}
