//! What a run does at each step: the sampler, its settings, and the per-step coefficients
//! computed once per run (in f64, diffusers-exact) that both devices consume.

use crate::schedule::{
    ddim_table, ddpm_table, inverse_table, DdimStep, DdpmStep, DdpmVariance, SchedulerConfig,
    X0Limit,
};
use anyhow::{ensure, Result};

/// Which reverse process to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// DDIM (Song et al. 2021): deterministic at eta = 0, DDPM-like variance at eta = 1.
    Ddim,
    /// Ancestral DDPM (Ho et al. 2020) with the scheduler's variance_type.
    Ddpm,
}

/// What to run: sampler, number of steps, eta.
#[derive(Clone, Debug)]
pub struct SampleSettings {
    pub sampler: SamplerKind,
    pub steps: usize,
    /// DDIM's eta in [0, 1]; ignored by DDPM.
    pub eta: f64,
    /// diffusers' `use_clipped_model_output`: re-derive ε from the clipped x0.
    pub use_clipped_model_output: bool,
}

impl Default for SampleSettings {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Ddim,
            steps: 50,
            eta: 0.0,
            use_clipped_model_output: false,
        }
    }
}

/// The per-step coefficients of one run, in loop order, with the options the update needs.
#[derive(Clone, Debug)]
pub enum SamplerSteps {
    Ddim {
        steps: Vec<DdimStep>,
        eta: f64,
        use_clipped_model_output: bool,
    },
    Ddpm(Vec<DdpmStep>),
    /// DDIM inversion (x0 → x_T), diffusers' DDIMInverseScheduler.
    Inverse(Vec<DdimStep>),
}

impl SamplerSteps {
    pub fn new(cfg: &SchedulerConfig, settings: &SampleSettings) -> Result<Self> {
        ensure!(settings.steps > 0, "the number of steps must be at least 1");
        Ok(match settings.sampler {
            SamplerKind::Ddim => Self::Ddim {
                steps: ddim_table(cfg, settings.steps, settings.eta)?,
                eta: settings.eta,
                use_clipped_model_output: settings.use_clipped_model_output,
            },
            SamplerKind::Ddpm => Self::Ddpm(ddpm_table(
                cfg,
                settings.steps,
                DdpmVariance::from_config(cfg)?,
            )?),
        })
    }

    /// Deterministic DDIM (eta 0) for `steps` steps: the decoder of inversion and interpolation.
    pub fn ddim_eta0(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        Self::new(
            cfg,
            &SampleSettings {
                sampler: SamplerKind::Ddim,
                steps,
                eta: 0.0,
                use_clipped_model_output: false,
            },
        )
    }

    /// The DDIM inversion table for `steps` steps.
    pub fn inverse(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        ensure!(steps > 0, "the number of steps must be at least 1");
        Ok(Self::Inverse(inverse_table(cfg, steps)?))
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Ddim { steps, .. } | Self::Inverse(steps) => steps.len(),
            Self::Ddpm(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The model timestep of step `i`.
    pub fn timestep(&self, i: usize) -> i64 {
        match self {
            Self::Ddim { steps, .. } | Self::Inverse(steps) => steps[i].t,
            Self::Ddpm(s) => s[i].t,
        }
    }

    /// Whether step `i` draws a noise tensor, exactly as diffusers does: DDIM draws at every
    /// step when eta > 0 (even where sigma is 0); DDPM draws when t > 0.
    pub fn draws_noise(&self, i: usize) -> bool {
        match self {
            Self::Ddim { eta, .. } => *eta > 0.0,
            Self::Ddpm(s) => s[i].t > 0,
            Self::Inverse(_) => false,
        }
    }

    /// How the predicted x0 is limited (clipping or thresholding), as the update applies it.
    pub fn x0_limit(&self, cfg: &SchedulerConfig) -> X0Limit {
        match self {
            Self::Inverse(_) => X0Limit::for_inverse(cfg),
            _ => X0Limit::from_config(cfg),
        }
    }

    /// Whether ε is re-derived from the limited x0 (DDIM's `use_clipped_model_output`).
    pub fn use_clipped_model_output(&self) -> bool {
        matches!(
            self,
            Self::Ddim {
                use_clipped_model_output: true,
                ..
            }
        )
    }
}
