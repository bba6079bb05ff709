//! Shared pieces of every sampler step: turning the model output into (x0, ε), and limiting x0
//! by clipping or Imagen's dynamic thresholding. All arithmetic is f64.

use anyhow::{bail, Result};

use super::config::{PredictionType, SchedulerConfig};

/// (x0, ε) from the sample `x` and model output `m` at a level with ᾱ = a, given
/// `sa` = sqrt(a) and `sb` = sqrt(1 − a). Same formulas as diffusers' DDIM/DDPM `step`.
#[inline]
pub(crate) fn x0_and_eps(pred: PredictionType, x: f64, m: f64, sa: f64, sb: f64) -> (f64, f64) {
    match pred {
        PredictionType::Epsilon => ((x - sb * m) / sa, m),
        PredictionType::Sample => (m, (x - sa * m) / sb),
        PredictionType::VPrediction => (sa * x - sb * m, sa * m + sb * x),
    }
}

/// What is done to the predicted x0 before it is used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum X0Limit {
    None,
    /// Clamp to ±range.
    Clip(f64),
    /// Imagen dynamic thresholding, per batch element: s = quantile(|x0|, ratio) clamped to
    /// [1, max_value]; x0 = clamp(x0, −s, s) / s.
    Threshold {
        ratio: f64,
        max_value: f64,
    },
}

impl X0Limit {
    /// DDIMScheduler / DDPMScheduler: thresholding wins over clip_sample.
    pub fn from_config(cfg: &SchedulerConfig) -> Self {
        if cfg.thresholding {
            Self::Threshold {
                ratio: cfg.dynamic_thresholding_ratio,
                max_value: cfg.sample_max_value,
            }
        } else if cfg.clip_sample {
            Self::Clip(cfg.clip_sample_range)
        } else {
            Self::None
        }
    }

    /// DDIMInverseScheduler has no thresholding; only clip_sample applies.
    pub fn for_inverse(cfg: &SchedulerConfig) -> Self {
        if cfg.clip_sample {
            Self::Clip(cfg.clip_sample_range)
        } else {
            Self::None
        }
    }

    /// Applies the limit in place to `x0`, laid out as `batch` equal, contiguous samples
    /// (thresholding takes its quantile per sample).
    pub fn apply(self, x0: &mut [f64], batch: usize) -> Result<()> {
        if batch == 0 || x0.is_empty() || x0.len() % batch != 0 {
            bail!(
                "{} values cannot be split into a batch of {batch}",
                x0.len()
            );
        }
        match self {
            Self::None => {}
            Self::Clip(r) => x0.iter_mut().for_each(|v| *v = v.max(-r).min(r)),
            Self::Threshold { ratio, max_value } => {
                let per = x0.len() / batch;
                for sample in x0.chunks_mut(per) {
                    let s = torch_quantile_linear(sample.iter().map(|v| v.abs()).collect(), ratio);
                    // torch.clamp(s, min=1, max=max_value) is min(max(s, 1), max_value).
                    let s = s.max(1.0).min(max_value);
                    sample.iter_mut().for_each(|v| *v = v.max(-s).min(s) / s);
                }
            }
        }
        Ok(())
    }
}

/// `torch.quantile(values, q)` with the default linear interpolation: sort, take the order
/// statistics around q·(N−1) and interpolate with `torch.lerp`'s two-sided formula.
pub(crate) fn torch_quantile_linear(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let pos = q * (values.len() - 1) as f64;
    let lo = pos.floor();
    let (below, above) = (values[lo as usize], values[pos.ceil() as usize]);
    let w = pos - lo;
    if w < 0.5 {
        below + w * (above - below)
    } else {
        above - (above - below) * (1.0 - w)
    }
}

/// Checks that the tensors of one step agree in size and split evenly into `batch` samples.
pub(crate) fn check_shapes(
    sample: &[f32],
    model_output: &[f32],
    noise: Option<&[f32]>,
    batch: usize,
) -> Result<()> {
    let n = sample.len();
    if model_output.len() != n {
        bail!(
            "model output has {} values but the sample has {n}",
            model_output.len()
        );
    }
    if let Some(z) = noise {
        if z.len() != n {
            bail!("noise has {} values but the sample has {n}", z.len());
        }
    }
    if batch == 0 || n == 0 || n % batch != 0 {
        bail!("a sample of {n} values cannot be split into a batch of {batch}");
    }
    Ok(())
}
