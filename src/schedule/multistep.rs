//! Multistep solvers as diffusers runs them: `DPMSolverMultistepScheduler` (DPM-Solver and
//! DPM-Solver++, orders 1–3, midpoint or Heun, and their SDE variants), `UniPCMultistepScheduler`
//! (UniPC's predictor with its corrector, bh1 or bh2, orders 1–3) and `PNDMScheduler`
//! (`super::pndm` builds its rows).
//!
//! Every update these solvers make is linear in the current sample and in the converted model
//! outputs of the last few steps. So each step becomes one [`MultistepStep`] row, computed in f64
//! from diffusers' f32 σ values:
//!
//! ```text
//! y_0   = convert(x, m)                          x0 (data prediction) or ε, thresholded when asked
//! x     = c.sample·last + Σ_a c.outputs[a]·y_a   UniPC's corrector, where it applies
//! last  = x
//! x'    = p.sample·x    + Σ_a p.outputs[a]·y_a   the predictor (DPM-Solver's whole update)
//!         + noise·z                              the SDE variants: this step's draw z
//! ```
//!
//! PNDM keeps the raw model outputs (`raw_outputs`: y = m, converted inside each transfer,
//! which the coefficients include), and its transfers from the stored `cur_sample` use the
//! corrector row as `x = last`.
//!
//! `y_a` is the converted output `a` steps ago (`y_0` this step's). The CPU reference
//! ([`multistep_step`]) and the GPU kernel apply the same rows; the fixtures check them against
//! diffusers step by step.

use anyhow::{bail, ensure, Result};
use serde_json::{json, Value};

use super::betas::NoiseSchedule;
use super::config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use super::ddim::StepOutput;
use super::pndm::pndm_steps;
use super::predict::{check_shapes, x0_and_eps, X0Limit};
use super::solver_options::{DpmAlgorithm, FinalSigmas, SolverFamily, SolverOptions, SolverType};
use super::timesteps::np_arange_down_to_zero;

/// The oldest output a step may combine, plus one: PNDM's first PLMS step after its Runge–Kutta
/// warm-up reads the output of 12 evaluations before (UniPC of order 3 needs 4).
pub const MAX_HISTORY: usize = 16;

/// `sample·x + Σ_a outputs[a]·y_a`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Combination {
    pub sample: f64,
    /// By age: 0 = this step's converted output.
    pub outputs: [f64; MAX_HISTORY],
}

impl Combination {
    /// The coefficients by age, at least four (the DPM-Solver and UniPC tables' width), up to
    /// the oldest output used.
    pub fn by_age(&self) -> &[f64] {
        &self.outputs[..self.depth().max(4)]
    }

    /// The oldest output it uses, plus one (0 when it uses none).
    fn depth(&self) -> usize {
        self.outputs
            .iter()
            .rposition(|&c| c != 0.0)
            .map_or(0, |a| a + 1)
    }
}

/// One model evaluation of a multistep solver.
#[derive(Clone, Debug, PartialEq)]
pub struct MultistepStep {
    /// Timestep passed to the model.
    pub t: i64,
    /// σ = sqrt((1 − ᾱ)/ᾱ) of this step's level and of the next (diffusers' f32 `sigmas[i]`,
    /// `sigmas[i+1]`).
    pub sigma: f64,
    pub sigma_next: f64,
    /// α_s = 1/sqrt(σ²+1) and σ_s = σ·α_s at this level: they convert the model output.
    pub alpha_s: f64,
    pub sigma_s: f64,
    /// λ = log α − log σ at this level and the next (+∞ for σ = 0).
    pub lambda: f64,
    pub lambda_next: f64,
    /// Order of the update (the predictor's, for UniPC; PNDM: 4 for the Runge–Kutta and PLMS
    /// steps whatever their history).
    pub order: usize,
    /// Coefficient of this step's noise draw z (the SDE variants; 0 otherwise, and at a final
    /// σ of 0).
    pub noise: f64,
    /// Order of UniPC's corrector applied before the update; 0 = none.
    pub corrector_order: usize,
    pub corrector: Combination,
    pub predictor: Combination,
}

