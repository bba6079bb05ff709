//! diffusers' `PNDMScheduler` (Liu et al. 2022, pseudo numerical methods) as transfers that
//! `MultistepTable::new` (schedule::multistep) turns into rows of the multistep machinery.
//!
//! Every model evaluation ends in one transfer `P(x, t, t', e)` from a level t to t':
//!
//! ```text
//! a = ᾱ[t], a' = ᾱ[t'] (final ᾱ for t' < 0)
//! e = sqrt(a)·e + sqrt(1−a)·x                                 v_prediction only
//! P = sqrt(a'/a)·x − (a' − a)·e / (a·sqrt(1−a') + sqrt(a(1−a)a'))
//! ```
//!
//! where `e` is a fixed linear combination of model outputs (the Runge–Kutta accumulator, or
//! PLMS's Adams–Bashforth weights over the outputs kept in `ets`) and `x` is either this step's
//! sample or the stored `cur_sample`. So each row keeps the raw model outputs
//! (`raw_outputs`), folds the v→ε conversion into its coefficients, and reads `cur_sample` as
//! the corrector's `last` (`x = 1·last`).
//!
//! Bookkeeping, as diffusers' `step_prk` / `step_plms` do it (counter c counts every call):
//! - PRK (c < 12, unless `skip_prk_steps`): blocks of four evaluations at b, b−h, b−h, b−2h
//!   (h = T//n//2), each transfer from the block's first sample; the fourth uses
//!   m0/6 + m1/3 + m2/3 + m3/6; the block's first output enters `ets`.
//! - PLMS: `ets` gets every output except the second call's (c = 1, skip_prk's corrector, which
//!   redoes the first transfer with (m0 + m1)/2 from `cur_sample`); weights by `len(ets)`.
//!   The target level is always t − T//n, whatever the grid.

use anyhow::{bail, ensure, Result};

use super::betas::NoiseSchedule;
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::solver_options::SolverOptions;
use super::timesteps::timesteps;

/// The model timesteps of `set_timesteps(n)`: n + 9 with the Runge–Kutta warm-up, n + 1 without.
pub fn pndm_timesteps(cfg: &SchedulerConfig, skip_prk_steps: bool, n: usize) -> Result<Vec<i64>> {
    match cfg.timestep_spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Leading | TimestepSpacing::Trailing => {}
        other => bail!(
            "PNDMScheduler supports timestep_spacing linspace, leading or trailing, not {other}"
        ),
    }
    // The base grid, ascending.
    let mut base = timesteps(cfg, n)?;
    base.reverse();
    if skip_prk_steps {
        // [B_{n−1}, B_{n−2}, B_{n−2}, B_{n−3}, …, B_0]
        let mut ts: Vec<i64> = base.iter().rev().copied().collect();
        if n >= 2 {
            ts.insert(1, base[n - 2]);
        }
        return Ok(ts);
    }
    ensure!(
        n >= 4,
        "PNDM's Runge–Kutta warm-up needs at least 4 inference steps, got {n} (diffusers fails \
         below that); use more steps or skip_prk_steps"
    );
    let h = (cfg.num_train_timesteps / n / 2) as i64;
    let b = &base[n - 4..];
    let mut ts = Vec::with_capacity(n + 9);
    for k in (1..4).rev() {
        let (hi, lo) = (b[k], b[k - 1]);
        ts.extend([hi, lo + h, lo + h, lo]);
    }
    ts.extend(base[..n - 3].iter().rev());
    Ok(ts)
}

/// One transfer from ᾱ = `a` to `a_prev`: `(s, o)` with `x_next = s·x + o·e` for `e` the raw
/// model-output combination, v_prediction's conversion (with this transfer's x) folded in.
fn transfer(a: f64, a_prev: f64, prediction: PredictionType) -> (f64, f64) {
    let k = (a_prev - a) / (a * (1.0 - a_prev).sqrt() + (a * (1.0 - a) * a_prev).sqrt());
    let x = (a_prev / a).sqrt();
    match prediction {
        PredictionType::VPrediction => (x - k * (1.0 - a).sqrt(), -k * a.sqrt()),
        _ => (x, -k),
    }
}

