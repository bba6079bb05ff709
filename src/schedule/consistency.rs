//! diffusers' `CMStochasticIterativeScheduler` (Song et al. 2023, consistency models), as
//! `ConsistencyModelPipeline` runs it.
//!
//! The schedule lives on the Karras ρ-ramp between σ_max and σ_min: ramp position u ↦
//! `K(u) = (σ_max^{1/ρ} + u·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ` (f64), index k of the T training
//! positions at u = k/(T−1). A run visits given indices (strictly descending, below T) or
//! `reverse(arange(n)·(T//n))`; its σ are `K(reverse(indices)/(T−1))` and the model timesteps
//! `250·ln σ` (f64, from the unrounded σ, fractional and possibly negative). Each step:
//!
//! ```text
//! model input  x / sqrt(σ² + σ_d²)                                      (c_in, f32)
//! denoised     c_out·m + c_skip·x, clamped to [−1, 1] with clip_denoised
//! x_next       denoised + s_noise·z·sqrt(clamp(σ_next, σ_min, σ_max)² − σ_min²)
//! ```
//!
//! with `c_skip = σ_d²/((σ−σ_min)² + σ_d²)`, `c_out = (σ−σ_min)·σ_d/sqrt(σ² + σ_d²)` from the f32
//! σ, and z drawn at every step (the last included) when the run has two steps or more. The
//! pipeline starts from its latents × σ_max.

use anyhow::{bail, ensure, Result};
use serde_json::{json, Value};

use super::config::SchedulerConfig;
use super::ddim::StepOutput;
use super::predict::check_shapes;

/// The scheduler's keys, with `CMStochasticIterativeScheduler`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsistencyConfig {
    pub num_train_timesteps: usize,
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub sigma_data: f64,
    pub s_noise: f64,
    pub rho: f64,
    pub clip_denoised: bool,
}

impl ConsistencyConfig {
    /// The keys of `cfg` (a scheduler config of any class) that this scheduler reads.
    pub fn from_config(cfg: &SchedulerConfig) -> Result<Self> {
        let c = Self {
            num_train_timesteps: cfg.count_or("num_train_timesteps", 40)?,
            sigma_min: cfg.number_or("sigma_min", 0.002)?,
            sigma_max: cfg.number_or("sigma_max", 80.0)?,
            sigma_data: cfg.number_or("sigma_data", 0.5)?,
            s_noise: cfg.number_or("s_noise", 1.0)?,
            rho: cfg.number_or("rho", 7.0)?,
            clip_denoised: cfg.flag_or("clip_denoised", true)?,
        };
        ensure!(
            c.num_train_timesteps >= 2,
            "CMStochasticIterativeScheduler needs num_train_timesteps >= 2, got {}",
            c.num_train_timesteps
        );
        ensure!(
            0.0 < c.sigma_min && c.sigma_min < c.sigma_max,
            "CMStochasticIterativeScheduler needs 0 < sigma_min < sigma_max, got {} and {}",
            c.sigma_min,
            c.sigma_max
        );
        ensure!(
            c.sigma_data > 0.0 && c.rho > 0.0 && c.s_noise >= 0.0,
            "CMStochasticIterativeScheduler needs sigma_data > 0, rho > 0 and s_noise >= 0, got \
             {}, {} and {}",
            c.sigma_data,
            c.rho,
            c.s_noise
        );
        Ok(c)
    }

    /// σ at ramp position `u` (f64, numpy's formula).
    fn karras(&self, u: f64) -> f64 {
        let (lo, hi) = (
            self.sigma_min.powf(1.0 / self.rho),
            self.sigma_max.powf(1.0 / self.rho),
        );
        (hi + u * (lo - hi)).powf(self.rho)
    }
}

/// One step of a consistency-model run; coefficients as diffusers computes them in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsistencyStep {
    /// The model timestep 250·ln σ (f64; the U-Net embeds it as f32).
    pub t: f64,
    /// The ramp index this step came from.
    pub index: usize,
    /// σ and the next σ (f32 values).
    pub sigma: f64,
    pub sigma_next: f64,
    /// The model input is `x / in_div` (in_div = sqrt(σ² + σ_d²), f32).
    pub in_div: f32,
    pub c_skip: f32,
    pub c_out: f32,
    /// Coefficient of this step's draw z: s_noise·sqrt(clamp(σ_next)² − σ_min²) (f32); 0 at
    /// the last step.
    pub noise: f32,
}

impl ConsistencyStep {
    pub fn to_json(&self) -> Value {
        json!({
            "t": self.t,
            "index": self.index,
            "sigma": self.sigma,
            "sigma_next": self.sigma_next,
            "c_in": 1.0 / self.in_div as f64,
            "c_skip": self.c_skip,
            "c_out": self.c_out,
            "noise": self.noise,
        })
    }
}

/// A whole consistency-model run.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsistencyTable {
    pub config: ConsistencyConfig,
    pub steps: Vec<ConsistencyStep>,
    /// Noise is drawn at every step when the run has two or more.
    pub draws_noise: bool,
}