impl MultistepStep {
    pub fn to_json(&self) -> Value {
        json!({
            "t": self.t,
            "sigma": self.sigma,
            "sigma_next": self.sigma_next,
            "alpha_s": self.alpha_s,
            "sigma_s": self.sigma_s,
            "lambda": self.lambda,
            "lambda_next": self.lambda_next,
            "order": self.order,
            "noise": self.noise,
            "corrector_order": self.corrector_order,
            "corrector": self.corrector_json(),
            "predictor": {"sample": self.predictor.sample, "outputs": self.predictor.by_age()},
        })
    }

    fn corrector_json(&self) -> Value {
        if self.corrector_order == 0 {
            Value::Null
        } else {
            json!({"last_sample": self.corrector.sample, "outputs": self.corrector.by_age()})
        }
    }
}

/// A whole multistep run: the rows and what every row shares.
#[derive(Clone, Debug, PartialEq)]
pub struct MultistepTable {
    pub options: SolverOptions,
    pub prediction: PredictionType,
    /// Dynamic thresholding of the data prediction, or none (these solvers never clip).
    pub limit: X0Limit,
    /// True: the converted output is x0; false: ε (or, with `raw_outputs`, the model output).
    pub predicts_x0: bool,
    /// PNDM: the kept outputs are the model's own; the ε conversion of v is in the coefficients.
    pub raw_outputs: bool,
    /// Every step draws noise (the SDE variants), whether or not its coefficient is 0.
    pub draws_noise: bool,
    pub steps: Vec<MultistepStep>,
    /// Converted outputs that must be kept: the largest depth any row uses.
    pub history: usize,
}

/// λ for a σ of the VP schedule: log α − log σ_t with α = 1/sqrt(σ²+1), σ_t = σ·α.
fn alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

/// The solver's ᾱ: diffusers' table, with ᾱ[T−1] = 2⁻²⁴ under zero-terminal-SNR rescaling.
fn solver_alphas(cfg: &SchedulerConfig) -> Result<Vec<f32>> {
    let sched = NoiseSchedule::new(cfg)?;
    let mut ac: Vec<f32> = sched.alphas_cumprod.iter().map(|&a| a as f32).collect();
    if cfg.rescale_betas_zero_snr {
        *ac.last_mut().expect("T >= 1") = 2f32.powi(-24);
    }
    Ok(ac)
}

/// `((1 − ᾱ)/ᾱ) ** 0.5` computed as torch does, in f32.
fn sigma_of(a: f32) -> f32 {
    ((1.0 - a) / a).sqrt()
}

/// The spacing a solver uses: the config's when it names one, else the solvers' default linspace.
pub fn solver_spacing(cfg: &SchedulerConfig) -> TimestepSpacing {
    if cfg.timestep_spacing_given {
        cfg.timestep_spacing
    } else {
        TimestepSpacing::Linspace
    }
}

