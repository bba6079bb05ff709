//! DDIM (Song et al., Eq. 12) as diffusers' `DDIMScheduler.step` does it: the per-step
//! coefficient table and the CPU step on f32 tensors.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::betas::NoiseSchedule;
use super::config::{PredictionType, SchedulerConfig};
use super::predict::{check_shapes, x0_and_eps, X0Limit};
use super::timesteps::{ddim_prev_timestep, timesteps};

/// One step of a DDIM-family sampler: move a sample from noise level `from_t` (ᾱ =
/// `alpha_prod_t`) to level `prev_t` (ᾱ = `alpha_prod_t_prev`), evaluating the model at `t`.
///
/// The update, for every element, with x the sample, m the model output and z the noise:
///
/// ```text
/// x0, ε  = from (x, m) by prediction type, using sqrt_alpha_prod_t and sqrt_one_minus_alpha_prod_t
///          epsilon: x0 = (x − sqrt_one_minus_alpha_prod_t·m) / sqrt_alpha_prod_t,   ε = m
///          sample:  x0 = m,   ε = (x − sqrt_alpha_prod_t·x0) / sqrt_one_minus_alpha_prod_t
///          v:       x0 = sqrt_alpha_prod_t·x − sqrt_one_minus_alpha_prod_t·m,
///                   ε  = sqrt_alpha_prod_t·m + sqrt_one_minus_alpha_prod_t·x
/// x0     = clip or threshold x0 (per the config)
/// ε      = (x − sqrt_alpha_prod_t·x0) / sqrt_one_minus_alpha_prod_t   only with use_clipped_model_output
/// x_prev = sqrt_alpha_prod_t_prev·x0 + dir_coef·ε + sigma·z
/// ```
///
/// All values are f64 computed from diffusers' exact f32 ᾱ; a GPU kernel uploads them as f32.
/// The same struct describes DDIM inversion steps (`inverse_table`), where the level goes *up*:
/// `from_t` < `prev_t` = `t`, `sigma` = 0 and `dir_coef` = sqrt(1 − alpha_prod_t_prev).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimStep {
    /// Timestep passed to the model.
    pub t: i64,
    /// Level of the input sample: `t` for DDIM; `min(t − T//n, T − 1)` for inversion (negative:
    /// ᾱ = final/initial ᾱ).
    pub from_t: i64,
    /// Level of the output sample. DDIM: `t − T//n` (diffusers' rule, even where it is not the next
    /// scheduled timestep), or the next element for `uniform`/`quad`; negative means "clean",
    /// ᾱ = `final_alpha_cumprod`. Inversion: `t`.
    pub prev_t: i64,
    /// ᾱ at `from_t`.
    pub alpha_prod_t: f64,
    /// ᾱ at `prev_t`.
    pub alpha_prod_t_prev: f64,
    /// DDIM's σ² before eta: (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev) (diffusers `_get_variance`).
    pub variance: f64,
    /// Standard deviation of the noise term: eta · sqrt(variance).
    pub sigma: f64,
    /// sqrt(alpha_prod_t).
    pub sqrt_alpha_prod_t: f64,
    /// sqrt(1 − alpha_prod_t).
    pub sqrt_one_minus_alpha_prod_t: f64,
    /// sqrt(alpha_prod_t_prev), the weight of x0 in x_prev.
    pub sqrt_alpha_prod_t_prev: f64,
    /// sqrt(1 − alpha_prod_t_prev − sigma²), the weight of ε in x_prev ("direction to x_t").
    pub dir_coef: f64,
}

impl DdimStep {
    /// A transition between two levels with noise std `sigma`.
    pub(crate) fn between(
        t: i64,
        from_t: i64,
        prev_t: i64,
        a_t: f64,
        a_prev: f64,
        eta: f64,
    ) -> Self {
        let variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
        // eta = 0 means no noise term at all, even where the variance is not a number.
        let sigma = if eta == 0.0 {
            0.0
        } else {
            eta * variance.sqrt()
        };
        Self {
            t,
            from_t,
            prev_t,
            alpha_prod_t: a_t,
            alpha_prod_t_prev: a_prev,
            variance,
            sigma,
            sqrt_alpha_prod_t: a_t.sqrt(),
            sqrt_one_minus_alpha_prod_t: (1.0 - a_t).sqrt(),
            sqrt_alpha_prod_t_prev: a_prev.sqrt(),
            // Mathematically ≥ 0 for eta ≤ 1; the clamp keeps rounding from producing NaN.
            dir_coef: (1.0 - a_prev - sigma * sigma).max(0.0).sqrt(),
        }
    }

    /// The step as a JSON object (the `ddim schedule --json` row).
    pub fn to_json(&self) -> Value {
        json!({
            "t": self.t,
            "from_t": self.from_t,
            "prev_t": self.prev_t,
            "alpha_prod_t": self.alpha_prod_t,
            "alpha_prod_t_prev": self.alpha_prod_t_prev,
            "variance": self.variance,
            "sigma": self.sigma,
            "sqrt_alpha_prod_t": self.sqrt_alpha_prod_t,
            "sqrt_one_minus_alpha_prod_t": self.sqrt_one_minus_alpha_prod_t,
            "sqrt_alpha_prod_t_prev": self.sqrt_alpha_prod_t_prev,
            "dir_coef": self.dir_coef,
        })
    }
}

