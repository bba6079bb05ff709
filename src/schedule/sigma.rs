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
use serde_json::{json, Value};

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::ddim::StepOutput;
use super::multistep::solver_spacing;
use super::predict::check_shapes;
use super::sigma_grid::sigma_grid;
use super::sigma_options::{SigmaOptions, SigmaSampler};

/// Derivatives one evaluation may combine (LMS of order 4: this one and three before).
pub const SIGMA_HISTORY: usize = 4;

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
