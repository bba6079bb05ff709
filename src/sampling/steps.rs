//! What a run does at each step: the sampler, its settings, and the per-step coefficients
//! computed once per run (in f64, diffusers-exact) that both devices consume.

use crate::schedule::{
    ddim_table, ddpm_table, inverse_table, ConsistencyTable, DdimStep, DdpmStep, DdpmVariance,
    MultistepTable, SchedulerConfig, SigmaKeys, SigmaOptions, SigmaSampler, SigmaTable,
    SolverFamily, SolverKeys, SolverOptions, X0Limit,
};
use anyhow::{ensure, Result};

/// Which reverse process to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// DDIM (Song et al. 2021): deterministic at eta = 0, DDPM-like variance at eta = 1.
    Ddim,
    /// Ancestral DDPM (Ho et al. 2020) with the scheduler's variance_type.
    Ddpm,
    /// DPM-Solver++ (Lu et al. 2022), multistep, diffusers' DPMSolverMultistepScheduler.
    #[serde(rename = "dpm-solver++")]
    DpmSolverPlusPlus,
    /// UniPC (Zhao et al. 2023), diffusers' UniPCMultistepScheduler.
    Unipc,
    /// Euler's method in σ (Karras et al. 2022), diffusers' EulerDiscreteScheduler.
    Euler,
    /// Euler ancestral, diffusers' EulerAncestralDiscreteScheduler.
    #[serde(rename = "euler-ancestral")]
    EulerAncestral,
    /// Heun's method in σ (Karras et al. 2022), diffusers' HeunDiscreteScheduler.
    Heun,
    /// Linear multistep in σ, diffusers' LMSDiscreteScheduler.
    Lms,
    /// PNDM (Liu et al. 2022), diffusers' PNDMScheduler.
    Pndm,
    /// Consistency models (Song et al. 2023), diffusers' CMStochasticIterativeScheduler.
    Consistency,
}

/// diffusers' class name of the consistency-model scheduler.
const CONSISTENCY_CLASS: &str = "CMStochasticIterativeScheduler";

impl SamplerKind {
    /// Every sampler, in the order a list of choices shows them.
    pub const ALL: [Self; 10] = [
        Self::Ddim,
        Self::Ddpm,
        Self::DpmSolverPlusPlus,
        Self::Unipc,
        Self::Euler,
        Self::EulerAncestral,
        Self::Heun,
        Self::Lms,
        Self::Pndm,
        Self::Consistency,
    ];

    /// The multistep solver family, if this is one.
    pub fn solver_family(self) -> Option<SolverFamily> {
        match self {
            Self::DpmSolverPlusPlus => Some(SolverFamily::DpmSolver),
            Self::Unipc => Some(SolverFamily::UniPc),
            Self::Pndm => Some(SolverFamily::Pndm),
            _ => None,
        }
    }

    /// The σ-space sampler, if this is one.
    pub fn sigma_sampler(self) -> Option<SigmaSampler> {
        match self {
            Self::Euler => Some(SigmaSampler::Euler),
            Self::EulerAncestral => Some(SigmaSampler::EulerAncestral),
            Self::Heun => Some(SigmaSampler::Heun),
            Self::Lms => Some(SigmaSampler::Lms),
            _ => None,
        }
    }

    /// The sampler a scheduler config selects by its `_class_name`: a multistep solver, PNDM,
    /// one of the four σ-space samplers or the consistency sampler, else DDIM (as
    /// `DDIMPipeline` converts any config to DDIM).
    pub fn from_config(cfg: &SchedulerConfig) -> Self {
        let class = cfg.class_name.as_deref();
        if class == Some(CONSISTENCY_CLASS) {
            return Self::Consistency;
        }
        match class.and_then(SigmaSampler::from_class_name) {
            Some(SigmaSampler::Euler) => return Self::Euler,
            Some(SigmaSampler::EulerAncestral) => return Self::EulerAncestral,
            Some(SigmaSampler::Heun) => return Self::Heun,
            Some(SigmaSampler::Lms) => return Self::Lms,
            None => {}
        }
        match class.and_then(SolverFamily::from_class_name) {
            Some(SolverFamily::DpmSolver) => Self::DpmSolverPlusPlus,
            Some(SolverFamily::UniPc) => Self::Unipc,
            Some(SolverFamily::Pndm) => Self::Pndm,
            None => Self::Ddim,
        }
    }

