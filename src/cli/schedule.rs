//! `ddim schedule`: print the per-step sampler table for a scheduler configuration, and
//! `SchedulerOverrides`, the scheduler flags every sampling command shares (flatten it).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use ddim_wgpu::sampling::SamplerKind;
use ddim_wgpu::schedule::{
    ddim_table, ddpm_table, inverse_table, solver_spacing, BetaSchedule, ConsistencyTable,
    DdimStep, DdpmStep, DdpmVariance, MultistepTable, NoiseSchedule, PredictionType,
    SchedulerConfig, SigmaKeys, SigmaOptions, SigmaSampler, SigmaTable, SolverFamily, SolverKeys,
    SolverOptions, TimestepSpacing,
};

/// Where the scheduler config comes from, and options that override single keys of it.
/// `#[command(flatten)]` this into any command that samples.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SchedulerOverrides {
    /// A diffusers scheduler_config.json (any scheduler class; unknown keys are ignored).
    /// Takes precedence over the one in --model.
    #[arg(long, value_name = "FILE")]
    pub scheduler_config: Option<PathBuf>,
    /// Timestep spacing: leading | trailing | linspace (diffusers), uniform | quad (ermongroup/ddim).
    #[arg(long, value_name = "SPACING", value_parser = |s: &str| TimestepSpacing::parse_for("--spacing", s))]
    pub spacing: Option<TimestepSpacing>,
    /// Offset added to every timestep (leading spacing only).
    #[arg(long, value_name = "N", value_parser = super::numbers::at_least::<usize, 0>)]
    pub steps_offset: Option<usize>,
    /// Beta schedule: linear | scaled_linear | squaredcos_cap_v2.
    #[arg(long, value_name = "SCHEDULE", value_parser = |s: &str| BetaSchedule::parse_for("--beta-schedule", s))]
    pub beta_schedule: Option<BetaSchedule>,
    /// What the model predicts: epsilon | sample | v_prediction.
    #[arg(long, value_name = "TYPE", value_parser = |s: &str| PredictionType::parse_for("--prediction-type", s))]
    pub prediction_type: Option<PredictionType>,
    /// Clamp the predicted x0 to ±clip_sample_range.
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub clip_sample: Option<bool>,
    /// Use ᾱ = 1 after the last step (else ᾱ[0]).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub set_alpha_to_one: Option<bool>,
}

impl SchedulerOverrides {
    /// The scheduler config to use: `--scheduler-config`, else the model directory's
    /// (`scheduler/scheduler_config.json` or `scheduler_config.json`), else DDIMScheduler's
    /// defaults; then the overrides. Also returns a one-line description of the source.
    pub fn resolve(&self, model_dir: Option<&Path>) -> Result<(SchedulerConfig, String)> {
        let (cfg, source) = match (&self.scheduler_config, model_dir) {
            (Some(path), _) => (
                SchedulerConfig::from_file(path)?,
                path.display().to_string(),
            ),
            (None, Some(dir)) => match SchedulerConfig::from_model_dir(dir)? {
                Some((cfg, path)) => (cfg, path.display().to_string()),
                None => {
                    log::warn!(
                        "{} has no scheduler/scheduler_config.json or scheduler_config.json; \
                         using DDIMScheduler defaults",
                        dir.display()
                    );
                    (SchedulerConfig::default(), "DDIMScheduler defaults".into())
                }
            },
            (None, None) => (SchedulerConfig::default(), "DDIMScheduler defaults".into()),
        };
        self.apply(cfg, source)
    }

    /// Applies `--scheduler-config` (when given, it replaces `base`) and the single-key overrides
    /// to `base`, e.g. the bundled model's scheduler config.
    pub fn resolve_from(
        &self,
        base: SchedulerConfig,
        source: &str,
    ) -> Result<(SchedulerConfig, String)> {
        match &self.scheduler_config {
            Some(path) => self.apply(
                SchedulerConfig::from_file(path)?,
                path.display().to_string(),
            ),
            None => self.apply(base, source.to_string()),
        }
    }

