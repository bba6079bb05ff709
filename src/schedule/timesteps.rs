//! Inference timesteps, exactly as diffusers' `set_timesteps(n)` builds them (numpy f64
//! arithmetic, round half to even), plus ermongroup/ddim's "uniform" and "quad" sequences.

use anyhow::{bail, Result};

use super::config::{SchedulerConfig, TimestepSpacing};

/// Rejects step counts diffusers rejects (n > T) or cannot handle (n = 0).
fn check_steps(cfg: &SchedulerConfig, n: usize) -> Result<()> {
    let t = cfg.num_train_timesteps;
    if n == 0 {
        bail!("the number of inference steps must be at least 1");
    }
    if n > t {
        bail!("{n} inference steps is more than num_train_timesteps = {t}");
    }
    Ok(())
}

/// `np.linspace(0, stop, n)`: `i * (stop / (n-1))`, with the last element exactly `stop`.
fn np_linspace_from_zero(stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![0.0];
    }
    let step = stop / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

/// `np.arange(start, 0, -step)` for floats: numpy takes `ceil(-start / -step)` elements and fills
/// them as `start + i * ((start - step) - start)`.
pub(crate) fn np_arange_down_to_zero(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil().max(0.0) as usize;
    let delta = (start + -step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + -step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// The timesteps a DDIM or DDPM sampling loop visits, in order (descending), for `n` steps.
/// `uniform` can return more than `n` entries (ermongroup's `range(0, T, T // n)`).
pub fn timesteps(cfg: &SchedulerConfig, n: usize) -> Result<Vec<i64>> {
    check_steps(cfg, n)?;
    let t_train = cfg.num_train_timesteps;
    let ts: Vec<i64> = match cfg.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace_from_zero((t_train - 1) as f64, n)
            .iter()
            .rev()
            .map(|v| v.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (t_train / n) as i64;
            let offset = cfg.steps_offset as i64;
            let ts: Vec<i64> = (0..n as i64).rev().map(|i| i * ratio + offset).collect();
            if ts[0] >= t_train as i64 {
                bail!(
                    "steps_offset = {offset} puts timestep {} beyond the last training timestep {}",
                    ts[0],
                    t_train - 1
                );
            }
            ts
        }
        TimestepSpacing::Trailing => {
            np_arange_down_to_zero(t_train as f64, t_train as f64 / n as f64)
                .iter()
                .map(|v| v.round_ties_even() as i64 - 1)
                .collect()
        }
        TimestepSpacing::Uniform => {
            let skip = t_train / n;
            (0..t_train).step_by(skip).rev().map(|v| v as i64).collect()
        }
        TimestepSpacing::Quad => {
            let stop = (t_train as f64 * 0.8).sqrt();
            np_linspace_from_zero(stop, n)
                .iter()
                .rev()
                .map(|v| (v * v) as i64)
                .collect()
        }
    };
    if let Some(bad) = ts.iter().find(|&&t| t < 0 || t >= t_train as i64) {
        bail!(
            "{} spacing with {n} steps gives timestep {bad}, outside 0..{t_train}",
            cfg.timestep_spacing
        );
    }
    Ok(ts)
}

/// The noise level DDIM steps to from `timesteps[i]` (negative: past the end, ᾱ = final ᾱ).
/// diffusers' DDIMScheduler always uses `t - T // n`, even where that is not the next scheduled
/// timestep (linspace, trailing with n not dividing T); for ermongroup's `uniform` and `quad`
/// sequences it is the next element, as in their `generalized_steps`.
pub fn ddim_prev_timestep(cfg: &SchedulerConfig, n: usize, timesteps: &[i64], i: usize) -> i64 {
    match cfg.timestep_spacing {
        TimestepSpacing::Uniform | TimestepSpacing::Quad => next_or_minus_one(timesteps, i),
        _ => timesteps[i] - (cfg.num_train_timesteps / n) as i64,
    }
}

/// The next element of the schedule, or −1 after the last (DDPMScheduler's `previous_timestep`,
/// taken by position).
pub fn next_or_minus_one(timesteps: &[i64], i: usize) -> i64 {
    timesteps.get(i + 1).copied().unwrap_or(-1)
}

/// DDIMInverseScheduler's timesteps for `n` steps, ascending. Only `leading` (with
/// `steps_offset`) and `trailing` exist there; other spacings are an error.
pub fn inverse_timesteps(cfg: &SchedulerConfig, n: usize) -> Result<Vec<i64>> {
    let spacing = cfg.timestep_spacing;
    match spacing {
        TimestepSpacing::Leading | TimestepSpacing::Trailing => {
            let mut ts = timesteps(cfg, n)?;
            ts.reverse();
            Ok(ts)
        }
        _ => bail!(
            "the DDIM inverse scheduler supports timestep_spacing leading or trailing, not {spacing}"
        ),
    }
}
