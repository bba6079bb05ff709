//! Noise schedules and sampler coefficients, computed in f64 on the host.
//!
//! Everything starts from a [`SchedulerConfig`] (a diffusers `scheduler_config.json`). From it:
//! - [`NoiseSchedule`]: betas and ᾱ exactly as diffusers stores them (f32 values held in f64);
//! - [`timesteps()`] / [`inverse_timesteps`]: the inference timesteps, exactly as diffusers'
//!   `set_timesteps` (plus ermongroup/ddim's `uniform` and `quad`);
//! - [`ddim_table`], [`inverse_table`], [`ddpm_table`]: one coefficient row per model evaluation,
//!   shared by the CPU steps below and the GPU kernels (uploaded as f32);
//! - [`ddim_step`], [`inverse_step`], [`ddpm_step`]: the CPU reference steps on f32 tensors,
//!   computed per element in f64;
//! - [`MultistepTable`] / [`multistep_step`]: DPM-Solver(++) (and its SDE variants), UniPC and
//!   PNDM (`pndm`) as linear combinations per step, with their options in [`SolverOptions`];
//! - [`SigmaTable`] / [`sigma_step`]: the σ-space samplers (Euler, Euler ancestral, Heun, LMS),
//!   one row per model evaluation, with their options in [`SigmaOptions`];
//! - [`ConsistencyTable`] / [`consistency_step`]: consistency models' multistep sampling.

mod beta_ppf;
mod betas;
mod config;
mod consistency;
mod ddim;
mod ddpm;
mod inverse;
mod multistep;
mod pndm;
mod predict;
mod sigma;
mod sigma_grid;
mod sigma_keys;
mod sigma_options;
mod solver_options;
mod timesteps;

pub use beta_ppf::{beta_ppf, incomplete_beta};
pub use betas::{torch_linspace_f32, NoiseSchedule};
pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use consistency::{
    consistency_input, consistency_step, ConsistencyConfig, ConsistencyStep, ConsistencyTable,
};
pub use ddim::{ddim_step, ddim_table, DdimStep, StepOutput};
pub use ddpm::{ddpm_step, ddpm_table, DdpmStep, DdpmVariance};
pub use inverse::{inverse_step, inverse_table};
pub use multistep::{
    multistep_step, multistep_step_noisy, solver_sigmas, solver_spacing, Combination,
    MultistepState, MultistepStep, MultistepTable, MAX_HISTORY,
};
pub use pndm::pndm_timesteps;
pub use predict::X0Limit;
pub use sigma::{
    lms_coefficient, scale_model_input, sigma_step, SigmaState, SigmaStep, SigmaTable,
    SIGMA_HISTORY,
};
pub use sigma_grid::{sigma_grid, sigma_to_t, SigmaGrid};
pub use sigma_keys::SigmaKeys;
pub use sigma_options::{SigmaOptions, SigmaSampler, SigmaSchedule};
pub use solver_options::{
    DpmAlgorithm, FinalSigmas, SolverFamily, SolverKeys, SolverOptions, SolverType,
};
pub use timesteps::{ddim_prev_timestep, inverse_timesteps, timesteps};