    fn apply(&self, mut cfg: SchedulerConfig, source: String) -> Result<(SchedulerConfig, String)> {
        let mut changed = Vec::new();
        if let Some(v) = self.spacing {
            cfg.timestep_spacing = v;
            cfg.timestep_spacing_given = true;
            changed.push("timestep_spacing");
        }
        if let Some(v) = self.steps_offset {
            cfg.steps_offset = v;
            changed.push("steps_offset");
        }
        if let Some(v) = self.beta_schedule {
            cfg.beta_schedule = v;
            changed.push("beta_schedule");
        }
        if let Some(v) = self.prediction_type {
            cfg.prediction_type = v;
            changed.push("prediction_type");
        }
        if let Some(v) = self.clip_sample {
            cfg.clip_sample = v;
            // Heun's clip_sample defaults to false where a config leaves it out.
            cfg.sigma_keys.clip_sample = Some(v);
            changed.push("clip_sample");
        }
        if let Some(v) = self.set_alpha_to_one {
            cfg.set_alpha_to_one = v;
            // Given, so PNDM (whose own default is false) takes it too.
            cfg.keys.insert("set_alpha_to_one".into(), json!(v));
            changed.push("set_alpha_to_one");
        }
        cfg.validate()?;
        let source = if changed.is_empty() {
            source
        } else {
            format!("{source}, overriding {}", changed.join(", "))
        };
        Ok((cfg, source))
    }
}

/// Options of the multistep solvers (`--sampler dpm-solver++ | unipc`), each overriding the same
/// key of the scheduler config. `#[command(flatten)]` this beside `SchedulerOverrides`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SolverArgs {
    /// Solver order: 1, 2 or 3 (default 2).
    #[arg(long, value_name = "N", value_parser = super::numbers::at_least::<usize, 1>)]
    pub solver_order: Option<usize>,
    /// DPM-Solver's algorithm_type: dpmsolver++ (data prediction, default) | dpmsolver |
    /// sde-dpmsolver++ (DPM++ 2M SDE at order 2: fresh noise every step) | sde-dpmsolver.
    #[arg(long, value_name = "TYPE")]
    pub algorithm_type: Option<String>,
    /// solver_type: midpoint | heun (dpm-solver++), bh1 | bh2 (unipc).
    #[arg(long, value_name = "TYPE")]
    pub solver_type: Option<String>,
    /// Use lower orders in the last steps (diffusers' lower_order_final, default true).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub lower_order_final: Option<bool>,
    /// DPM-Solver: a first-order last step (euler_at_final).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub euler_at_final: Option<bool>,
    /// The noise level after the last step: zero (default) | sigma_min.
    #[arg(long, value_name = "TYPE")]
    pub final_sigmas_type: Option<String>,
    /// DPM-Solver: leave out timesteps whose log-SNR/2 (λ) is below this.
    #[arg(long, value_name = "LAMBDA", allow_negative_numbers = true)]
    pub lambda_min_clipped: Option<f64>,
    /// Karras et al.'s σ spacing (use_karras_sigmas).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub use_karras_sigmas: Option<bool>,
    /// UniPC: data prediction (true, default) or noise prediction.
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub predict_x0: Option<bool>,
    /// UniPC: step indices after which the corrector is skipped, comma-separated.
    #[arg(long, value_name = "I,J,..", value_delimiter = ',', value_parser = super::numbers::at_least::<usize, 0>)]
    pub disable_corrector: Option<Vec<usize>>,
    /// PNDM: plain PLMS without the Runge–Kutta warm-up (skip_prk_steps; n + 1 model
    /// evaluations instead of n + 9).
    #[arg(long, value_name = "true|false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub skip_prk_steps: Option<bool>,
}