impl ConsistencyTable {
    /// The run of `set_timesteps(n)` or, when `indices` is given, `set_timesteps(timesteps=
    /// indices)` (which wins over `n`, as in the pipeline).
    pub fn new(cfg: &SchedulerConfig, n: usize, indices: Option<&[usize]>) -> Result<Self> {
        let config = ConsistencyConfig::from_config(cfg)?;
        let t_train = config.num_train_timesteps;
        let indices: Vec<usize> = match indices {
            Some(given) => {
                ensure!(!given.is_empty(), "`timesteps`: no timestep given");
                if let Some(w) = given.windows(2).find(|w| w[1] >= w[0]) {
                    bail!(
                        "`timesteps` must be strictly descending, got {} then {}",
                        w[0],
                        w[1]
                    );
                }
                ensure!(
                    given[0] < t_train,
                    "`timesteps` must start below num_train_timesteps = {t_train}, got {}",
                    given[0]
                );
                given.to_vec()
            }
            None => {
                ensure!(n >= 1, "the number of inference steps must be at least 1");
                ensure!(
                    n <= t_train,
                    "{n} inference steps is more than num_train_timesteps = {t_train}"
                );
                let ratio = t_train / n;
                (0..n).rev().map(|i| i * ratio).collect()
            }
        };
        // Ramp positions ascend: the first step is σ at the smallest index.
        let sigmas: Vec<f64> = indices
            .iter()
            .rev()
            .map(|&k| config.karras(k as f64 / (t_train - 1) as f64))
            .collect();
        let sd2 = (config.sigma_data * config.sigma_data) as f32;
        let (smin, smax) = (config.sigma_min as f32, config.sigma_max as f32);
        let smin2 = (config.sigma_min * config.sigma_min) as f32;
        let sd = config.sigma_data as f32;
        let count = sigmas.len();
        let steps = (0..count)
            .map(|i| {
                let s = sigmas[i] as f32;
                let next = sigmas.get(i + 1).map_or(smin, |&v| v as f32);
                let d = (s * s + sd2).sqrt();
                let hat = next.clamp(smin, smax);
                ConsistencyStep {
                    t: 1000.0 * 0.25 * (sigmas[i] + 1e-44).ln(),
                    index: indices[count - 1 - i],
                    sigma: s as f64,
                    sigma_next: next as f64,
                    in_div: d,
                    c_skip: sd2 / ((s - smin) * (s - smin) + sd2),
                    c_out: (s - smin) * sd / d,
                    noise: (config.s_noise as f32) * (hat * hat - smin2).sqrt(),
                }
            })
            .collect();
        Ok(Self {
            config,
            steps,
            draws_noise: count > 1,
        })
    }

    /// `init_noise_sigma`: the pipeline multiplies its latents by this.
    pub fn init_noise_sigma(&self) -> f64 {
        self.config.sigma_max
    }
}

/// The model input of step `i`: `sample / sqrt(σ² + σ_d²)` in f32, as `scale_model_input`.
pub fn consistency_input(table: &ConsistencyTable, i: usize, sample: &[f32]) -> Result<Vec<f32>> {
    let Some(step) = table.steps.get(i) else {
        bail!("step {i} of a {}-step run", table.steps.len());
    };
    Ok(sample.iter().map(|&x| x / step.in_div).collect())
}

/// Step `i` on the CPU: the model output `m` for the (unscaled) `sample`, and this step's noise
/// draw when the run draws (`table.draws_noise`). `pred_original_sample` is the denoised sample.
pub fn consistency_step(
    table: &ConsistencyTable,
    i: usize,
    model_output: &[f32],
    sample: &[f32],
    noise: Option<&[f32]>,
    batch: usize,
) -> Result<StepOutput> {
    check_shapes(sample, model_output, noise, batch)?;
    let Some(step) = table.steps.get(i) else {
        bail!("step {i} of a {}-step run", table.steps.len());
    };
    ensure!(
        noise.is_some() == table.draws_noise,
        "consistency step {i}: {} noise was given, the run {}",
        if noise.is_some() { "a" } else { "no" },
        if table.draws_noise {
            "draws noise at every step"
        } else {
            "of one step draws none"
        }
    );
    let clip = table.config.clip_denoised;
    let denoised: Vec<f32> = model_output
        .iter()
        .zip(sample)
        .map(|(&m, &x)| {
            let d = (step.c_out as f64 * m as f64 + step.c_skip as f64 * x as f64) as f32;
            if clip {
                d.clamp(-1.0, 1.0)
            } else {
                d
            }
        })
        .collect();
    let prev_sample = match noise {
        Some(z) => denoised
            .iter()
            .zip(z)
            .map(|(&d, &z)| (d as f64 + step.noise as f64 * z as f64) as f32)
            .collect(),
        None => denoised.clone(),
    };
    Ok(StepOutput {
        prev_sample,
        pred_original_sample: denoised,
    })
}
