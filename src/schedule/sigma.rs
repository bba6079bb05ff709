//! The σ-space samplers as diffusers runs them: `EulerDiscreteScheduler`,
//! `EulerAncestralDiscreteScheduler`, `HeunDiscreteScheduler` and `LMSDiscreteScheduler`.
//!
//! Their state is `x = x0 + σ·ε`; the model sees `x / sqrt(σ² + 1)` at a timestep that may be
//! fractional (an f32). Every update is linear in the sample, the model output, the noise and the
//! derivatives `d = (x − x0)/σ` of earlier evaluations, except Heun's optional clamp of x0, which
//! is elementwise. So each model evaluation becomes one [`SigmaStep`] row, computed in f64 from
//! diffusers' f32 σ values:
//!
//! ```text
//! x'  = x + churn·z                     Euler's churn (z drawn only where churn > 0)
//! x0  = x0_sample·x' + x0_model·m       (then clamped to ±clip: Heun's clip_sample)
//! d   = (x' − x0) / deriv_sigma         this evaluation's derivative D_0
//! x'' = base + Σ_a derivs[a]·D_a + noise·z
//!       base = x', or the sample Heun saved at its first-order evaluation (from_saved)
//! ```
//!
//! `D_a` is the derivative `a` evaluations ago (LMS keeps four, Heun two). The CPU reference
//! ([`sigma_step`]) and the GPU kernel (`gpu::kernels::sigma_step`) apply the same rows.

use anyhow::{bail, ensure, Result};
use serde_json::{json, Map, Value};

use super::beta_ppf::beta_ppf;
use super::betas::{torch_linspace_f32, NoiseSchedule};
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::ddim::StepOutput;
use super::multistep::solver_spacing;
use super::predict::check_shapes;
use super::sigma_keys::SigmaKeys;
use super::solver_options::{FinalSigmas, SolverKeys};
use super::timesteps::np_arange_down_to_zero;

/// Derivatives one evaluation may combine (LMS of order 4: this one and three before).
pub const SIGMA_HISTORY: usize = 4;

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
    fn has_sigma_schedules(self) -> bool {
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
fn class_config(sampler: SigmaSampler, cfg: &SchedulerConfig) -> SchedulerConfig {
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

/// `((1 − ᾱ)/ᾱ) ** 0.5` in torch f32.
fn sigma_of(a: f32) -> f32 {
    ((1.0 - a) / a).sqrt()
}

/// The σ-table Σ[t] (f32) of a class config, with ᾱ[T−1] = 2⁻²⁴ under zero-SNR rescaling.
fn sigma_table(cfg: &SchedulerConfig) -> Result<Vec<f32>> {
    let sched = NoiseSchedule::new(cfg)?;
    let mut ac: Vec<f32> = sched.alphas_cumprod.iter().map(|&a| a as f32).collect();
    if cfg.rescale_betas_zero_snr {
        *ac.last_mut().expect("T >= 1") = 2f32.powi(-24);
    }
    Ok(ac.into_iter().map(sigma_of).collect())
}

/// `np.interp(x, 0..len, table)` (f64): exact hits return the table value.
fn np_interp(x: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return table[0] as f64;
    }
    if x >= last as f64 {
        return table[last] as f64;
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return table[j] as f64;
    }
    // numpy: slope·(x − xp[j]) + fp[j], the slope divided by xp[j+1] − xp[j] = 1.
    let (lo, hi) = (table[j] as f64, table[j + 1] as f64);
    (hi - lo) * (x - j as f64) + lo
}

/// diffusers' `_sigma_to_t`: the fractional timestep whose log σ, linearly interpolated in the
/// f32 log table, is ln σ. numpy takes the table's logs in f32 with its own (SIMD) log, which is
/// not correctly rounded; here they are the correctly rounded f32 logs, so a t may differ from
/// diffusers' in its last f32 bit.
pub fn sigma_to_t(sigma: f64, log_table: &[f32]) -> f64 {
    let ls = sigma.max(1e-10).ln();
    // argmax of the running count of (ls − L[i] ≥ 0): the first index where it peaks.
    let mut count = 0usize;
    let mut best = (0usize, 0usize);
    for (i, &l) in log_table.iter().enumerate() {
        if ls - l as f64 >= 0.0 {
            count += 1;
        }
        if count > best.1 {
            best = (i, count);
        }
    }
    let low = best.0.min(log_table.len() - 2);
    let (l, h) = (log_table[low], log_table[low + 1]);
    let w = ((l as f64 - ls) / (l - h) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// `np.linspace(0, 1, n)`.
fn unit_ramp(n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![0.0];
    }
    let step = 1.0 / (n - 1) as f64;
    (0..n)
        .map(|i| if i + 1 == n { 1.0 } else { i as f64 * step })
        .collect()
}

/// `np.linspace(start, stop, n)`.
fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i + 1 == n {
                stop
            } else {
                start + i as f64 * step
            }
        })
        .collect()
}

