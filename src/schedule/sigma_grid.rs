//! The σ grid of the σ-space samplers, exactly as their `set_timesteps(n)` builds it: the
//! σ-table Σ[t] = sqrt((1 − ᾱ)/ᾱ) in torch f32, the timesteps of every spacing (f32), σ
//! interpolated at them (numpy f64), Euler's log_linear σ, the karras / exponential / beta σ
//! schedules mapped back to fractional timesteps by `sigma_to_t`, and the final σ.

use anyhow::{bail, ensure, Result};

use super::beta_ppf::beta_ppf;
use super::betas::{torch_linspace_f32, NoiseSchedule};
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::multistep::solver_spacing;
use super::sigma_options::{class_config, SigmaOptions, SigmaSchedule};
use super::timesteps::np_arange_down_to_zero;

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