    /// Its name: `ddim`, `ddpm`, `dpm-solver++`, `unipc`, `euler`, `euler-ancestral`, `heun`
    /// or `lms`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Ddpm => "ddpm",
            Self::DpmSolverPlusPlus => "dpm-solver++",
            Self::Unipc => "unipc",
            Self::Euler | Self::EulerAncestral | Self::Heun | Self::Lms => {
                self.sigma_sampler().map_or("?", SigmaSampler::as_str)
            }
            Self::Pndm => "pndm",
            Self::Consistency => "consistency",
        }
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = anyhow::Error;

    /// The sampler named `s` (as [`SamplerKind::as_str`] writes it).
    fn from_str(s: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|k| k.as_str() == s) {
            Some(k) => Ok(k),
            None => anyhow::bail!(
                "unknown sampler {s:?}: expected one of {}",
                Self::ALL.map(Self::as_str).join(", ")
            ),
        }
    }
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
    /// Options of the multistep solvers that override the scheduler config's (none for DDIM and
    /// DDPM: giving one there is an error).
    pub solver: SolverKeys,
    /// Options of the σ-space samplers (Euler, Euler ancestral, Heun, LMS) that override the
    /// scheduler config's (none for the others: giving one there is an error).
    pub sigma: SigmaKeys,
    /// The consistency sampler's given timesteps (ramp indices, strictly descending); they win
    /// over `steps`. Refused by every other sampler.
    pub timesteps: Option<Vec<usize>>,
}

impl Default for SampleSettings {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Ddim,
            steps: 50,
            eta: 0.0,
            use_clipped_model_output: false,
            solver: SolverKeys::default(),
            sigma: SigmaKeys::default(),
            timesteps: None,
        }
    }
}

/// Solver options are refused for the samplers that have none.
fn no_solver_keys(settings: &SampleSettings) -> Result<()> {
    no_sigma_keys(settings)?;
    match settings.solver.given().first() {
        Some((key, _)) => anyhow::bail!(
            "`{key}` is an option of the multistep solvers (dpm-solver++, unipc, pndm), not of {}",
            settings.sampler.as_str()
        ),
        None => Ok(()),
    }
}

/// σ-sampler options are refused for the samplers that have none.
fn no_sigma_keys(settings: &SampleSettings) -> Result<()> {
    match settings.sigma.given().first() {
        Some((key, _)) => anyhow::bail!(
            "`{key}` is an option of the σ-space samplers (euler, euler-ancestral, heun, lms), \
             not of {}",
            settings.sampler.as_str()
        ),
        None => Ok(()),
    }
}

/// The table of a σ-space sampler: the config's keys, then the settings' overrides.
fn sigma(
    cfg: &SchedulerConfig,
    settings: &SampleSettings,
    sampler: SigmaSampler,
) -> Result<SamplerSteps> {
    ensure!(
        settings.eta == 0.0 && !settings.use_clipped_model_output,
        "eta and use_clipped_model_output are options of DDIM, not of {}",
        settings.sampler.as_str()
    );
    let options = SigmaOptions::resolve(sampler, cfg, &settings.solver, &settings.sigma)?;
    Ok(SamplerSteps::Sigma(SigmaTable::new(
        cfg,
        &options,
        settings.steps,
    )?))
}

/// Given timesteps are the consistency sampler's alone.
fn no_timesteps(settings: &SampleSettings) -> Result<()> {
    ensure!(
        settings.timesteps.is_none(),
        "`timesteps` is an option of the consistency sampler, not of {}",
        settings.sampler.as_str()
    );
    Ok(())
}

/// The table of a multistep solver: the config's solver keys, then the settings' overrides.
fn multistep(
    cfg: &SchedulerConfig,
    settings: &SampleSettings,
    family: SolverFamily,
) -> Result<SamplerSteps> {
    ensure!(
        settings.eta == 0.0 && !settings.use_clipped_model_output,
        "eta and use_clipped_model_output are options of DDIM, not of {}",
        settings.sampler.as_str()
    );
    no_sigma_keys(settings)?;
    let options = SolverOptions::resolve(family, &cfg.solver_keys, &settings.solver)?;
    Ok(SamplerSteps::Multistep(MultistepTable::new(
        cfg,
        &options,
        settings.steps,
    )?))
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
    /// DPM-Solver(++) (and its SDE variants), UniPC or PNDM: linear multistep updates over the
    /// kept model outputs.
    Multistep(MultistepTable),
    /// Euler, Euler ancestral, Heun or LMS: one row per model evaluation in σ-space.
    Sigma(SigmaTable),
    /// Consistency models: denoise, clip, renoise.
    Consistency(ConsistencyTable),
}