impl SolverArgs {
    /// The options given, as solver keys.
    pub fn keys(&self) -> SolverKeys {
        SolverKeys {
            solver_order: self.solver_order,
            algorithm_type: self.algorithm_type.clone(),
            solver_type: self.solver_type.clone(),
            lower_order_final: self.lower_order_final,
            euler_at_final: self.euler_at_final,
            final_sigmas_type: self.final_sigmas_type.clone(),
            lambda_min_clipped: self.lambda_min_clipped,
            use_karras_sigmas: self.use_karras_sigmas,
            predict_x0: self.predict_x0,
            disable_corrector: self.disable_corrector.clone(),
            skip_prk_steps: self.skip_prk_steps,
            unsupported: Vec::new(),
        }
    }
}

/// Options of the σ-space samplers (`--sampler euler | euler-ancestral | heun | lms`), each
/// overriding the same key of the scheduler config (`--use-karras-sigmas` and
/// `--final-sigmas-type` are shared with the multistep solvers, in [`SolverArgs`]).
/// `#[command(flatten)]` this beside `SolverArgs`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SigmaArgs {
    /// σ schedule exp(linspace(ln σ_max, ln σ_min)) (use_exponential_sigmas; euler, heun, lms).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub use_exponential_sigmas: Option<bool>,
    /// σ schedule by the Beta(0.6, 0.6) quantiles (use_beta_sigmas; euler, heun, lms).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub use_beta_sigmas: Option<bool>,
    /// Euler: σ between the grid's timesteps: linear (default) | log_linear.
    #[arg(long, value_name = "TYPE")]
    pub interpolation_type: Option<String>,
    /// Euler: the lower end of the karras / exponential / beta σ range.
    #[arg(long, value_name = "SIGMA")]
    pub sigma_min: Option<f64>,
    /// Euler: the upper end of the karras / exponential / beta σ range.
    #[arg(long, value_name = "SIGMA")]
    pub sigma_max: Option<f64>,
    /// Euler: discrete (default) | continuous (with v_prediction the model sees t = 0.25·ln σ).
    #[arg(long, value_name = "TYPE")]
    pub timestep_type: Option<String>,
    /// Euler: churn (Karras et al.'s S_churn; noise added where s_tmin ≤ σ ≤ s_tmax).
    #[arg(long, value_name = "S")]
    pub s_churn: Option<f64>,
    /// Euler: the smallest σ that churns.
    #[arg(long, value_name = "SIGMA")]
    pub s_tmin: Option<f64>,
    /// Euler: the largest σ that churns (default: infinity).
    #[arg(long, value_name = "SIGMA")]
    pub s_tmax: Option<f64>,
    /// Euler: the churn noise's scale (default 1).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub s_noise: Option<f64>,
}

impl SigmaArgs {
    /// The options given, as σ-sampler keys.
    pub fn keys(&self) -> SigmaKeys {
        SigmaKeys {
            use_exponential_sigmas: self.use_exponential_sigmas,
            use_beta_sigmas: self.use_beta_sigmas,
            interpolation_type: self.interpolation_type.clone(),
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            timestep_type: self.timestep_type.clone(),
            s_churn: self.s_churn,
            s_tmin: self.s_tmin,
            s_tmax: self.s_tmax,
            s_noise: self.s_noise,
            ..SigmaKeys::default()
        }
    }
}