/// The timesteps of `set_timesteps(n)` before any σ schedule replaces them (f32 values).
fn grid_timesteps(cfg: &SchedulerConfig, n: usize) -> Result<Vec<f32>> {
    let t_train = cfg.num_train_timesteps;
    ensure!(n >= 1, "the number of inference steps must be at least 1");
    ensure!(
        n <= t_train,
        "{n} inference steps is more than num_train_timesteps = {t_train}"
    );
    Ok(match solver_spacing(cfg) {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f32> = np_linspace(0.0, (t_train - 1) as f64, n)
                .into_iter()
                .map(|x| x as f32)
                .collect();
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (t_train / n) as f64;
            (0..n)
                .rev()
                .map(|i| (i as f64 * ratio).round_ties_even() as f32 + cfg.steps_offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange_down_to_zero(t_train as f64, t_train as f64 / n as f64)
            .iter()
            .map(|v| v.round_ties_even() as f32 - 1.0)
            .collect(),
        other => bail!(
            "the σ-space samplers support timestep_spacing linspace, leading or trailing, not {other}"
        ),
    })
}

/// What `set_timesteps(n)` leaves in a σ-space scheduler, before Heun duplicates its entries:
/// the timesteps (f32) and the σ values (f32, one more than the timesteps; two more with Euler's
/// log_linear interpolation).
#[derive(Clone, Debug, PartialEq)]
pub struct SigmaGrid {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
}

/// diffusers' `set_timesteps(n)` for `opts` on the schedule of `cfg` (Heun not yet duplicated).
pub fn sigma_grid(cfg: &SchedulerConfig, opts: &SigmaOptions, n: usize) -> Result<SigmaGrid> {
    let cfg = class_config(opts.sampler, cfg);
    let table = sigma_table(&cfg)?;
    let log_table: Vec<f32> = table.iter().map(|&s| (s as f64).ln() as f32).collect();
    let mut ts = grid_timesteps(&cfg, n)?;
    let mut sig: Vec<f64> = if opts.log_linear {
        let (lo, hi) = (table[table.len() - 1], table[0]);
        torch_linspace_f32(
            (lo as f64).ln() as f32 as f64,
            (hi as f64).ln() as f32 as f64,
            n + 1,
        )
        .into_iter()
        .map(|v| v.exp() as f64)
        .collect()
    } else {
        ts.iter().map(|&t| np_interp(t as f64, &table)).collect()
    };
    if opts.schedule != SigmaSchedule::Grid {
        let smin = opts.sigma_min.unwrap_or(sig[sig.len() - 1]);
        let smax = opts.sigma_max.unwrap_or(sig[0]);
        sig = match opts.schedule {
            SigmaSchedule::Karras => {
                let rho = 7.0;
                let (min_inv, max_inv) = (smin.powf(1.0 / rho), smax.powf(1.0 / rho));
                unit_ramp(n)
                    .into_iter()
                    .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
                    .collect()
            }
            SigmaSchedule::Exponential => np_linspace(smax.ln(), smin.ln(), n)
                .into_iter()
                .map(f64::exp)
                .collect(),
            SigmaSchedule::Beta => unit_ramp(n)
                .into_iter()
                .map(|r| Ok(smin + beta_ppf(1.0 - r, 0.6, 0.6)? * (smax - smin)))
                .collect::<Result<_>>()?,
            SigmaSchedule::Grid => unreachable!("handled above"),
        };
        ts = sig
            .iter()
            .map(|&s| sigma_to_t(s, &log_table) as f32)
            .collect();
    }
    let last = if opts.final_sigma_min {
        table[0] as f64
    } else {
        0.0
    };
    sig.push(last);
    let sigmas: Vec<f32> = sig.iter().map(|&s| s as f32).collect();
    if opts.continuous && cfg.prediction_type == PredictionType::VPrediction {
        ts = sigmas[..sigmas.len() - 1]
            .iter()
            .map(|&s| s.ln() * 0.25)
            .collect();
    }
    if let Some((i, s)) = sigmas[..ts.len()]
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        bail!(
            "σ at step {i} is {s}: ᾱ there is 0 or 1, which a σ-space sampler cannot step from; \
             check the betas and sigma_min / sigma_max"
        );
    }
    Ok(SigmaGrid {
        timesteps: ts,
        sigmas,
    })
}

