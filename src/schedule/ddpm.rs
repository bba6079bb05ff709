//! Ancestral DDPM sampling as diffusers' `DDPMScheduler.step` (posterior mean of DDPM Eq. 7 plus
//! noise), for `--sampler ddpm`. Unlike DDIM it follows the actual timestep array: the previous
//! timestep is the next element, and ᾱ = 1 after the last one.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::betas::NoiseSchedule;
use super::config::SchedulerConfig;
use super::ddim::{check_finite_x0, StepOutput};
use super::predict::{check_shapes, x0_and_eps, X0Limit};
use super::timesteps::{next_or_minus_one, timesteps};

/// DDPMScheduler's `variance_type`, the ones that need no learned variance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DdpmVariance {
    /// Posterior variance β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t) · β_t, clamped at 1e-20 (DDIM eta = 1).
    FixedSmall,
    /// Same noise std as `FixedSmall`, computed as exp(0.5 · ln β̃_t).
    FixedSmallLog,
    /// β_t = 1 − ᾱ_t/ᾱ_prev, the DDIM paper's σ̂.
    FixedLarge,
}

impl DdpmVariance {
    const NAMES: [(&'static str, Self); 3] = [
        ("fixed_small", Self::FixedSmall),
        ("fixed_small_log", Self::FixedSmallLog),
        ("fixed_large", Self::FixedLarge),
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }

    /// Parses a `variance_type` value; the error names the key and the supported values.
    pub fn parse(s: &str) -> Result<Self> {
        match Self::NAMES.iter().find(|(n, _)| *n == s) {
            Some((_, v)) => Ok(*v),
            None => bail!(
                "`variance_type`: {s:?} is not supported by the DDPM sampler; allowed: \
                 fixed_small, fixed_small_log, fixed_large (learned variances need a model with \
                 2x output channels; fixed_large_log gives NaN in diffusers)"
            ),
        }
    }

    /// The config's `variance_type`, defaulting to DDPMScheduler's `fixed_small`.
    pub fn from_config(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.variance_type
            .as_deref()
            .map_or(Ok(Self::FixedSmall), Self::parse)
    }
}

/// One DDPM step from level `t` to `prev_t`:
///
/// ```text
/// x0, ε  = as in DdimStep, from sqrt_alpha_prod_t and sqrt_one_minus_alpha_prod_t
/// x0     = clip or threshold x0
/// x_prev = x0_coef·x0 + sample_coef·x + sigma·z
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdpmStep {
    /// Timestep passed to the model, and the level of the input sample.
    pub t: i64,
    /// Level of the output: the next scheduled timestep, or −1 after the last (ᾱ = 1).
    pub prev_t: i64,
    pub alpha_prod_t: f64,
    pub alpha_prod_t_prev: f64,
    /// β over this (possibly skipped) interval: 1 − ᾱ_t/ᾱ_prev.
    pub beta_t: f64,
    /// Variance of the noise term for the chosen variance type (before the t > 0 rule).
    pub variance: f64,
    /// Standard deviation of the noise term; 0 at t = 0, where diffusers adds no noise.
    pub sigma: f64,
    pub sqrt_alpha_prod_t: f64,
    pub sqrt_one_minus_alpha_prod_t: f64,
    /// sqrt(ᾱ_prev)·β_t / (1 − ᾱ_t), the weight of x0 in the posterior mean.
    pub x0_coef: f64,
    /// sqrt(1 − β_t)·(1 − ᾱ_prev) / (1 − ᾱ_t), the weight of x_t in the posterior mean.
    pub sample_coef: f64,
}

impl DdpmStep {
    /// The step as a JSON object (the `ddim schedule --sampler ddpm --json` row).
    pub fn to_json(&self) -> Value {
        json!({
            "t": self.t,
            "prev_t": self.prev_t,
            "alpha_prod_t": self.alpha_prod_t,
            "alpha_prod_t_prev": self.alpha_prod_t_prev,
            "beta_t": self.beta_t,
            "variance": self.variance,
            "sigma": self.sigma,
            "sqrt_alpha_prod_t": self.sqrt_alpha_prod_t,
            "sqrt_one_minus_alpha_prod_t": self.sqrt_one_minus_alpha_prod_t,
            "x0_coef": self.x0_coef,
            "sample_coef": self.sample_coef,
        })
    }
}

/// The DDPM table for `steps` inference steps (use T for the original 1000-step DDPM).
pub fn ddpm_table(
    cfg: &SchedulerConfig,
    steps: usize,
    kind: DdpmVariance,
) -> Result<Vec<DdpmStep>> {
    let sched = NoiseSchedule::new(cfg)?;
    let ts = timesteps(cfg, steps)?;
    ts.iter()
        .enumerate()
        .map(|(i, &t)| {
            let prev_t = next_or_minus_one(&ts, i);
            let a_t = sched.alpha_at(t)?;
            check_finite_x0(cfg.prediction_type, t, a_t)?;
            let a_prev = if prev_t < 0 {
                1.0
            } else {
                sched.alpha_at(prev_t)?
            };
            let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
            let cur_alpha = a_t / a_prev;
            let beta_t = 1.0 - cur_alpha;
            let posterior = (b_prev / b_t * beta_t).max(1e-20);
            let variance = match kind {
                DdpmVariance::FixedSmall => posterior,
                DdpmVariance::FixedSmallLog => (0.5 * posterior.ln()).exp().powi(2),
                DdpmVariance::FixedLarge => beta_t,
            };
            let sigma = match kind {
                _ if t <= 0 => 0.0,
                DdpmVariance::FixedSmallLog => (0.5 * posterior.ln()).exp(),
                _ => variance.sqrt(),
            };
            Ok(DdpmStep {
                t,
                prev_t,
                alpha_prod_t: a_t,
                alpha_prod_t_prev: a_prev,
                beta_t,
                variance,
                sigma,
                sqrt_alpha_prod_t: a_t.sqrt(),
                sqrt_one_minus_alpha_prod_t: b_t.sqrt(),
                x0_coef: a_prev.sqrt() * beta_t / b_t,
                sample_coef: cur_alpha.sqrt() * b_prev / b_t,
            })
        })
        .collect()
}

/// One DDPM step on the CPU, as `DDPMScheduler.step(model_output, t, sample)` with its random
/// draw replaced by `noise` (required when `step.sigma > 0`). Layout as in `ddim_step`.
pub fn ddpm_step(
    cfg: &SchedulerConfig,
    step: &DdpmStep,
    model_output: &[f32],
    sample: &[f32],
    batch: usize,
    noise: Option<&[f32]>,
) -> Result<StepOutput> {
    check_shapes(sample, model_output, noise, batch)?;
    if step.sigma > 0.0 && noise.is_none() {
        bail!("DDPM step at t = {} adds noise and needs it", step.t);
    }
    let (sa, sb) = (step.sqrt_alpha_prod_t, step.sqrt_one_minus_alpha_prod_t);
    let mut x0: Vec<f64> = sample
        .iter()
        .zip(model_output)
        .map(|(&x, &m)| x0_and_eps(cfg.prediction_type, x as f64, m as f64, sa, sb).0)
        .collect();
    X0Limit::from_config(cfg).apply(&mut x0, batch)?;
    let prev_sample = (0..sample.len())
        .map(|i| {
            let mut v = step.x0_coef * x0[i] + step.sample_coef * sample[i] as f64;
            if let Some(z) = noise {
                if step.sigma > 0.0 {
                    v += step.sigma * z[i] as f64;
                }
            }
            v as f32
        })
        .collect();
    Ok(StepOutput {
        prev_sample,
        pred_original_sample: x0.iter().map(|&v| v as f32).collect(),
    })
}