/// The timesteps and the n+1 σ values of `set_timesteps(n)`.
pub fn solver_sigmas(
    cfg: &SchedulerConfig,
    opts: &SolverOptions,
    n: usize,
) -> Result<(Vec<i64>, Vec<f64>)> {
    let t_train = cfg.num_train_timesteps;
    ensure!(n >= 1, "the number of inference steps must be at least 1");
    ensure!(
        n <= t_train,
        "{n} inference steps is more than num_train_timesteps = {t_train}"
    );
    let ac = solver_alphas(cfg)?;
    let table: Vec<f32> = ac.iter().map(|&a| sigma_of(a)).collect();
    // DPM-Solver drops the timesteps whose λ (torch f32) lies below lambda_min_clipped.
    let last = match opts.family {
        SolverFamily::DpmSolver if opts.lambda_min_clipped > f64::NEG_INFINITY => {
            let lambda = |a: f32| a.sqrt().ln() - (1.0 - a).sqrt().ln();
            let below = ac
                .iter()
                .filter(|&&a| (lambda(a) as f64) < opts.lambda_min_clipped)
                .count();
            t_train - below
        }
        _ => t_train,
    };
    let spacing = solver_spacing(cfg);
    let mut ts: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => {
            let stop = (last as f64) - 1.0;
            let step = stop / n as f64;
            (0..=n)
                .map(|i| if i == n { stop } else { i as f64 * step })
                .map(f64::round_ties_even)
                .rev()
                .take(n)
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = (last / (n + 1)) as f64;
            (0..=n)
                .rev()
                .take(n)
                .map(|i| i as f64 * ratio + cfg.steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange_down_to_zero(last as f64, t_train as f64 / n as f64)
            .iter()
            .map(|v| v.round_ties_even() - 1.0)
            .collect(),
        other => bail!(
            "{} supports timestep_spacing linspace, leading or trailing, not {other}",
            opts.family.class_name()
        ),
    };
    let sigma_min = sigma_of(ac[0]) as f64;
    let mut sigmas: Vec<f64>;
    if opts.use_karras_sigmas {
        // Karras et al. (2022) ρ = 7 ramp between the table's extremes (numpy f64), then each σ
        // mapped back to a (fractional) timestep by log-σ interpolation.
        let log_table: Vec<f64> = table.iter().map(|&s| (s as f64).ln()).collect();
        let (lo, hi) = (table[0] as f64, table[t_train - 1] as f64);
        let (min_inv, max_inv) = (lo.powf(1.0 / 7.0), hi.powf(1.0 / 7.0));
        // np.linspace(0, 1, n): i·(1/(n−1)), the last element exactly 1.
        let step = if n > 1 { 1.0 / (n - 1) as f64 } else { 0.0 };
        sigmas = (0..n)
            .map(|i| {
                let ramp = if i + 1 == n && n > 1 {
                    1.0
                } else {
                    i as f64 * step
                };
                (max_inv + ramp * (min_inv - max_inv)).powf(7.0)
            })
            .collect();
        let round = opts.family == SolverFamily::UniPc
            || cfg.beta_schedule != BetaSchedule::SquaredcosCapV2;
        ts = sigmas
            .iter()
            .map(|&s| {
                let t = sigma_to_t(s, &log_table);
                if round {
                    t.round_ties_even()
                } else {
                    t.trunc()
                }
            })
            .collect();
        // UniPC's "sigma_min" with Karras sigmas is the smallest Karras σ.
        let last_sigma = match opts.final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin if opts.family == SolverFamily::UniPc => sigmas[n - 1],
            FinalSigmas::SigmaMin => sigma_min,
        };
        sigmas.push(last_sigma);
    } else {
        sigmas = Vec::with_capacity(ts.len() + 1);
        for &t in &ts {
            ensure!(
                t >= 0.0 && (t as usize) < t_train,
                "{spacing} spacing with {n} steps gives timestep {t}, outside 0..{t_train}"
            );
            sigmas.push(table[t as usize] as f64);
        }
        sigmas.push(match opts.final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => sigma_min,
        });
    }
    let sigmas = sigmas.iter().map(|&s| s as f32 as f64).collect();
    let ts = ts.iter().map(|&t| t as i64).collect::<Vec<_>>();
    if let Some(bad) = ts.iter().find(|&&t| t < 0 || t >= t_train as i64) {
        bail!("timestep {bad} is outside 0..{t_train}");
    }
    Ok((ts, sigmas))
}