/// One model evaluation of a σ-space run, and the update that follows it.
#[derive(Clone, Debug, PartialEq)]
pub struct SigmaStep {
    /// The model's timestep (diffusers' f32 `timesteps[i]`; may be fractional or negative).
    pub t: f32,
    /// σ of the evaluated level (`sigmas[i]`) and of the level the update goes to.
    pub sigma: f64,
    pub sigma_next: f64,
    /// `sqrt(σ² + 1)` as torch computes it in f32: the model sees x / scale.
    pub scale: f32,
    /// Euler: σ̂ = σ·(γ + 1), the level the churned sample sits at (σ elsewhere).
    pub sigma_hat: f64,
    /// Euler's churn: x' = x + churn·z before the update.
    pub churn: f64,
    /// x0 = x0_sample·x' + x0_model·m.
    pub x0_sample: f64,
    pub x0_model: f64,
    /// d = (x' − x0) / deriv_sigma.
    pub deriv_sigma: f64,
    /// Coefficients on the derivatives by age (0 = this evaluation's).
    pub derivs: [f64; SIGMA_HISTORY],
    /// Euler ancestral: the σ_up·z term.
    pub noise: f64,
    /// Whether this evaluation draws a noise tensor (diffusers' order).
    pub draws: bool,
    /// Heun: the base of the update is the sample saved at the last first-order evaluation.
    pub from_saved: bool,
    /// Heun: keep x' for the corrector that follows.
    pub save_sample: bool,
    /// 1 or 2 for Heun (the corrector is 2); the LMS order; 1 for Euler and Euler ancestral.
    pub order: usize,
}

impl SigmaStep {
    pub fn to_json(&self) -> Value {
        json!({
            "t": self.t,
            "sigma": self.sigma,
            "sigma_next": self.sigma_next,
            "scale_model_input": 1.0 / self.scale as f64,
            "sigma_hat": self.sigma_hat,
            "churn": self.churn,
            "x0": {"sample": self.x0_sample, "model_output": self.x0_model},
            "deriv_sigma": self.deriv_sigma,
            "derivatives": self.derivs,
            "noise": self.noise,
            "draws_noise": self.draws,
            "from_saved": self.from_saved,
            "save_sample": self.save_sample,
            "order": self.order,
        })
    }
}

/// A whole σ-space run: one row per model evaluation, and what every row shares.
#[derive(Clone, Debug, PartialEq)]
pub struct SigmaTable {
    pub options: SigmaOptions,
    pub prediction: PredictionType,
    /// diffusers' `timesteps` and `sigmas` after `set_timesteps` (Heun's duplicated).
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
    /// The standard deviation x_T is scaled to (diffusers' `init_noise_sigma`, f32).
    pub init_noise_sigma: f32,
    pub steps: Vec<SigmaStep>,
    /// Earlier derivatives the update keeps (0, 1 for Heun, 3 for LMS).
    pub history: usize,
}