/// One PNDM model evaluation: its timestep, the levels it transfers between and the transfer
/// as coefficients on the base sample and on raw model outputs by age.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PndmStep {
    /// The model timestep.
    pub t: i64,
    /// ᾱ at t (for the predicted x0 of trajectory frames) and at the transfer's target.
    pub alpha_t: f64,
    pub alpha_next: f64,
    /// Coefficient on the base sample.
    pub sample: f64,
    /// (age, coefficient) of the model outputs the transfer combines; age 0 = this step's.
    pub outputs: Vec<(usize, f64)>,
    /// The base sample is the stored `cur_sample` (else this step's sample).
    pub from_cur_sample: bool,
}

/// The steps of `n` PNDM steps on the schedule of `cfg` (`MultistepTable::new` turns them into
/// its rows).
pub(crate) fn pndm_steps(
    cfg: &SchedulerConfig,
    opts: &SolverOptions,
    n: usize,
) -> Result<Vec<PndmStep>> {
    let prediction = cfg.prediction_type;
    ensure!(
        prediction != PredictionType::Sample,
        "PNDMScheduler supports prediction_type epsilon or v_prediction, not sample"
    );
    let skip_prk = opts.skip_prk_steps;
    let ts = pndm_timesteps(cfg, skip_prk, n)?;
    // PNDM has no zero-SNR rescaling: from_config drops the key.
    let plain = SchedulerConfig {
        rescale_betas_zero_snr: false,
        ..cfg.clone()
    };
    let ac = NoiseSchedule::new(&plain)?.alphas_cumprod;
    // PNDM's own default is set_alpha_to_one = false.
    let final_alpha = if cfg.given("set_alpha_to_one") && cfg.set_alpha_to_one {
        1.0
    } else {
        ac[0]
    };
    let t_train = cfg.num_train_timesteps as i64;
    let alpha = |t: i64| -> Result<f64> {
        if t < 0 {
            return Ok(final_alpha);
        }
        ensure!(
            t < t_train,
            "PNDM would step from timestep {t}, outside 0..{t_train} ({} spacing, {n} steps)",
            cfg.timestep_spacing
        );
        Ok(ac[t as usize])
    };
    let ratio = t_train / n as i64;
    let half = ratio / 2;
    let prk_len = if skip_prk { 0 } else { 12 };
    let mut ets: Vec<usize> = Vec::new();
    let mut steps = Vec::with_capacity(ts.len());
    for (c, &t) in ts.iter().enumerate() {
        // (weights by evaluation index, from level, to level, base = cur_sample)
        let (weights, from, to, from_last): (Vec<(usize, f64)>, i64, i64, bool) = if c < prk_len {
            let to = t - if c % 2 == 1 { 0 } else { half };
            let from = ts[c / 4 * 4];
            match c % 4 {
                0 => {
                    ets.push(c);
                    (vec![(c, 1.0)], from, to, false)
                }
                1 | 2 => (vec![(c, 1.0)], from, to, true),
                _ => (
                    vec![
                        (c - 3, 1.0 / 6.0),
                        (c - 2, 1.0 / 3.0),
                        (c - 1, 1.0 / 3.0),
                        (c, 1.0 / 6.0),
                    ],
                    from,
                    to,
                    true,
                ),
            }
        } else {
            let (from, to) = if c == 1 {
                (t + ratio, t)
            } else {
                (t, t - ratio)
            };
            if c != 1 {
                if ets.len() > 3 {
                    ets.remove(0);
                }
                ets.push(c);
            }
            let e = |k: usize| ets[ets.len() - k];
            let weights = match (ets.len(), c) {
                (1, 0) => vec![(c, 1.0)],
                (1, 1) => vec![(c, 0.5), (e(1), 0.5)],
                (2, _) => vec![(e(1), 1.5), (e(2), -0.5)],
                (3, _) => vec![
                    (e(1), 23.0 / 12.0),
                    (e(2), -16.0 / 12.0),
                    (e(3), 5.0 / 12.0),
                ],
                _ => vec![
                    (e(1), 55.0 / 24.0),
                    (e(2), -59.0 / 24.0),
                    (e(3), 37.0 / 24.0),
                    (e(4), -9.0 / 24.0),
                ],
            };
            (weights, from, to, c == 1)
        };
        let (a, alpha_next) = (alpha(from)?, alpha(to)?);
        let (sample, out) = transfer(a, alpha_next, prediction);
        steps.push(PndmStep {
            t,
            alpha_t: alpha(t)?,
            alpha_next,
            sample,
            outputs: weights.iter().map(|&(k, w)| (c - k, out * w)).collect(),
            from_cur_sample: from_last,
        });
    }
    Ok(steps)
}