/// diffusers' `_sigma_to_t`: the fractional timestep whose log σ (linearly interpolated in the
/// table) is log `sigma`.
fn sigma_to_t(sigma: f64, log_table: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let last = log_table.len() - 2;
    // argmax of the running count of table entries at or below log σ: the last such index.
    let low = log_table
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(last);
    let (l, h) = (log_table[low], log_table[low + 1]);
    let w = ((l - log_sigma) / (l - h)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Solves `a·x = b` (n ≤ 3) by Gaussian elimination with partial pivoting.
// Indexing, not iterators: each row update reads row `col` of `a` while writing row `row`.
#[allow(clippy::needless_range_loop)]
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .expect("n > 0");
        ensure!(
            a[pivot][col].abs() > 0.0 && a[pivot][col].is_finite(),
            "UniPC's coefficient matrix is singular: repeated timesteps, or an order above 1 at a \
             final σ of 0 (use lower_order_final or final_sigmas_type sigma_min)"
        );
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Ok(x)
}

/// The coefficients of one DPM-Solver update from level s0 to t: `x_t = sample·x + d0·D0 +
/// d1·D1 + d2·D2 + noise·z`, with `d1` the second-order term (by solver type) and `(d1_3, d2)`
/// the third-order terms, as diffusers writes each `algorithm_type`.
struct DpmTerms {
    sample: f64,
    d0: f64,
    d1: f64,
    d1_3: f64,
    d2: f64,
    noise: f64,
}

impl DpmTerms {
    fn new(
        opts: &SolverOptions,
        (alpha_t, sigma_t): (f64, f64),
        (alpha_s0, sigma_s0): (f64, f64),
        h: f64,
    ) -> Self {
        let heun = opts.solver_type == SolverType::Heun;
        match opts.algorithm {
            DpmAlgorithm::DpmSolverPlusPlus => {
                let em1 = (-h).exp() - 1.0;
                Self {
                    sample: sigma_t / sigma_s0,
                    d0: -alpha_t * em1,
                    d1: if heun {
                        alpha_t * (em1 / h + 1.0)
                    } else {
                        -0.5 * alpha_t * em1
                    },
                    d1_3: alpha_t * (em1 / h + 1.0),
                    d2: -alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5),
                    noise: 0.0,
                }
            }
            DpmAlgorithm::DpmSolver => {
                let ep1 = h.exp() - 1.0;
                Self {
                    sample: alpha_t / alpha_s0,
                    d0: -sigma_t * ep1,
                    d1: if heun {
                        -sigma_t * (ep1 / h - 1.0)
                    } else {
                        -0.5 * sigma_t * ep1
                    },
                    d1_3: -sigma_t * (ep1 / h - 1.0),
                    d2: -sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5),
                    noise: 0.0,
                }
            }
            DpmAlgorithm::SdeDpmSolverPlusPlus => {
                // 1 − e^{−2h}; at the final σ = 0, h = +∞ and this is 1 while σ_t = 0.
                let one_m = 1.0 - (-2.0 * h).exp();
                Self {
                    sample: sigma_t / sigma_s0 * (-h).exp(),
                    d0: alpha_t * one_m,
                    d1: if heun {
                        alpha_t * (one_m / (-2.0 * h) + 1.0)
                    } else {
                        0.5 * alpha_t * one_m
                    },
                    d1_3: alpha_t * (one_m / (-2.0 * h) + 1.0),
                    d2: alpha_t * ((one_m - 2.0 * h) / (2.0 * h).powi(2) - 0.5),
                    noise: sigma_t * one_m.sqrt(),
                }
            }
            DpmAlgorithm::SdeDpmSolver => {
                let ep1 = h.exp() - 1.0;
                Self {
                    sample: alpha_t / alpha_s0,
                    d0: -2.0 * sigma_t * ep1,
                    d1: if heun {
                        -2.0 * sigma_t * (ep1 / h - 1.0)
                    } else {
                        -sigma_t * ep1
                    },
                    // diffusers has no third-order sde-dpmsolver update; options refuse order 3.
                    d1_3: f64::NAN,
                    d2: f64::NAN,
                    noise: sigma_t * ((2.0 * h).exp() - 1.0).sqrt(),
                }
            }
        }
    }
}

/// DPM-Solver's update from level `i` to `i+1` of order `order`: coefficients on x and on the
/// converted outputs by age, and the noise coefficient (the SDE variants; else 0).
fn dpm_update(
    opts: &SolverOptions,
    lambdas: &[f64],
    sig: &[(f64, f64)],
    i: usize,
    order: usize,
) -> (Combination, f64) {
    let h = lambdas[i + 1] - lambdas[i];
    let terms = DpmTerms::new(opts, sig[i + 1], sig[i], h);
    // x_t = sample·x + d0·D0 + d1·D1 + d2·D2, with D0 = m0 and D1, D2 divided differences.
    let mut c = Combination {
        sample: terms.sample,
        ..Default::default()
    };
    c.outputs[0] = terms.d0;
    if order == 1 {
        return (c, terms.noise);
    }
    let r0 = (lambdas[i] - lambdas[i - 1]) / h;
    if order == 2 {
        // D1 = (m0 − m1)/r0
        c.outputs[0] += terms.d1 / r0;
        c.outputs[1] -= terms.d1 / r0;
        return (c, terms.noise);
    }
    let r1 = (lambdas[i - 1] - lambdas[i - 2]) / h;
    let (d1, d2) = (terms.d1_3, terms.d2);
    // D1 = (1 + k)·D1_0 − k·D1_1, D2 = j·(D1_0 − D1_1), D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1.
    let k = r0 / (r0 + r1);
    let j = 1.0 / (r0 + r1);
    let u = d1 * (1.0 + k) + d2 * j;
    let v = -d1 * k - d2 * j;
    c.outputs[0] += u / r0;
    c.outputs[1] += -u / r0 + v / r1;
    c.outputs[2] -= v / r1;
    (c, terms.noise)
}

