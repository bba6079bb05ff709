//! `ddim sample`: draw images from a model with DDIM or DDPM and write a PNG grid.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use ddim_wgpu::image_io::save_grid;
use ddim_wgpu::model::tensor_io;
use ddim_wgpu::output;
use ddim_wgpu::path_kind::{kind_of, PathKind};
use ddim_wgpu::pipeline::{Device, Pipeline, SampleRequest};
use ddim_wgpu::rng::RngKind;
use ddim_wgpu::sampling::{Progress, SampleSettings, SamplerKind, Trajectory};

use super::fits;
use super::model_args::AdapterArgs;
use super::schedule::{SchedulerOverrides, SolverArgs};

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
    /// Sampler (default: the solver the scheduler config's _class_name names, else ddim).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    #[command(flatten)]
    pub solver: SolverArgs,
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
    /// Noise generator: torch reproduces torch.manual_seed(seed) + diffusers' pipelines.
    #[arg(long, value_enum, default_value_t = RngKind::Torch)]
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

/// Refuses an output that would be one of the `num` per-image files (`00000.png` …) that
/// `--out-dir dir` gets.
fn check_not_an_image_of(dir: &Path, num: usize, outputs: &[(&str, &Path)]) -> Result<()> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("--out-dir {}", dir.display()))?;
    for &(flag, path) in outputs {
        let place = output::resolve(path)?.place;
        let Some(name) = place.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let index = name
            .strip_suffix(".png")
            .and_then(|i| i.parse::<usize>().ok());
        let same_dir = place
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .and_then(|p| std::fs::canonicalize(p).ok())
            .is_some_and(|p| p == dir);
        if let Some(i) = index.filter(|&i| i < num && same_dir && name == format!("{i:05}.png")) {
            bail!(
                "{flag} {} is also image {i} of --out-dir {}; give each output its own file",
                path.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// What `ddim sample` keeps in memory at its peak per image element: two f32 copies (the
/// images and the noise or state) and the 8-bit grid with its PNG, plus one f32 copy per
/// trajectory frame and two more while `--save-tensor` encodes. Measured: 9.8 bytes per
/// element at the peak without either (2,000 vs 4,000 images of 3×16×16, CPU).
fn per_image(pipe: &Pipeline, frames: usize, save_tensor: bool) -> fits::PerImage {
    fits::PerImage {
        elements: pipe.per_image() as u128,
        f32_copies: 2 + frames as u128 + if save_tensor { 2 } else { 0 },
        bytes: 2,
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.seeds.is_some() {
        return super::seeds::run(args);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("samples.png"));
    ensure!(
        (0.0..=1.0).contains(&args.eta),
        "--eta must be in [0, 1] (0 = DDIM, 1 = DDPM-like), got {}",
        args.eta
    );
    args.prepare_out_dir()?;
    let outputs: Vec<(&str, &Path)> = [("--out", Some(out.as_path()))]
        .into_iter()
        .chain([
            ("--save-tensor", args.save_tensor.as_deref()),
            ("--save-trajectory", args.save_trajectory.as_deref()),
        ])
        .filter_map(|(flag, p)| Some((flag, p?)))
        .collect();
    check_outputs(&outputs)?;
    if let Some(dir) = &args.out_dir {
        check_not_an_image_of(dir, args.num, &outputs)?;
    }
    let (pipe, model_name) = load_pipeline(args.model.as_deref(), &args.scheduler)?;
    let frames = match &args.save_trajectory {
        Some(_) => {
            let every = args.trajectory_every.unwrap_or(args.steps.div_ceil(10));
            args.steps / every.max(1) + 1
        }
        None => 0,
    };
    fits::check(
        "-n",
        args.num as u128,
        per_image(&pipe, frames, args.save_tensor.is_some()),
        &format!(
            "; for more, make them as a seed folder, one batch in memory at a time: --seeds \
             0-{} --out-dir DIR",
            args.num.saturating_sub(1)
        ),
    )?;
    let init_noise = match &args.init_noise {
        Some(p) => Some(
            tensor_io::read_tensor(p, "sample")
                .with_context(|| format!("reading --init-noise {}", p.display()))?,
        ),
        None => None,
    };
    let device = args.device.open()?;
    let bar = progress_bar(args.quiet);
    let settings = args.settings(&pipe);
    let sampler = settings.sampler;
    let mut request = SampleRequest {
        settings,
        num: args.num,
        batch: args.batch,
        seed: args.seed,
        rng: args.rng,
        seeds: None,
        init_noise,
        progress: Some(bar_progress(&bar, 0)),
    };
    let batch = pipe.batch_for(&device, &request)?;
    request.batch = Some(batch);
    let started = Instant::now();
    let (images, trajectory) = match &args.save_trajectory {
        Some(_) => {
            let (images, t) = pipe.sample_trajectory(&device, &request, args.trajectory_every)?;
            (images, Some(t))
        }
        None => (pipe.sample(&device, &request)?, None),
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();

    save_grid(&out, &images, None)?;
    if let (Some(p), Some(t)) = (&args.save_trajectory, &trajectory) {
        save_trajectory(p, t)?;
    }
    if let Some(p) = &args.save_tensor {
        tensor_io::write_tensor(p, "sample", &images)?;
    }
    if let Some(dir) = &args.out_dir {
        let per = pipe.per_image();
        let (c, h, w) = (pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w);
        for i in 0..args.num {
            let one = ddim_wgpu::Tensor::new(
                vec![1, c, h, w],
                images.data[i * per..(i + 1) * per].to_vec(),
            )?;
            save_grid(&dir.join(format!("{i:05}.png")), &one, Some(1))?;
        }
    }
    if !args.quiet {
        println!(
            "wrote {} ({} image(s) from {model_name}; {} {} steps{}, seed {}, rng {:?}, batch {batch}) on {} in {secs:.1} s",
            out.display(),
            args.num,
            sampler.as_str(),
            args.steps,
            if sampler.solver_family().is_none() {
                format!(", eta {}", args.eta)
            } else {
                String::new()
            },
            args.seed,
            args.rng,
            device.describe(),
        );
    }
    Ok(())
}

/// Rows of the trajectory PNG: the first images only, so that it stays viewable.
const TRAJECTORY_ROWS: usize = 16;

/// Writes one row per image (the first [`TRAJECTORY_ROWS`]) and one column per kept step.
fn save_trajectory(path: &Path, t: &Trajectory) -> Result<()> {
    let first = t.frames.first().context("the trajectory kept no steps")?;
    let (n, c, h, w) = first.nchw();
    let rows = n.min(TRAJECTORY_ROWS);
    let per = c * h * w;
    let mut strip = ddim_wgpu::Tensor::zeros(&[rows * t.frames.len(), c, h, w]);
    for (cell, chunk) in strip.data.chunks_mut(per).enumerate() {
        let (image, frame) = (cell / t.frames.len(), cell % t.frames.len());
        chunk.copy_from_slice(&t.frames[frame].data[image * per..(image + 1) * per]);
    }
    save_grid(path, &strip, Some(t.frames.len()))
        .with_context(|| format!("writing --save-trajectory {}", path.display()))
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

/// Reports progress to `bar`, `offset` evaluations in (for a run that follows another).
pub fn bar_progress(bar: &indicatif::ProgressBar, offset: usize) -> Progress {
    let bar = bar.clone();
    Progress::new(move |done, total| {
        bar.set_length((offset + total) as u64);
        bar.set_position((offset + done) as u64);
    })
}

/// A progress bar on stderr (steps/s and ETA); hidden with --quiet or when stderr is no terminal.
pub fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  ETA {eta}")
            .expect("a valid progress template"),
    );
    bar
}