/// Which sampler's table to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableSampler {
    /// DDIM (eta 0 = deterministic, 1 = DDPM posterior variance).
    Ddim,
    /// Ancestral DDPM with the config's variance_type (default fixed_small).
    Ddpm,
    /// DDIM inversion (x0 → x_T), as diffusers' DDIMInverseScheduler.
    Inverse,
    /// DPM-Solver++ (diffusers' DPMSolverMultistepScheduler).
    #[value(name = "dpm-solver++")]
    DpmSolverPlusPlus,
    /// UniPC (diffusers' UniPCMultistepScheduler).
    Unipc,
    /// Euler in σ (diffusers' EulerDiscreteScheduler).
    Euler,
    /// Euler ancestral (diffusers' EulerAncestralDiscreteScheduler).
    EulerAncestral,
    /// Heun in σ (diffusers' HeunDiscreteScheduler).
    Heun,
    /// Linear multistep in σ (diffusers' LMSDiscreteScheduler).
    Lms,
    /// PNDM (diffusers' PNDMScheduler).
    Pndm,
    /// Consistency models (diffusers' CMStochasticIterativeScheduler).
    Consistency,
}

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers model directory; its scheduler config is used unless --scheduler-config is given.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub scheduler: SchedulerOverrides,
    /// Number of inference steps.
    #[arg(long, default_value_t = 50, value_parser = super::numbers::at_least::<usize, 1>)]
    pub steps: usize,
    /// DDIM noise scale in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Which sampler's steps to show (default: the solver the config's _class_name names, else
    /// ddim).
    #[arg(long, value_enum)]
    pub sampler: Option<TableSampler>,
    #[command(flatten)]
    pub solver: SolverArgs,
    #[command(flatten)]
    pub sigma: SigmaArgs,
    /// Consistency models: the ramp indices to visit (strictly descending, below the config's
    /// num_train_timesteps), e.g. 22,0; they win over --steps.
    #[arg(long, value_name = "I,J,..", value_delimiter = ',', value_parser = super::numbers::at_least::<usize, 0>)]
    pub timesteps: Option<Vec<usize>>,
    /// Print JSON: {"sampler", "num_inference_steps", "eta", "config_source", "config",
    /// "steps": [{"t", "prev_t", "alpha_prod_t", "alpha_prod_t_prev", "sigma", ...}, ...]}.
    #[arg(long)]
    pub json: bool,
}

enum Table {
    Ddim(Vec<DdimStep>),
    Ddpm(Vec<DdpmStep>, DdpmVariance),
}