/// What UniPC's predictor and corrector share, for a move from level `s0` to level `t` of
/// order `order`: the update is
/// `x_t = A·x − K·h_phi_1·m0 − K·B_h·Σ_k ρ_k (m_k − m0)/r_k`, with K = α_t (x0) or σ_t (ε),
/// m_k the converted output at level s0−k and r_k = (λ_{s0−k} − λ_{s0})/h.
struct UniPcTerms {
    sample: f64,
    k: f64,
    h_phi_1: f64,
    b_h: f64,
    /// The right-hand side b of length `order`.
    b: Vec<f64>,
    /// r_1 … r_{order−1}, then 1.
    rks: Vec<f64>,
}

impl UniPcTerms {
    fn new(
        opts: &SolverOptions,
        lambdas: &[f64],
        sig: &[(f64, f64)],
        s0: usize,
        t: usize,
        order: usize,
    ) -> Self {
        let ((alpha_t, sigma_t), (alpha_s0, sigma_s0)) = (sig[t], sig[s0]);
        let h = lambdas[t] - lambdas[s0];
        let rks = (1..order)
            .map(|k| (lambdas[s0 - k] - lambdas[s0]) / h)
            .chain([1.0])
            .collect();
        let hh = if opts.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let b_h = match opts.solver_type {
            SolverType::Bh1 => hh,
            _ => hh.exp_m1(),
        };
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        let (sample, k) = if opts.predict_x0 {
            (sigma_t / sigma_s0, alpha_t)
        } else {
            (alpha_t / alpha_s0, sigma_t)
        };
        Self {
            sample,
            k,
            h_phi_1,
            b_h,
            b,
            rks,
        }
    }

    /// The matrix R[i][j] = rks[j]^i, its first `n` rows and columns.
    fn vandermonde(&self, n: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| self.rks[..n].iter().map(|r| r.powi(i as i32)).collect())
            .collect()
    }

    /// The update as coefficients by age, m0 being `base` steps old and m_k `base + k`.
    fn combination(&self, rhos: &[f64], base: usize) -> Combination {
        let mut c = Combination {
            sample: self.sample,
            ..Default::default()
        };
        c.outputs[base] = -self.k * self.h_phi_1;
        for (k, rho) in rhos.iter().enumerate() {
            let w = self.k * self.b_h * rho / self.rks[k];
            c.outputs[base] += w;
            c.outputs[base + k + 1] -= w;
        }
        c
    }
}

/// UniPC's predictor from level `i` to `i+1` (`multistep_uni_p_bh_update`).
fn unipc_predictor(
    opts: &SolverOptions,
    lambdas: &[f64],
    sig: &[(f64, f64)],
    i: usize,
    order: usize,
) -> Result<Combination> {
    let terms = UniPcTerms::new(opts, lambdas, sig, i, i + 1, order);
    let rhos = match order {
        1 => vec![],
        2 => vec![0.5],
        _ => solve(terms.vandermonde(order - 1), terms.b[..order - 1].to_vec())?,
    };
    Ok(terms.combination(&rhos, 0))
}

/// UniPC's corrector at level `i` (`multistep_uni_c_bh_update`): corrects the sample the
/// previous predictor gave, from `last` (the sample at level i−1), the outputs before this
/// step (m0 one step old) and this step's output (age 0) through the extra term
/// `− K·B_h·ρ_last·(y_0 − m0)`.
fn unipc_corrector(
    opts: &SolverOptions,
    lambdas: &[f64],
    sig: &[(f64, f64)],
    i: usize,
    order: usize,
) -> Result<Combination> {
    let terms = UniPcTerms::new(opts, lambdas, sig, i - 1, i, order);
    let rhos = if order == 1 {
        vec![0.5]
    } else {
        solve(terms.vandermonde(order), terms.b.clone())?
    };
    let mut c = terms.combination(&rhos[..order - 1], 1);
    let w = terms.k * terms.b_h * rhos[order - 1];
    c.outputs[0] -= w;
    c.outputs[1] += w;
    Ok(c)
}