/// x0 = a·x + b·m at level σ for the prediction type (σ̂ for the epsilon form of Euler's churn).
fn x0_coefs(pred: PredictionType, sigma: f64, sigma_hat: f64) -> (f64, f64) {
    match pred {
        PredictionType::Epsilon => (1.0, -sigma_hat),
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            (1.0 / s2, -sigma / s2.sqrt())
        }
        PredictionType::Sample => (0.0, 1.0),
    }
}

/// The f32 `sqrt(σ² + 1)` of `scale_model_input`.
fn input_scale(sigma: f32) -> f32 {
    (sigma * sigma + 1.0).sqrt()
}

/// The LMS coefficient ∫_{σ_i}^{σ_{i+1}} Π_{k≠j} (τ − σ_{i−k})/(σ_{i−j} − σ_{i−k}) dτ as diffusers
/// gets it: scipy's `quad` returns after one 21-point Gauss–Kronrod pass on this polynomial, and
/// the integrand is evaluated in torch f32 (τ rounded to f32, each factor and the product f32).
pub fn lms_coefficient(sigmas: &[f32], i: usize, order: usize, j: usize) -> f64 {
    // Kronrod abscissae (descending, the centre last) and weights; the Gauss points are the odd
    // indices.
    const XGK: [f64; 11] = [
        0.995_657_163_025_808_1,
        0.973_906_528_517_171_7,
        0.930_157_491_355_708_2,
        0.865_063_366_688_984_5,
        0.780_817_726_586_416_9,
        0.679_409_568_299_024_4,
        0.562_757_134_668_604_7,
        0.433_395_394_129_247_2,
        0.294_392_862_701_460_2,
        0.148_874_338_981_631_2,
        0.0,
    ];
    const WGK: [f64; 11] = [
        0.011_694_638_867_371_874,
        0.032_558_162_307_964_73,
        0.054_755_896_574_352,
        0.075_039_674_810_919_95,
        0.093_125_454_583_697_6,
        0.109_387_158_802_297_64,
        0.123_491_976_262_065_85,
        0.134_709_217_311_473_33,
        0.142_775_938_577_060_08,
        0.147_739_104_901_338_49,
        0.149_445_554_002_916_9,
    ];
    let f = |tau: f64| -> f64 {
        let tau = tau as f32;
        let mut prod = 1.0f32;
        for k in 0..order {
            if k == j {
                continue;
            }
            prod *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k]);
        }
        prod as f64
    };
    let (a, b) = (sigmas[i] as f64, sigmas[i + 1] as f64);
    let centre = 0.5 * (a + b);
    let half = 0.5 * (b - a);
    let mut resk = WGK[10] * f(centre);
    // QUADPACK's order: the Gauss abscissae (odd indices) first, then the Kronrod-only ones.
    for k in (1..10).step_by(2).chain((0..10).step_by(2)) {
        let absc = half * XGK[k];
        resk += WGK[k] * (f(centre - absc) + f(centre + absc));
    }
    resk * half
}

