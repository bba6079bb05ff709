//! The arguments of `ddim sample` and what both of its modes share: `cli/sample.rs` runs a grid
//! of `-n` images, `cli/seeds.rs` one image per seed of `--seeds`. Both read this module; it
//! reads neither.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ddim_wgpu::output;
use ddim_wgpu::path_kind::{kind_of, PathKind};
use ddim_wgpu::pipeline::{Device, Pipeline};
use ddim_wgpu::rng::RngKind;
use ddim_wgpu::sampling::{SampleSettings, SamplerKind};

use super::model_args::AdapterArgs;
use super::schedule::{SchedulerOverrides, SigmaArgs, SolverArgs};

/// Where the U-Net runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// A GPU adapter if wgpu finds one, else the CPU reference.
    Auto,
    Cpu,
    Gpu,
}

/// Device selection shared by commands that run the model.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where to run the U-Net.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub adapter: AdapterArgs,
}

impl DeviceArgs {
    pub fn open(&self) -> Result<Device> {
        let choice = self.adapter.choice()?;
        let half = choice.precision != ddim_wgpu::gpu::Precision::F32;
        match self.device {
            DeviceArg::Cpu if half => anyhow::bail!(
                "--precision {} runs on the GPU only; the CPU reference is f32 (drop --device cpu \
                 or use --precision f32)",
                choice.precision
            ),
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Gpu => Device::gpu(&choice),
            // Half precision, or an adapter or backend named: no quiet fall-back to the f32 CPU
            // reference in place of what was asked for.
            DeviceArg::Auto if half || self.adapter.names_one() => Device::gpu(&choice),
            DeviceArg::Auto => Ok(Device::gpu(&choice).unwrap_or_else(|e| {
                log::warn!("no usable GPU adapter ({e:#}); using the CPU reference");
                Device::Cpu
            })),
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Model directory in diffusers layout (default: the bundled MNIST model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Number of images.
    #[arg(short = 'n', long = "num", default_value_t = 16, value_parser = super::numbers::at_least::<usize, 1>)]
    pub num: usize,
    /// Images per U-Net evaluation (default: as many as the device's limits and a 512 MiB
    /// activation budget allow, 16 at most on the CPU, in equal chunks).
    #[arg(long, value_parser = super::numbers::at_least::<usize, 1>)]
    pub batch: Option<usize>,
    /// Number of denoising steps.
    #[arg(long, default_value_t = 50, value_parser = super::numbers::at_least::<usize, 1>)]
    pub steps: usize,
    /// DDIM eta: 0 = deterministic, 1 = DDPM-like noise.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub eta: f64,
    /// Sampler (default: the one the scheduler config's _class_name names, else ddim).
    #[arg(long, value_parser = super::flags::sampler())]
    pub sampler: Option<SamplerKind>,
    #[command(flatten)]
    pub solver: SolverArgs,
    #[command(flatten)]
    pub sigma: SigmaArgs,
    /// Consistency models: the ramp indices to visit (strictly descending, below the config's
    /// num_train_timesteps), e.g. 22,0 for two steps; they win over --steps.
    #[arg(long, value_name = "I,J,..", value_delimiter = ',', value_parser = super::numbers::at_least::<usize, 0>)]
    pub timesteps: Option<Vec<usize>>,
    /// Re-derive the noise prediction from the clipped x0 (diffusers' use_clipped_model_output).
    #[arg(long)]
    pub use_clipped_model_output: bool,
    #[command(flatten)]
    pub scheduler: SchedulerOverrides,
    /// Random seed (one generator for all images, as diffusers' pipelines draw a batch).
    #[arg(long, default_value_t = 0, value_parser = super::numbers::at_least::<u64, 0>)]
    pub seed: u64,
    /// One generator per image instead: seeds A-B (inclusive) or lists such as 3,17,40-49, in
    /// ascending order. The image of seed s is diffusers' DDIMPipeline(batch_size=1,
    /// generator=torch.manual_seed(s)) whatever the batch, device or shard; with --out-dir each
    /// is written as <seed>.png as soon as its chunk is done, and a rerun makes only the missing.
    #[arg(long, value_name = "SET", conflicts_with_all = ["num", "seed", "init_noise", "save_trajectory"])]
    pub seeds: Option<String>,
    /// Make part I of N of --seeds (I from 0). Default: from a Slurm job array
    /// (SLURM_ARRAY_TASK_ID and _COUNT or _MIN/_MAX) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX with --shards or DDIM_SHARDS), else all of it.
    #[arg(long, value_name = "I/N", requires = "seeds")]
    pub shard: Option<String>,
    /// The number of shards when the index comes from the environment (a Kubernetes Indexed
    /// Job's completions; overrides Slurm's task count).
    #[arg(long, value_name = "N", requires = "seeds", value_parser = super::numbers::at_least::<u64, 1>)]
    pub shards: Option<u64>,
    /// Class labels of a class-conditional model: one for all images or one per image (with
    /// --seeds, one per seed of the whole set, in its order).
    #[arg(long, value_name = "N[,N2,...]", value_parser = super::flags::class_labels)]
    pub class: Option<super::flags::ClassArg>,
    #[command(flatten)]
    pub guidance: super::flags::GuidanceArgs,
    /// Noise generator: torch reproduces torch.manual_seed(seed) + diffusers' pipelines.
    #[arg(long, value_parser = super::flags::rng(), default_value_t = RngKind::Torch)]
    pub rng: RngKind,
    /// Initial noise x_T from a safetensors file ([N, C, H, W], tensor `sample` or the only one).
    #[arg(long, value_name = "FILE")]
    pub init_noise: Option<PathBuf>,
    /// The PNG grid to write (default: samples.png; with --seeds and --out-dir, none).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write one PNG per image into this directory (00000.png, … by index; with --seeds,
    /// <seed>.png and a manifest, and then no grid unless --out is given).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Also write x0 (NCHW, in [-1, 1]) as safetensors, tensor `sample`.
    #[arg(long, value_name = "FILE")]
    pub save_tensor: Option<PathBuf>,
    /// Also write the predicted x0 every k steps as a PNG: one row per image (the first 16),
    /// one column per kept step, the last column being the final sample.
    #[arg(long, value_name = "FILE")]
    pub save_trajectory: Option<PathBuf>,
    /// The k of --save-trajectory (default: steps / 10, rounded up, so about 10 columns).
    #[arg(long, value_name = "K", requires = "save_trajectory", value_parser = super::numbers::at_least::<usize, 1>)]
    pub trajectory_every: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// No progress bar, no summary line.
    #[arg(long, short)]
    pub quiet: bool,
}

impl Args {
    /// The sampler settings: `--sampler`, else the one the scheduler config names.
    pub fn settings(&self, pipe: &Pipeline) -> SampleSettings {
        SampleSettings {
            sampler: self
                .sampler
                .unwrap_or_else(|| SamplerKind::from_config(&pipe.scheduler)),
            steps: self.steps,
            eta: self.eta,
            use_clipped_model_output: self.use_clipped_model_output,
            solver: self.solver.keys(),
            sigma: self.sigma.keys(),
            timesteps: self.timesteps.clone(),
        }
    }

    /// Makes `--out-dir` (and its parents) when it is missing, and checks that it takes new
    /// files; an existing non-directory is refused. Safe when many processes (the shards of a
    /// job array) start at once: a folder another one made a moment ago is as good.
    pub fn prepare_out_dir(&self) -> Result<()> {
        match &self.out_dir {
            Some(d) => make_dir(d).with_context(|| format!("--out-dir {}", d.display())),
            None => Ok(()),
        }
    }
}

/// Creates `dir` with its parents unless it is a directory already, then proves that it takes
/// new files (one is made and removed).
fn make_dir(dir: &Path) -> Result<()> {
    match kind_of(dir) {
        PathKind::Dir => {}
        PathKind::Missing | PathKind::Unreachable(_) => {
            if let Err(e) = std::fs::create_dir_all(dir) {
                // Another process may have made it meanwhile; only a directory will do.
                if !dir.is_dir() {
                    // Name the part of the path that is in the way, when one is.
                    let blocker = dir
                        .ancestors()
                        .skip(1)
                        .filter(|a| !a.as_os_str().is_empty())
                        .map(|a| (a, kind_of(a)))
                        .find(|(_, k)| !matches!(k, PathKind::Missing));
                    if let Some((a, k)) = blocker.filter(|(_, k)| !matches!(k, PathKind::Dir)) {
                        bail!("cannot create it: {} {k}, not a directory", a.display());
                    }
                    return Err(e).context("cannot create it");
                }
            }
        }
        other => bail!("it {other}; name a directory (it is made when missing)"),
    }
    output::check_writable_dir(dir)
}

/// Checks every output of a command before any work: each one's place (a missing or unwritable
/// directory, a name the file system refuses, a directory where a file should be …) and that no
/// two name the same file. `outputs`: (option, path).
pub fn check_outputs(outputs: &[(&str, &Path)]) -> Result<()> {
    output::check_all(outputs).map(drop)
}

/// Loads `--model` (with the scheduler flags applied) or the bundled model.
pub fn load_pipeline(
    model: Option<&Path>,
    overrides: &SchedulerOverrides,
) -> Result<(Pipeline, String)> {
    match model {
        Some(dir) => {
            let (cfg, _) = overrides.resolve(Some(dir))?;
            let mut pipe = Pipeline::load(dir)?;
            pipe.scheduler = cfg;
            Ok((pipe, dir.display().to_string()))
        }
        None => {
            let mut pipe = ddim_wgpu::bundled::pipeline()?;
            let (cfg, _) =
                overrides.resolve_from(pipe.scheduler.clone(), ddim_wgpu::bundled::SOURCE)?;
            pipe.scheduler = cfg;
            Ok((pipe, "the bundled MNIST model".to_string()))
        }
    }
}