impl MultistepTable {
    /// The rows of `n` steps of the solver `opts` on the schedule of `cfg`.
    pub fn new(cfg: &SchedulerConfig, opts: &SolverOptions, n: usize) -> Result<Self> {
        if opts.family == SolverFamily::Pndm {
            return Self::pndm(cfg, opts, n);
        }
        let n_asked = n;
        let (ts, sigmas) = solver_sigmas(cfg, opts, n)?;
        let n = ts.len();
        // lambda_min_clipped can leave out every timestep (found by fuzzing).
        ensure!(
            n > 0,
            "no timestep is left to sample: lambda_min_clipped = {} leaves out all {n_asked} \
             steps; lower it (diffusers' default is -inf)",
            opts.lambda_min_clipped,
        );
        let sig: Vec<(f64, f64)> = sigmas
            .iter()
            .map(|&s| {
                let (a, st, _) = alpha_sigma_lambda(s);
                (a, st)
            })
            .collect();
        // σ = 0 has α = 1, σ_t = 0 and λ = +∞ (torch's log(0) = −∞).
        let lambdas: Vec<f64> = sigmas.iter().map(|&s| alpha_sigma_lambda(s).2).collect();
        if let Some(i) = (0..n).find(|&i| !(sigmas[i].is_finite() && sigmas[i] > 0.0)) {
            bail!(
                "the noise level σ at timestep {} is {}: ᾱ there is 0 or 1, which these solvers \
                 cannot step from; check the betas",
                ts[i],
                sigmas[i]
            );
        }
        // diffusers finds the first step by looking its timestep up, taking the second match when
        // it repeats, and then runs past the end of its σ table.
        ensure!(
            !ts[1..].contains(&ts[0]),
            "the first timestep {} repeats ({ts:?}); diffusers cannot run such a schedule: use \
             fewer steps or other sigmas",
            ts[0]
        );
        let mut steps = Vec::with_capacity(n);
        let mut prev_order = 0;
        for (i, &t) in ts.iter().enumerate() {
            let lower_nums = i.min(opts.order);
            let (order, corrector_order) = match opts.family {
                SolverFamily::DpmSolver => {
                    let last = i == n - 1;
                    let final_first = last
                        && (opts.euler_at_final
                            || (opts.lower_order_final && n < 15)
                            || opts.final_sigmas == FinalSigmas::Zero);
                    let final_second = i + 2 == n && opts.lower_order_final && n < 15;
                    let order = if opts.order == 1 || lower_nums < 1 || final_first {
                        1
                    } else if opts.order == 2 || lower_nums < 2 || final_second {
                        2
                    } else {
                        3
                    };
                    (order, 0)
                }
                SolverFamily::UniPc => {
                    let cap = if opts.lower_order_final {
                        opts.order.min(n - i)
                    } else {
                        opts.order
                    };
                    let corrects = i > 0 && !opts.disable_corrector.contains(&(i - 1));
                    (
                        cap.min(lower_nums + 1),
                        if corrects { prev_order } else { 0 },
                    )
                }
                SolverFamily::Pndm => unreachable!("PNDM tables are built by schedule::pndm"),
            };
            let (predictor, noise) = match opts.family {
                SolverFamily::DpmSolver => dpm_update(opts, &lambdas, &sig, i, order),
                _ => (unipc_predictor(opts, &lambdas, &sig, i, order)?, 0.0),
            };
            let corrector = if corrector_order > 0 {
                unipc_corrector(opts, &lambdas, &sig, i, corrector_order)?
            } else {
                Combination::default()
            };
            steps.push(MultistepStep {
                t,
                sigma: sigmas[i],
                sigma_next: sigmas[i + 1],
                alpha_s: sig[i].0,
                sigma_s: sig[i].1,
                lambda: lambdas[i],
                lambda_next: lambdas[i + 1],
                order,
                noise,
                corrector_order,
                corrector,
                predictor,
            });
            prev_order = order;
        }
        let history = steps
            .iter()
            .map(|s| s.predictor.depth().max(s.corrector.depth()))
            .max()
            .unwrap_or(1)
            .max(1);
        if let Some((i, bad)) = steps.iter().enumerate().find(|(_, s)| {
            !(s.predictor.sample.is_finite()
                && s.noise.is_finite()
                && s.predictor.outputs.iter().all(|c| c.is_finite())
                && s.corrector.outputs.iter().all(|c| c.is_finite()))
        }) {
            bail!(
                "{} step {i} (t = {}) has a coefficient that is not finite: {:?}",
                opts.family.class_name(),
                bad.t,
                bad.predictor
            );
        }
        Ok(Self {
            options: opts.clone(),
            prediction: cfg.prediction_type,
            limit: if cfg.thresholding {
                X0Limit::Threshold {
                    ratio: cfg.dynamic_thresholding_ratio,
                    max_value: cfg.sample_max_value,
                }
            } else {
                X0Limit::None
            },
            predicts_x0: opts.predicts_x0(),
            raw_outputs: false,
            draws_noise: opts.family == SolverFamily::DpmSolver && opts.algorithm.is_sde(),
            steps,
            history,
        })
    }