pub fn run(args: Args) -> Result<()> {
    let (cfg, source) = args.scheduler.resolve(args.model.as_deref())?;
    let chosen = args
        .sampler
        .unwrap_or(match SamplerKind::from_config(&cfg) {
            SamplerKind::DpmSolverPlusPlus => TableSampler::DpmSolverPlusPlus,
            SamplerKind::Unipc => TableSampler::Unipc,
            SamplerKind::Euler => TableSampler::Euler,
            SamplerKind::EulerAncestral => TableSampler::EulerAncestral,
            SamplerKind::Heun => TableSampler::Heun,
            SamplerKind::Lms => TableSampler::Lms,
            SamplerKind::Pndm => TableSampler::Pndm,
            SamplerKind::Consistency => TableSampler::Consistency,
            _ => TableSampler::Ddim,
        });
    let sigma_sampler = match chosen {
        TableSampler::Euler => Some(SigmaSampler::Euler),
        TableSampler::EulerAncestral => Some(SigmaSampler::EulerAncestral),
        TableSampler::Heun => Some(SigmaSampler::Heun),
        TableSampler::Lms => Some(SigmaSampler::Lms),
        _ => None,
    };
    if let Some(sampler) = sigma_sampler {
        if args.eta != 0.0 {
            bail!("--eta applies to the DDIM sampler only");
        }
        if args.timesteps.is_some() {
            bail!("--timesteps applies to --sampler consistency only");
        }
        return print_sigma(&args, &cfg, &source, sampler);
    }
    if let Some((key, _)) = args.sigma.keys().given().first() {
        bail!("`{key}` is an option of --sampler euler, euler-ancestral, heun and lms");
    }
    if chosen == TableSampler::Consistency {
        return print_consistency(&args, &cfg, &source);
    }
    if args.timesteps.is_some() {
        bail!("--timesteps applies to --sampler consistency only");
    }
    let family = match chosen {
        TableSampler::DpmSolverPlusPlus => Some(SolverFamily::DpmSolver),
        TableSampler::Unipc => Some(SolverFamily::UniPc),
        TableSampler::Pndm => Some(SolverFamily::Pndm),
        _ => None,
    };
    if let Some(family) = family {
        if args.eta != 0.0 {
            bail!("--eta applies to the DDIM sampler only");
        }
        return print_solver(&args, &cfg, &source, family);
    }
    if let Some((key, _)) = args.solver.keys().given().first() {
        bail!("`{key}` is an option of --sampler dpm-solver++, unipc and pndm");
    }
    let sampler = match chosen {
        TableSampler::Ddpm => "ddpm",
        TableSampler::Inverse => "inverse",
        _ => "ddim",
    };
    if chosen != TableSampler::Ddim && args.eta != 0.0 {
        bail!("--eta applies to the DDIM sampler only, not to --sampler {sampler}");
    }
    let table = match chosen {
        // (The solvers, the σ-space samplers and the consistency sampler returned above.)
        TableSampler::Ddim
        | TableSampler::DpmSolverPlusPlus
        | TableSampler::Unipc
        | TableSampler::Pndm
        | TableSampler::Consistency
        | TableSampler::Euler
        | TableSampler::EulerAncestral
        | TableSampler::Heun
        | TableSampler::Lms => Table::Ddim(ddim_table(&cfg, args.steps, args.eta)?),
        TableSampler::Inverse => Table::Ddim(inverse_table(&cfg, args.steps)?),
        TableSampler::Ddpm => {
            let kind = DdpmVariance::from_config(&cfg)?;
            Table::Ddpm(ddpm_table(&cfg, args.steps, kind)?, kind)
        }
    };
    if args.json {
        let steps: Vec<Value> = match &table {
            Table::Ddim(rows) => rows.iter().map(DdimStep::to_json).collect(),
            Table::Ddpm(rows, _) => rows.iter().map(DdpmStep::to_json).collect(),
        };
        let mut out = json!({
            "sampler": sampler,
            "num_inference_steps": args.steps,
            "eta": args.eta,
            "config_source": source,
            "config": cfg.to_json(),
            "final_alpha_cumprod": NoiseSchedule::new(&cfg)?.final_alpha_cumprod,
            "steps": steps,
        });
        if let Table::Ddpm(_, kind) = &table {
            out["variance_type"] = json!(kind.as_str());
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{sampler}: {} model evaluations for {} steps{}",
        match &table {
            Table::Ddim(r) => r.len(),
            Table::Ddpm(r, _) => r.len(),
        },
        args.steps,
        if chosen == TableSampler::Ddim {
            format!(", eta {}", args.eta)
        } else {
            String::new()
        }
    );
    println!("config: {source}");
    println!("{}", describe(&cfg));
    match &table {
        Table::Ddim(rows) => print_ddim(rows, chosen == TableSampler::Inverse),
        Table::Ddpm(rows, kind) => {
            println!("variance_type: {}", kind.as_str());
            print_ddpm(rows)
        }
    }
    Ok(())
}

/// A multistep solver's table: per step the timestep, σ, λ and the multipliers of the update
/// (on the sample and on the converted outputs by age), and UniPC's corrector.
fn print_solver(
    args: &Args,
    cfg: &SchedulerConfig,
    source: &str,
    family: SolverFamily,
) -> Result<()> {
    let options = SolverOptions::resolve(family, &cfg.solver_keys, &args.solver.keys())?;
    let table = MultistepTable::new(cfg, &options, args.steps)?;
    // PNDM keeps DDIM's default spacing (leading); the other solvers default to linspace.
    let spacing = match family {
        SolverFamily::Pndm => cfg.timestep_spacing,
        _ => solver_spacing(cfg),
    };
    let name = match family {
        SolverFamily::DpmSolver => "dpm-solver++",
        SolverFamily::UniPc => "unipc",
        SolverFamily::Pndm => "pndm",
    };
    if args.json {
        let out = json!({
            "sampler": name,
            "num_inference_steps": args.steps,
            "config_source": source,
            "config": cfg.to_json(),
            "solver": options.to_json(),
            "timestep_spacing": spacing.as_str(),
            "converted_output": if table.raw_outputs {
                "model_output"
            } else if table.predicts_x0 {
                "x0"
            } else {
                "epsilon"
            },
            "draws_noise": table.draws_noise,
            "thresholding": table.thresholds(),
            "steps": table.steps.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{name}: {} model evaluations, order {}, {}",
        table.steps.len(),
        options.order,
        options.to_json()
    );
    println!("config: {source}");
    println!("{}", describe(cfg));
    println!(
        "the solver uses: timestep_spacing {spacing}, {} (clip_sample does not apply)",
        if table.thresholds() {
            "dynamic thresholding"
        } else {
            "no thresholding"
        }
    );
    println!(
        "update: x' = a·x + Σ_k c_k·y_k{}, y_k = the {} k steps ago{}",
        if table.draws_noise { " + noise·z" } else { "" },
        if table.raw_outputs {
            "model output"
        } else if table.predicts_x0 {
            "converted output (x0)"
        } else {
            "converted output (ε)"
        },
        match family {
            SolverFamily::UniPc => "; corrector first: x = a·last + Σ_k c_k·y_k",
            SolverFamily::Pndm => "; steps with a corrector start from cur_sample (x = last)",
            SolverFamily::DpmSolver => "",
        }
    );
    println!(
        "{:>4} {:>5} {:>11} {:>11} {:>9} {:>5} {:>10} {:>10} {:>10} {:>10}  corrector",
        "step", "t", "sigma", "sigma_next", "lambda", "order", "a", "c0", "c1", "c2"
    );
    for (i, s) in table.steps.iter().enumerate() {
        let p = &s.predictor;
        let corrector = if s.corrector_order == 0 {
            "-".to_string()
        } else if family == SolverFamily::Pndm {
            "from cur_sample (x = last)".to_string()
        } else {
            let c = &s.corrector;
            format!(
                "order {}: a {:.6}, c {:.6} {:.6} {:.6} {:.6}",
                s.corrector_order, c.sample, c.outputs[0], c.outputs[1], c.outputs[2], c.outputs[3]
            )
        };
        // PNDM reads outputs up to 12 evaluations back: the older ones after the corrector.
        let older: String = p
            .by_age()
            .iter()
            .enumerate()
            .skip(3)
            .filter(|(_, &c)| c != 0.0)
            .map(|(age, c)| format!("; c{age} {c:.6}"))
            .collect();
        println!(
            "{i:>4} {:>5} {:>11.6e} {:>11.6e} {:>9.4} {:>5} {:>10.6} {:>10.6} {:>10.6} {:>10.6}  {corrector}{older}",
            s.t, s.sigma, s.sigma_next, s.lambda, s.order, p.sample, p.outputs[0], p.outputs[1], p.outputs[2]
        );
    }
    Ok(())
}

/// A σ-space sampler's table: per model evaluation the timestep, σ, the model input's scale and
/// the multipliers of the update.
fn print_sigma(
    args: &Args,
    cfg: &SchedulerConfig,
    source: &str,
    sampler: SigmaSampler,
) -> Result<()> {
    let options = SigmaOptions::resolve(sampler, cfg, &args.solver.keys(), &args.sigma.keys())?;
    let table = SigmaTable::new(cfg, &options, args.steps)?;
    if args.json {
        let out = json!({
            "sampler": sampler.as_str(),
            "num_inference_steps": args.steps,
            "model_evaluations": table.steps.len(),
            "config_source": source,
            "config": cfg.to_json(),
            "options": options.to_json(),
            "timestep_spacing": solver_spacing(cfg).as_str(),
            "init_noise_sigma": table.init_noise_sigma,
            "timesteps": table.timesteps,
            "sigmas": table.sigmas,
            "steps": table.steps.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}: {} model evaluations for {} steps, {}",
        sampler.as_str(),
        table.steps.len(),
        args.steps,
        options.to_json()
    );
    println!("config: {source}");
    println!("{}", describe(cfg));
    println!(
        "timestep_spacing {}, σ schedule {}, init_noise_sigma {}",
        solver_spacing(cfg),
        options.schedule.as_str(),
        table.init_noise_sigma
    );
    println!(
        "update: x' = x + churn·z; x0 = a·x' + b·m; d = (x' − x0)/σ_d; \
         x'' = base + Σ_k c_k·d_k + noise·z (d_k: the derivative k evaluations ago)"
    );
    println!(
        "{:>4} {:>11} {:>11} {:>11} {:>9} {:>10} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "eval", "t", "sigma", "sigma_next", "1/scale", "a", "b", "c0", "c1", "c2", "c3", "noise"
    );
    for (i, s) in table.steps.iter().enumerate() {
        println!(
            "{i:>4} {:>11.5} {:>11.5e} {:>11.5e} {:>9.6} {:>10.6} {:>11.5e} {:>11.5e} {:>11.4e} \
             {:>11.4e} {:>11.4e} {:>9.5}{}{}",
            s.t,
            s.sigma,
            s.sigma_next,
            1.0 / s.scale as f64,
            s.x0_sample,
            s.x0_model,
            s.derivs[0],
            s.derivs[1],
            s.derivs[2],
            s.derivs[3],
            s.noise,
            if s.churn != 0.0 {
                format!(" churn {:.5}", s.churn)
            } else {
                String::new()
            },
            if s.from_saved { " (corrector)" } else { "" }
        );
    }
    Ok(())
}

/// The consistency sampler's table: per step the ramp index, the model timestep 250·ln σ, σ,
/// the next σ and the multipliers (c_in, c_skip, c_out, the noise's).
fn print_consistency(args: &Args, cfg: &SchedulerConfig, source: &str) -> Result<()> {
    if args.eta != 0.0 {
        bail!("--eta applies to the DDIM sampler only, not to --sampler consistency");
    }
    if let Some((key, _)) = args.solver.keys().given().first() {
        bail!("`{key}` is an option of --sampler dpm-solver++, unipc and pndm, not of consistency");
    }
    let table = ConsistencyTable::new(cfg, args.steps, args.timesteps.as_deref())?;
    let c = &table.config;
    if args.json {
        let out = json!({
            "sampler": "consistency",
            "num_inference_steps": table.steps.len(),
            "config_source": source,
            "config": {
                "_class_name": "CMStochasticIterativeScheduler",
                "num_train_timesteps": c.num_train_timesteps,
                "sigma_min": c.sigma_min,
                "sigma_max": c.sigma_max,
                "sigma_data": c.sigma_data,
                "s_noise": c.s_noise,
                "rho": c.rho,
                "clip_denoised": c.clip_denoised,
            },
            "init_noise_sigma": table.init_noise_sigma(),
            "draws_noise": table.draws_noise,
            "steps": table.steps.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "consistency: {} model evaluations; T {}, σ {}..{}, σ_data {}, ρ {}, s_noise {}, \
         clip_denoised {}; latents × {}",
        table.steps.len(),
        c.num_train_timesteps,
        c.sigma_min,
        c.sigma_max,
        c.sigma_data,
        c.rho,
        c.s_noise,
        c.clip_denoised,
        table.init_noise_sigma()
    );
    println!("config: {source}");
    println!("update: d = c_skip·x + c_out·m (clipped), x' = d + noise·z; model input c_in·x");
    println!(
        "{:>4} {:>5} {:>14} {:>12} {:>12} {:>11} {:>11} {:>11} {:>11}",
        "step", "index", "t", "sigma", "sigma_next", "c_in", "c_skip", "c_out", "noise"
    );
    for (i, s) in table.steps.iter().enumerate() {
        println!(
            "{i:>4} {:>5} {:>14.6} {:>12.6e} {:>12.6e} {:>11.6} {:>11.6} {:>11.6} {:>11.6}",
            s.index,
            s.t,
            s.sigma,
            s.sigma_next,
            1.0 / s.in_div as f64,
            s.c_skip,
            s.c_out,
            if table.draws_noise { s.noise } else { 0.0 }
        );
    }
    Ok(())
}

/// The config on two lines, in diffusers' key names.
fn describe(cfg: &SchedulerConfig) -> String {
    let betas = match &cfg.trained_betas {
        Some(b) => format!("trained_betas ({} values)", b.len()),
        None => format!("{} {}..{}", cfg.beta_schedule, cfg.beta_start, cfg.beta_end),
    };
    let limit = if cfg.thresholding {
        format!(
            "thresholding (ratio {}, max {})",
            cfg.dynamic_thresholding_ratio, cfg.sample_max_value
        )
    } else if cfg.clip_sample {
        format!("clip_sample ±{}", cfg.clip_sample_range)
    } else {
        "no clipping".into()
    };
    format!(
        "T {}, betas {betas}{}, spacing {} (steps_offset {}), prediction {}, {limit}, \
         set_alpha_to_one {}",
        cfg.num_train_timesteps,
        if cfg.rescale_betas_zero_snr {
            " rescaled to zero terminal SNR"
        } else {
            ""
        },
        cfg.timestep_spacing,
        cfg.steps_offset,
        cfg.prediction_type,
        cfg.set_alpha_to_one
    )
}

fn print_ddim(rows: &[DdimStep], inverse: bool) {
    let from = if inverse { "  from_t" } else { "" };
    println!(
        "{:>4} {:>5}{from} {:>6} {:>13} {:>17} {:>11} {:>11} {:>11} {:>12} {:>11}",
        "step",
        "t",
        "prev_t",
        "alpha_prod_t",
        "alpha_prod_t_prev",
        "sigma",
        "sqrt(a_t)",
        "sqrt(1-a_t)",
        "sqrt(a_prev)",
        "dir_coef"
    );
    for (i, s) in rows.iter().enumerate() {
        let from = if inverse {
            format!(" {:>7}", s.from_t)
        } else {
            String::new()
        };
        println!(
            "{i:>4} {:>5}{from} {:>6} {:>13.6e} {:>17.6e} {:>11.4e} {:>11.6} {:>11.6} {:>12.6} {:>11.6}",
            s.t,
            s.prev_t,
            s.alpha_prod_t,
            s.alpha_prod_t_prev,
            s.sigma,
            s.sqrt_alpha_prod_t,
            s.sqrt_one_minus_alpha_prod_t,
            s.sqrt_alpha_prod_t_prev,
            s.dir_coef
        );
    }
}

fn print_ddpm(rows: &[DdpmStep]) {
    println!(
        "{:>4} {:>5} {:>6} {:>13} {:>17} {:>11} {:>11} {:>11} {:>11}",
        "step",
        "t",
        "prev_t",
        "alpha_prod_t",
        "alpha_prod_t_prev",
        "beta_t",
        "sigma",
        "x0_coef",
        "sample_coef"
    );
    for (i, s) in rows.iter().enumerate() {
        println!(
            "{i:>4} {:>5} {:>6} {:>13.6e} {:>17.6e} {:>11.4e} {:>11.4e} {:>11.6} {:>11.6}",
            s.t,
            s.prev_t,
            s.alpha_prod_t,
            s.alpha_prod_t_prev,
            s.beta_t,
            s.sigma,
            s.x0_coef,
            s.sample_coef
        );
    }
}