impl SigmaTable {
    /// The rows of `n` steps of `opts` on the schedule of `cfg`.
    pub fn new(cfg: &SchedulerConfig, opts: &SigmaOptions, n: usize) -> Result<Self> {
        let grid = sigma_grid(cfg, opts, n)?;
        let spacing = solver_spacing(cfg);
        let (timesteps, sigmas) = if opts.sampler == SigmaSampler::Heun {
            let s = &grid.sigmas;
            let mut sig = vec![s[0]];
            for &v in &s[1..s.len() - 1] {
                sig.extend([v, v]);
            }
            sig.push(s[s.len() - 1]);
            let t = &grid.timesteps;
            let mut ts = vec![t[0]];
            for &v in &t[1..] {
                ts.extend([v, v]);
            }
            (ts, sig)
        } else {
            (grid.timesteps.clone(), grid.sigmas.clone())
        };
        // diffusers finds the first step by looking its timestep up, taking the second match when
        // it repeats: a run whose first timestep repeats would not start at step 0.
        ensure!(
            !timesteps[1..].contains(&timesteps[0]),
            "the first timestep {} repeats; diffusers would start such a run at its second \
             occurrence: use fewer steps or another spacing",
            timesteps[0]
        );
        let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            _ => (max * max + 1.0).sqrt(),
        };
        let pred = cfg.prediction_type;
        let mut steps = Vec::with_capacity(timesteps.len());
        for (i, &t) in timesteps.iter().enumerate() {
            let sigma = sigmas[i] as f64;
            let sigma_next = sigmas[i + 1] as f64;
            let mut row = SigmaStep {
                t,
                sigma,
                sigma_next,
                scale: input_scale(sigmas[i]),
                sigma_hat: sigma,
                churn: 0.0,
                x0_sample: 0.0,
                x0_model: 0.0,
                deriv_sigma: sigma,
                derivs: [0.0; SIGMA_HISTORY],
                noise: 0.0,
                draws: false,
                from_saved: false,
                save_sample: false,
                order: 1,
            };
            match opts.sampler {
                SigmaSampler::Euler => {
                    let gamma = if opts.s_tmin <= sigma && sigma <= opts.s_tmax {
                        (opts.s_churn / (sigmas.len() - 1) as f64).min(2f64.sqrt() - 1.0)
                    } else {
                        0.0
                    };
                    // σ̂ is an f32 tensor in diffusers.
                    let sigma_hat = (sigmas[i] as f64 * (gamma + 1.0)) as f32 as f64;
                    row.sigma_hat = sigma_hat;
                    if gamma > 0.0 {
                        row.draws = true;
                        row.churn = opts.s_noise * (sigma_hat * sigma_hat - sigma * sigma).sqrt();
                    }
                    (row.x0_sample, row.x0_model) = x0_coefs(pred, sigma, sigma_hat);
                    row.deriv_sigma = sigma_hat;
                    row.derivs[0] = sigma_next - sigma_hat;
                }
                SigmaSampler::EulerAncestral => {
                    (row.x0_sample, row.x0_model) = x0_coefs(pred, sigma, sigma);
                    let (sf, st) = (sigma, sigma_next);
                    let up = (st * st * (sf * sf - st * st) / (sf * sf)).sqrt();
                    let down = (st * st - up * up).sqrt();
                    row.derivs[0] = down - sf;
                    row.noise = up;
                    row.draws = true;
                }
                SigmaSampler::Heun => {
                    // The even evaluations start a step (first order, the last one a plain
                    // Euler step to 0); the odd ones correct the step before.
                    let second = i % 2 == 1;
                    (row.x0_sample, row.x0_model) = x0_coefs(pred, sigma, sigma);
                    if second {
                        // Evaluated at the level the first-order step went to.
                        let dt = sigma - sigmas[i - 1] as f64;
                        row.sigma_next = sigma;
                        row.derivs[0] = dt / 2.0;
                        row.derivs[1] = dt / 2.0;
                        row.from_saved = true;
                        row.order = 2;
                    } else {
                        row.derivs[0] = sigma_next - sigma;
                        row.save_sample = i + 1 < timesteps.len();
                    }
                }
                SigmaSampler::Lms => {
                    (row.x0_sample, row.x0_model) = x0_coefs(pred, sigma, sigma);
                    let order = (i + 1).min(SIGMA_HISTORY);
                    for (j, c) in row.derivs[..order].iter_mut().enumerate() {
                        *c = lms_coefficient(&sigmas, i, order, j);
                    }
                    row.order = order;
                }
            }
            steps.push(row);
        }
        let history = steps
            .iter()
            .map(|s| s.derivs.iter().rposition(|&c| c != 0.0).unwrap_or(0))
            .max()
            .unwrap_or(0);
        if let Some((i, bad)) = steps.iter().enumerate().find(|(_, s)| {
            !(s.derivs.iter().all(|c| c.is_finite())
                && s.churn.is_finite()
                && s.noise.is_finite()
                && s.x0_model.is_finite())
        }) {
            bail!(
                "{} step {i} (t = {}) has a coefficient that is not finite: {bad:?}",
                opts.sampler.class_name(),
                bad.t
            );
        }
        Ok(Self {
            options: opts.clone(),
            prediction: pred,
            timesteps,
            sigmas,
            init_noise_sigma,
            steps,
            history,
        })
    }
}