    /// PNDM's transfers as rows: the raw model outputs kept, a transfer from `cur_sample` read
    /// through the corrector as `x = 1·last` (saved by the step before, whose next step
    /// corrects).
    fn pndm(cfg: &SchedulerConfig, opts: &SolverOptions, n: usize) -> Result<Self> {
        let mut steps = Vec::new();
        for (c, p) in pndm_steps(cfg, opts, n)?.into_iter().enumerate() {
            let mut predictor = Combination {
                sample: p.sample,
                ..Default::default()
            };
            for (age, w) in p.outputs {
                ensure!(
                    age < MAX_HISTORY,
                    "PNDM step {c} reads the output of {age} steps before; {MAX_HISTORY} are kept"
                );
                predictor.outputs[age] += w;
            }
            let sigma = ((1.0 - p.alpha_t) / p.alpha_t).sqrt();
            let sigma_next = ((1.0 - p.alpha_next) / p.alpha_next).sqrt();
            steps.push(MultistepStep {
                t: p.t,
                sigma,
                sigma_next,
                alpha_s: p.alpha_t.sqrt(),
                sigma_s: (1.0 - p.alpha_t).sqrt(),
                lambda: -sigma.ln(),
                lambda_next: -sigma_next.ln(),
                // The number of outputs combined: 4 for Runge–Kutta's last and full PLMS.
                order: predictor.outputs.iter().filter(|&&w| w != 0.0).count(),
                noise: 0.0,
                corrector_order: p.from_cur_sample as usize,
                corrector: Combination {
                    sample: if p.from_cur_sample { 1.0 } else { 0.0 },
                    ..Default::default()
                },
                predictor,
            });
        }
        let history = steps
            .iter()
            .map(|s| s.predictor.depth())
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Self {
            options: opts.clone(),
            prediction: cfg.prediction_type,
            limit: X0Limit::None,
            predicts_x0: false,
            raw_outputs: true,
            draws_noise: false,
            steps,
            history,
        })
    }

    /// Whether the converted output is thresholded: the data prediction always is when
    /// thresholding is on; DPM-Solver's ε is re-derived from the thresholded x0; UniPC's ε is not.
    pub fn thresholds(&self) -> bool {
        matches!(self.limit, X0Limit::Threshold { .. })
            && (self.predicts_x0 || self.options.family == SolverFamily::DpmSolver)
    }
}

/// The state a multistep run carries between steps on the CPU.
#[derive(Clone, Debug, Default)]
pub struct MultistepState {
    /// Converted outputs, newest first (f32, as diffusers keeps them).
    pub outputs: Vec<Vec<f32>>,
    /// UniPC: the sample the last predictor started from.
    pub last_sample: Option<Vec<f32>>,
}

