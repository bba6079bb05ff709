//! `ddim sample`: draw images from a model with DDIM or DDPM and write a PNG grid; with
//! `--seeds`, hands over to `cli/seeds.rs`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use ddim_wgpu::image_io::save_grid;
use ddim_wgpu::model::tensor_io;
use ddim_wgpu::output;
use ddim_wgpu::pipeline::{Noise, Pipeline, SampleRequest, Sampled, TrajectoryFrames};
use ddim_wgpu::sampling::{Progress, Trajectory};

use super::fits;
use super::flags::batch_hint;

// The arguments live in `sample_args`, which `seeds` reads too; re-exported for the commands
// that share them.
pub use super::sample_args::{check_outputs, load_pipeline, Args, DeviceArgs};

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
    let noise = match &args.init_noise {
        Some(p) => {
            let x_t = tensor_io::read_tensor(p, "sample")
                .with_context(|| format!("reading --init-noise {}", p.display()))?;
            let n = x_t.shape.first().copied().unwrap_or(0);
            ensure!(
                n == args.num,
                "--init-noise {} holds {n} image(s) ({:?}); -n/--num asks for {}",
                p.display(),
                x_t.shape,
                args.num
            );
            Noise::Given {
                x_t,
                seed: args.seed,
            }
        }
        None => Noise::Seed {
            seed: args.seed,
            num: args.num,
        },
    };
    let device = args.device.open()?;
    let bar = progress_bar(args.quiet);
    let settings = args.settings(&pipe);
    let sampler = settings.sampler;
    let request = SampleRequest {
        settings,
        noise,
        rng: args.rng,
        batch: args.batch,
        trajectory: match (&args.save_trajectory, args.trajectory_every) {
            (None, _) => TrajectoryFrames::Off,
            (Some(_), Some(k)) => TrajectoryFrames::Every(k),
            (Some(_), None) => TrajectoryFrames::Tenth,
        },
        progress: Some(bar_progress(&bar, 0)),
        labels: super::flags::labels_of(&args.class),
        guidance: args.guidance.guidance(),
    };
    let started = Instant::now();
    let Sampled {
        images,
        trajectory,
        batch,
    } = pipe
        .sample_with(&device, &request)
        .map_err(|e| batch_hint(e, args.batch))?;
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