/// The state a σ-space run carries between evaluations on the CPU.
#[derive(Clone, Debug, Default)]
pub struct SigmaState {
    /// Earlier derivatives, newest first (f32, as diffusers keeps them).
    pub derivatives: Vec<Vec<f32>>,
    /// Heun: the sample its first-order evaluation started from.
    pub saved: Option<Vec<f32>>,
}

/// Evaluation `i` of `table` on the CPU: `sample` (x at this level, unscaled), the model output
/// and, where the row draws, this evaluation's noise in; the next sample and the predicted x0 out.
/// Arithmetic per element in f64, stored as f32 where diffusers stores a tensor.
pub fn sigma_step(
    table: &SigmaTable,
    i: usize,
    model_output: &[f32],
    sample: &[f32],
    batch: usize,
    noise: Option<&[f32]>,
    state: &mut SigmaState,
) -> Result<StepOutput> {
    check_shapes(sample, model_output, noise, batch)?;
    let Some(row) = table.steps.get(i) else {
        bail!("step {i} of a {}-step run", table.steps.len());
    };
    let z = match (row.draws, noise) {
        (true, Some(z)) => Some(z),
        (true, None) => bail!("step {i} draws noise but none was given"),
        (false, _) => None,
    };
    let depth = row.derivs.iter().rposition(|&c| c != 0.0).unwrap_or(0);
    ensure!(
        state.derivatives.len() >= depth,
        "step {i} combines {depth} earlier derivatives, {} are kept",
        state.derivatives.len()
    );
    let saved = if row.from_saved {
        match state.saved.take() {
            Some(s) => Some(s),
            None => bail!("step {i} corrects but no first-order sample is kept"),
        }
    } else {
        None
    };
    let n = sample.len();
    let mut x_churned = Vec::with_capacity(n);
    let mut x0_out = Vec::with_capacity(n);
    let mut d = Vec::with_capacity(n);
    for k in 0..n {
        let x = match z {
            Some(z) if row.churn != 0.0 => (sample[k] as f64 + row.churn * z[k] as f64) as f32,
            _ => sample[k],
        };
        let mut x0 = row.x0_sample * x as f64 + row.x0_model * model_output[k] as f64;
        if let Some(r) = table.options.clip {
            x0 = x0.clamp(-r, r);
        }
        x_churned.push(x);
        x0_out.push(x0 as f32);
        d.push(((x as f64 - x0) / row.deriv_sigma) as f32);
    }
    let base = saved.as_deref().unwrap_or(&x_churned);
    let prev_sample = (0..n)
        .map(|k| {
            let mut v = base[k] as f64 + row.derivs[0] * d[k] as f64;
            for (age, &c) in row.derivs.iter().enumerate().skip(1) {
                if c != 0.0 {
                    v += c * state.derivatives[age - 1][k] as f64;
                }
            }
            if let Some(z) = z {
                if row.noise != 0.0 {
                    v += row.noise * z[k] as f64;
                }
            }
            v as f32
        })
        .collect();
    if row.save_sample {
        state.saved = Some(x_churned);
    }
    if table.history > 0 {
        state.derivatives.insert(0, d);
        state.derivatives.truncate(table.history);
    }
    Ok(StepOutput {
        prev_sample,
        pred_original_sample: x0_out,
    })
}

/// The model input of evaluation `i`: `x / sqrt(σ² + 1)` in f32, as `scale_model_input`.
pub fn scale_model_input(table: &SigmaTable, i: usize, x: &[f32]) -> Result<Vec<f32>> {
    let Some(row) = table.steps.get(i) else {
        bail!("step {i} of a {}-step run", table.steps.len());
    };
    Ok(x.iter().map(|&v| v / row.scale).collect())
}