/// Step `i` of `table` on the CPU: `sample` (x at this level) and `model_output` in, the next
/// sample out (and the data prediction, thresholded where the solver thresholds); `state`
/// carries the history. Arithmetic per element in f64, stored as f32 where
/// diffusers stores a tensor.
pub fn multistep_step(
    table: &MultistepTable,
    i: usize,
    model_output: &[f32],
    sample: &[f32],
    batch: usize,
    state: &mut MultistepState,
) -> Result<StepOutput> {
    multistep_step_noisy(table, i, model_output, sample, None, batch, state)
}

/// [`multistep_step`] with this step's noise draw `noise` (NCHW like the sample), which the SDE
/// variants need at every step (`table.draws_noise`) and the other solvers refuse.
pub fn multistep_step_noisy(
    table: &MultistepTable,
    i: usize,
    model_output: &[f32],
    sample: &[f32],
    noise: Option<&[f32]>,
    batch: usize,
    state: &mut MultistepState,
) -> Result<StepOutput> {
    check_shapes(sample, model_output, noise, batch)?;
    ensure!(
        noise.is_some() == table.draws_noise,
        "step {i}: {} noise was given, the solver {}",
        if noise.is_some() { "a" } else { "no" },
        if table.draws_noise {
            "draws noise at every step"
        } else {
            "draws none"
        }
    );
    let Some(step) = table.steps.get(i) else {
        bail!("step {i} of a {}-step run", table.steps.len());
    };
    let need = step
        .predictor
        .depth()
        .max(step.corrector.depth())
        .saturating_sub(1);
    ensure!(
        state.outputs.len() >= need,
        "step {i} combines {need} earlier outputs, {} are kept",
        state.outputs.len()
    );
    let (sa, sb) = (step.alpha_s, step.sigma_s);
    let pred = table.prediction;
    let n = sample.len();
    let mut x0 = Vec::with_capacity(n);
    let mut eps = Vec::with_capacity(n);
    for (&x, &m) in sample.iter().zip(model_output) {
        let (a, e) = x0_and_eps(pred, x as f64, m as f64, sa, sb);
        x0.push(a);
        eps.push(e);
    }
    if table.raw_outputs {
        // PNDM: the model output itself is kept (x0 only for trajectory frames).
        eps = model_output.iter().map(|&m| m as f64).collect();
    }
    if table.thresholds() {
        table.limit.apply(&mut x0, batch)?;
        if !table.predicts_x0 {
            for k in 0..n {
                eps[k] = (sample[k] as f64 - sa * x0[k]) / sb;
            }
        }
    }
    // diffusers computes ε = m directly for epsilon models; x0_and_eps already gives that.
    let y: Vec<f32> = if table.predicts_x0 { &x0 } else { &eps }
        .iter()
        .map(|&v| v as f32)
        .collect();
    let x0_out: Vec<f32> = if table.predicts_x0 {
        y.clone()
    } else if table.raw_outputs {
        x0.iter().map(|&v| v as f32).collect()
    } else {
        (0..n)
            .map(|k| ((sample[k] as f64 - sb * y[k] as f64) / sa) as f32)
            .collect()
    };
    let history = |age: usize| -> &[f32] {
        if age == 0 {
            &y
        } else {
            &state.outputs[age - 1]
        }
    };
    // `extra`: the SDE noise term (coefficient, draw), added before rounding.
    let combine = |c: &Combination, base: &[f32], extra: Option<(f64, &[f32])>| -> Vec<f32> {
        let depth = c.depth();
        (0..n)
            .map(|k| {
                let mut v = c.sample * base[k] as f64;
                if let Some((w, z)) = extra {
                    v += w * z[k] as f64;
                }
                for (age, &w) in c.outputs[..depth].iter().enumerate() {
                    if w != 0.0 {
                        v += w * history(age)[k] as f64;
                    }
                }
                v as f32
            })
            .collect()
    };
    let x = if step.corrector_order > 0 {
        let Some(last) = state.last_sample.as_deref() else {
            bail!("step {i} corrects but no earlier sample is kept");
        };
        combine(&step.corrector, last, None)
    } else {
        sample.to_vec()
    };
    let prev_sample = combine(&step.predictor, &x, noise.map(|z| (step.noise, z)));
    state.outputs.insert(0, y);
    state.outputs.truncate(table.history);
    state.last_sample = Some(x);
    Ok(StepOutput {
        prev_sample,
        pred_original_sample: x0_out,
    })
}
