//! DDIM inversion (x0 → x_T), as diffusers' `DDIMInverseScheduler`: the same update as DDIM with
//! eta = 0, run towards *more* noise, and with clipping but no thresholding.

use anyhow::Result;

use super::betas::NoiseSchedule;
use super::config::SchedulerConfig;
use super::ddim::{check_finite_x0, step_core, DdimStep, StepOutput, UpdateRule};
use super::predict::X0Limit;
use super::timesteps::inverse_timesteps;

/// The inversion table for `steps` steps, in loop order (ascending t). Step i evaluates the model
/// at `t` (the level it moves *to*) on a sample at level `from_t = min(t − T//n, T − 1)`, where a
/// negative level means ᾱ = `initial_alpha_cumprod` (1 with `set_alpha_to_one`, else ᾱ\[0\]).
/// `sigma` and `variance` are 0 and `dir_coef` = sqrt(1 − ᾱ_t).
pub fn inverse_table(cfg: &SchedulerConfig, steps: usize) -> Result<Vec<DdimStep>> {
    let sched = NoiseSchedule::new(cfg)?;
    let t_train = cfg.num_train_timesteps as i64;
    let ratio = t_train / steps as i64;
    inverse_timesteps(cfg, steps)?
        .into_iter()
        .map(|t| {
            let from_t = (t - ratio).min(t_train - 1);
            let a_from = sched.alpha_at(from_t)?;
            check_finite_x0(cfg.prediction_type, from_t, a_from)?;
            let mut step = DdimStep::between(t, from_t, t, a_from, sched.alpha_at(t)?, 0.0);
            step.variance = 0.0;
            Ok(step)
        })
        .collect()
}

/// One inversion step on the CPU, as `DDIMInverseScheduler.step(model_output, t, sample)`.
/// Layout as in `ddim_step`.
pub fn inverse_step(
    cfg: &SchedulerConfig,
    step: &DdimStep,
    model_output: &[f32],
    sample: &[f32],
    batch: usize,
) -> Result<StepOutput> {
    let rule = UpdateRule {
        prediction: cfg.prediction_type,
        limit: X0Limit::for_inverse(cfg),
        use_clipped_model_output: false,
    };
    step_core(rule, step, model_output, sample, batch, None)
}