/// Rejects eta outside [0, 1].
pub(crate) fn check_eta(eta: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&eta) {
        bail!("eta must be in [0, 1] (0 = DDIM, 1 = DDPM-like), got {eta}");
    }
    Ok(())
}

/// Rejects a table whose x0 prediction would divide by zero (ᾱ_t = 0 with epsilon prediction,
/// which `rescale_betas_zero_snr` produces at t = T−1; ᾱ_t = 1 with sample prediction).
pub(crate) fn check_finite_x0(pred: PredictionType, step_t: i64, a_t: f64) -> Result<()> {
    match pred {
        PredictionType::Epsilon if a_t <= 0.0 => bail!(
            "alphas_cumprod[{step_t}] is 0 (zero terminal SNR), so epsilon prediction would \
             divide by zero there; use prediction_type v_prediction"
        ),
        PredictionType::Sample if a_t >= 1.0 => bail!(
            "alphas_cumprod[{step_t}] is 1, so sample prediction cannot recover the noise there"
        ),
        _ => Ok(()),
    }
}

/// The DDIM table for `steps` inference steps with noise scale `eta` (0 = deterministic DDIM,
/// 1 = DDPM posterior variance), one entry per model evaluation, in sampling order.
pub fn ddim_table(cfg: &SchedulerConfig, steps: usize, eta: f64) -> Result<Vec<DdimStep>> {
    check_eta(eta)?;
    let sched = NoiseSchedule::new(cfg)?;
    let ts = timesteps(cfg, steps)?;
    ts.iter()
        .enumerate()
        .map(|(i, &t)| {
            let prev_t = ddim_prev_timestep(cfg, steps, &ts, i);
            let a_t = sched.alpha_at(t)?;
            check_finite_x0(cfg.prediction_type, t, a_t)?;
            Ok(DdimStep::between(
                t,
                t,
                prev_t,
                a_t,
                sched.alpha_at(prev_t)?,
                eta,
            ))
        })
        .collect()
}

/// What one sampler step returns (diffusers' `prev_sample` and `pred_original_sample`).
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// The sample at the next level.
    pub prev_sample: Vec<f32>,
    /// The predicted clean sample x0, after clipping or thresholding.
    pub pred_original_sample: Vec<f32>,
}

/// One DDIM step on the CPU, as `DDIMScheduler.step(model_output, t, sample, eta,
/// use_clipped_model_output, variance_noise=noise)`.
///
/// `sample`, `model_output` and `noise` are `batch` contiguous samples of equal size (NCHW);
/// thresholding works per sample. `noise` is required when `step.sigma > 0`. Each element is
/// computed in f64 and rounded to f32 once.
pub fn ddim_step(
    cfg: &SchedulerConfig,
    step: &DdimStep,
    model_output: &[f32],
    sample: &[f32],
    batch: usize,
    use_clipped_model_output: bool,
    noise: Option<&[f32]>,
) -> Result<StepOutput> {
    if step.sigma > 0.0 && noise.is_none() {
        bail!(
            "DDIM step at t = {} has sigma = {} (eta > 0) and needs noise",
            step.t,
            step.sigma
        );
    }
    let rule = UpdateRule {
        prediction: cfg.prediction_type,
        limit: X0Limit::from_config(cfg),
        use_clipped_model_output,
    };
    step_core(rule, step, model_output, sample, batch, noise)
}

/// How x0 and ε are derived from the model output in a DDIM-style update.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UpdateRule {
    pub prediction: PredictionType,
    pub limit: X0Limit,
    /// Re-derive ε from the limited x0.
    pub use_clipped_model_output: bool,
}

/// The update shared by DDIM and DDIM inversion (see `DdimStep`).
pub(crate) fn step_core(
    rule: UpdateRule,
    step: &DdimStep,
    model_output: &[f32],
    sample: &[f32],
    batch: usize,
    noise: Option<&[f32]>,
) -> Result<StepOutput> {
    let UpdateRule {
        prediction: pred,
        limit,
        use_clipped_model_output,
    } = rule;
    check_shapes(sample, model_output, noise, batch)?;
    let (sa, sb) = (step.sqrt_alpha_prod_t, step.sqrt_one_minus_alpha_prod_t);
    let (mut x0, mut eps): (Vec<f64>, Vec<f64>) = sample
        .iter()
        .zip(model_output)
        .map(|(&x, &m)| x0_and_eps(pred, x as f64, m as f64, sa, sb))
        .unzip();
    limit.apply(&mut x0, batch)?;
    if use_clipped_model_output {
        for ((e, &x), &p) in eps.iter_mut().zip(sample).zip(&x0) {
            *e = (x as f64 - sa * p) / sb;
        }
    }
    let prev_sample = (0..sample.len())
        .map(|i| {
            let mut v = step.sqrt_alpha_prod_t_prev * x0[i] + step.dir_coef * eps[i];
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
