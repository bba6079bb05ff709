//! Betas and ᾱ (`alphas_cumprod`), bit-identical to what diffusers stores (f32 tensors built by
//! torch on the CPU). The values are kept as f64 holding exact f32 numbers, so that everything
//! derived from them downstream is computed in f64 from exactly diffusers' inputs.

use anyhow::{bail, Result};

use super::config::{BetaSchedule, SchedulerConfig};

/// The training noise schedule of one config.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    /// β for t in 0..T (f32 values).
    pub betas: Vec<f64>,
    /// ᾱ_t = ∏_{s≤t} (1 − β_s) for t in 0..T (f32 values, as diffusers' `alphas_cumprod`).
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ used for levels below 0: 1 with `set_alpha_to_one`, else ᾱ\[0\]. DDIM's
    /// `final_alpha_cumprod` and DDIMInverse's `initial_alpha_cumprod`.
    pub final_alpha_cumprod: f64,
}

impl NoiseSchedule {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate()?;
        let mut betas = betas_f32(cfg);
        if cfg.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(0.0..=1.0).contains(*b))
        {
            bail!("beta[{i}] = {b} is outside [0, 1]; check beta_start, beta_end or trained_betas");
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod = cumprod_f64_acc(&alphas);
        let final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0] as f64
        };
        Ok(Self {
            betas: betas.iter().map(|&b| b as f64).collect(),
            alphas_cumprod: alphas_cumprod.iter().map(|&a| a as f64).collect(),
            final_alpha_cumprod,
        })
    }

    /// T, the number of training timesteps.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Always false (a schedule has at least one timestep); here for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// ᾱ at a noise level: `alphas_cumprod[level]`, or `final_alpha_cumprod` when `level < 0`.
    pub fn alpha_at(&self, level: i64) -> Result<f64> {
        if level < 0 {
            return Ok(self.final_alpha_cumprod);
        }
        match self.alphas_cumprod.get(level as usize) {
            Some(&a) => Ok(a),
            None => bail!(
                "timestep {level} is out of range for num_train_timesteps = {}",
                self.len()
            ),
        }
    }
}

impl NoiseSchedule {
    /// The forward process q(x_t | x0): sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise, per element in f64
    /// (diffusers' `add_noise` with one timestep for the whole batch).
    pub fn add_noise(&self, x0: &[f32], noise: &[f32], t: i64) -> Result<Vec<f32>> {
        if x0.len() != noise.len() {
            bail!(
                "noise has {} values but the sample has {}",
                noise.len(),
                x0.len()
            );
        }
        if t < 0 {
            bail!("add_noise needs a timestep >= 0, got {t}");
        }
        let a = self.alpha_at(t)?;
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        Ok(x0
            .iter()
            .zip(noise)
            .map(|(&x, &z)| (sa * x as f64 + sb * z as f64) as f32)
            .collect())
    }
}

/// The betas as diffusers builds them, before any rescaling.
fn betas_f32(cfg: &SchedulerConfig) -> Vec<f32> {
    let n = cfg.num_train_timesteps;
    if let Some(b) = &cfg.trained_betas {
        return b.iter().map(|&x| x as f32).collect();
    }
    match cfg.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(cfg.beta_start, cfg.beta_end, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
                .into_iter()
                .map(|v| v * v)
                .collect()
        }
        BetaSchedule::SquaredcosCapV2 => cosine_betas(n),
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU, bit for bit: the step is computed
/// in f32, the first half counts up from `start`, the second half down from `end`, and each
/// element is rounded once (torch's kernel is FMA-like).
pub fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n <= 1 {
        return vec![s; n];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                (s as f64 + step as f64 * i as f64) as f32
            } else {
                (e as f64 - step as f64 * (n - 1 - i) as f64) as f32
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar(n)` with the cosine transform and max_beta 0.999: Python
/// double arithmetic, cast to f32 at the end.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `torch.cumprod` of an f32 tensor on the CPU: accumulated in f64, each prefix stored as f32.
fn cumprod_f64_acc(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (arXiv 2305.08891, Algorithm 1), replaying torch's f32
/// operations in the same order so the result is bit-identical.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_ab: Vec<f32> = cumprod_f64_acc(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
    let scale = first / (first - last);
    for v in &mut sqrt_ab {
        *v = (*v - last) * scale;
    }
    let alphas_bar: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(betas.len());
    out.push(1.0 - alphas_bar[0]);
    for w in alphas_bar.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}