impl SamplerSteps {
    pub fn new(cfg: &SchedulerConfig, settings: &SampleSettings) -> Result<Self> {
        ensure!(settings.steps > 0, "the number of steps must be at least 1");
        let steps = settings.steps;
        if settings.sampler != SamplerKind::Consistency {
            no_timesteps(settings)?;
        }
        Ok(match settings.sampler {
            SamplerKind::Ddim => {
                no_solver_keys(settings)?;
                Self::Ddim {
                    steps: ddim_table(cfg, steps, settings.eta)?,
                    eta: settings.eta,
                    use_clipped_model_output: settings.use_clipped_model_output,
                }
            }
            SamplerKind::Ddpm => {
                no_solver_keys(settings)?;
                Self::Ddpm(ddpm_table(cfg, steps, DdpmVariance::from_config(cfg)?)?)
            }
            SamplerKind::DpmSolverPlusPlus => multistep(cfg, settings, SolverFamily::DpmSolver)?,
            SamplerKind::Unipc => multistep(cfg, settings, SolverFamily::UniPc)?,
            SamplerKind::Euler => sigma(cfg, settings, SigmaSampler::Euler)?,
            SamplerKind::EulerAncestral => sigma(cfg, settings, SigmaSampler::EulerAncestral)?,
            SamplerKind::Heun => sigma(cfg, settings, SigmaSampler::Heun)?,
            SamplerKind::Lms => sigma(cfg, settings, SigmaSampler::Lms)?,
            SamplerKind::Pndm => multistep(cfg, settings, SolverFamily::Pndm)?,
            SamplerKind::Consistency => {
                no_solver_keys(settings)?;
                ensure!(
                    settings.eta == 0.0 && !settings.use_clipped_model_output,
                    "eta and use_clipped_model_output are options of DDIM, not of consistency"
                );
                Self::Consistency(ConsistencyTable::new(
                    cfg,
                    steps,
                    settings.timesteps.as_deref(),
                )?)
            }
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
                solver: SolverKeys::default(),
                sigma: SigmaKeys::default(),
                timesteps: None,
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
            Self::Multistep(m) => m.steps.len(),
            Self::Sigma(s) => s.steps.len(),
            Self::Consistency(c) => c.steps.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The model timestep of step `i`: an integer for DDIM, DDPM and the multistep solvers,
    /// possibly fractional for the σ-space samplers, fractional and possibly negative for the
    /// consistency sampler (250·ln σ). The U-Net embeds it as f32.
    pub fn timestep(&self, i: usize) -> f64 {
        match self {
            Self::Ddim { steps, .. } | Self::Inverse(steps) => steps[i].t as f64,
            Self::Ddpm(s) => s[i].t as f64,
            Self::Multistep(m) => m.steps[i].t as f64,
            Self::Sigma(s) => s.steps[i].t as f64,
            Self::Consistency(c) => c.steps[i].t,
        }
    }

    /// diffusers' `init_noise_sigma`: the pipeline multiplies its starting latents by it (σ_max
    /// or sqrt(σ_max² + 1) for the σ-space samplers, 80 for the consistency sampler, else 1).
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Self::Sigma(s) => s.init_noise_sigma as f64,
            Self::Consistency(c) => c.init_noise_sigma(),
            _ => 1.0,
        }
    }

    /// Whether step `i` draws a noise tensor, exactly as diffusers does: DDIM draws at every
    /// step when eta > 0 (even where sigma is 0); DDPM draws when t > 0; the SDE solvers at
    /// every step; the consistency sampler at every step of a run of two or more.
    pub fn draws_noise(&self, i: usize) -> bool {
        match self {
            Self::Ddim { eta, .. } => *eta > 0.0,
            Self::Ddpm(s) => s[i].t > 0,
            Self::Sigma(s) => s.steps[i].draws,
            Self::Multistep(m) => m.draws_noise,
            Self::Consistency(c) => c.draws_noise,
            Self::Inverse(_) => false,
        }
    }

    /// How the predicted x0 is limited (clipping or thresholding), as the update applies it.
    pub fn x0_limit(&self, cfg: &SchedulerConfig) -> X0Limit {
        match self {
            Self::Inverse(_) => X0Limit::for_inverse(cfg),
            Self::Multistep(m) => m.limit,
            Self::Sigma(s) => s.options.clip.map_or(X0Limit::None, X0Limit::Clip),
            Self::Consistency(_) => X0Limit::None,
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
