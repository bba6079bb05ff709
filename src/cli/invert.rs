//! `ddim invert`: DDIM inversion of images to x_T, reconstruction from it, and the per-dimension
//! mean squared error in [0, 1] (the metric of Table 2 in the DDIM paper).

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use ddim_wgpu::image_io::{decode_image, load_image, save_grid};
use ddim_wgpu::model::tensor_io;
use ddim_wgpu::pipeline::{Device, LatentRequest, Pipeline};
use ddim_wgpu::sampling::Progress;
use ddim_wgpu::Tensor;

use super::flags::batch_hint;
use super::sample::{check_outputs, load_pipeline, progress_bar, DeviceArgs};
use super::schedule::SchedulerOverrides;

#[derive(clap::Args)]
#[command(
    after_help = "With a class-conditional model, --class conditions both runs. The inversion \
    always runs at guidance scale 1: a guided inversion is not a bijection (no decode inverts it), \
    so its latents would not reconstruct the image. --guidance-scale, --guidance-rescale and \
    --null-class guide only the reconstruction."
)]
pub struct Args {
    /// Model directory in diffusers layout (default: the bundled MNIST model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Image(s) to invert (PNG of the model's size and channel count); repeatable. With --report
    /// and the bundled model, defaults to one MNIST test image per digit.
    #[arg(long, value_name = "FILE")]
    pub image: Vec<PathBuf>,
    /// Inversion and reconstruction steps.
    #[arg(long, default_value_t = 50, value_parser = super::numbers::at_least::<usize, 1>)]
    pub steps: usize,
    /// Class labels of a class-conditional model: one for all images or one per --image.
    #[arg(long, value_name = "N[,N2,...]", value_parser = super::flags::class_labels)]
    pub class: Option<super::flags::ClassArg>,
    /// Guidance of the reconstruction only (--guidance-scale W, --guidance-rescale R,
    /// --null-class N). The inversion itself always runs at guidance 1 with --class: a guided
    /// inversion is not a bijection (no decode inverts it), so its latents would not reconstruct.
    #[command(flatten)]
    pub guidance: super::flags::GuidanceArgs,
    /// PNG with each original next to its reconstruction.
    #[arg(long, value_name = "FILE", default_value = "inversion.png")]
    pub out: PathBuf,
    /// Where to save the latents x_T (NCHW, tensor `sample`).
    #[arg(long, value_name = "FILE", default_value = "latents.safetensors")]
    pub latents: PathBuf,
    /// Print the reconstruction error for S = 10, 20, 50, 100 instead (writes no files).
    /// Inversion runs without x0 clipping unless --clip-sample true is given.
    #[arg(long)]
    pub report: bool,
    #[command(flatten)]
    pub scheduler: SchedulerOverrides,
    /// Images per U-Net evaluation (default: chosen from the device's limits, as for `sample`).
    #[arg(long, value_parser = super::numbers::at_least::<usize, 1>)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    if !args.report {
        check_outputs(&[("--out", &args.out), ("--latents", &args.latents)])?;
    }
    let (mut pipe, name) = load_pipeline(args.model.as_deref(), &args.scheduler)?;
    // Clipping x0 makes the inversion and the reconstruction different maps, so their error grows
    // with the step count (bundled model, two digits: S = 10 → 50 went 2.7e-3 → 2.3e-2 with
    // clipping, 5.6e-3 → 5.6e-4 without). The DDIM paper inverts the plain ODE: clip only on request.
    if args.scheduler.clip_sample.is_none() {
        pipe.scheduler.clip_sample = false;
    }
    let x0 = load_images(&args, &pipe)?;
    let device = args.device.open()?;
    if args.report {
        println!(
            "DDIM inversion + reconstruction of {} image(s), {name}, on {}",
            x0.shape[0],
            device.describe()
        );
        println!("{:>6} {:>14}", "steps", "MSE in [0, 1]");
        for steps in [10, 20, 50, 100] {
            let (_, rec) = invert_and_reconstruct(&pipe, &device, &x0, steps, &args)?;
            println!("{steps:>6} {:>14.6e}", mse01(&x0, &rec));
        }
        return Ok(());
    }
    let (latents, rec) = invert_and_reconstruct(&pipe, &device, &x0, args.steps, &args)?;
    tensor_io::write_tensor(&args.latents, "sample", &latents)?;
    let n = x0.shape[0];
    let per = pipe.per_image();
    let mut pairs = Vec::with_capacity(2 * n * per);
    for i in 0..n {
        pairs.extend_from_slice(&x0.data[i * per..(i + 1) * per]);
        pairs.extend_from_slice(&rec.data[i * per..(i + 1) * per]);
    }
    let mut shape = x0.shape.clone();
    shape[0] = 2 * n;
    save_grid(&args.out, &Tensor::new(shape, pairs)?, Some(2))?;
    if !args.quiet {
        println!(
            "inverted {n} image(s) with {} DDIM steps on {}: reconstruction MSE {:.6e} (per dimension, pixels in [0, 1]); wrote {} and {}",
            args.steps,
            device.describe(),
            mse01(&x0, &rec),
            args.out.display(),
            args.latents.display()
        );
    }
    Ok(())
}

fn load_images(args: &Args, pipe: &Pipeline) -> Result<Tensor> {
    let (c, size) = (pipe.unet.input.c, pipe.unet.input.h);
    let mut images = Vec::new();
    if args.image.is_empty() {
        ensure!(
            args.model.is_none() && args.report,
            "give the image(s) to invert with --image FILE (only --report on the bundled model has default images)"
        );
        for (name, bytes) in ddim_wgpu::bundled::EXAMPLES {
            images.push(decode_image(bytes, name, c, size)?);
        }
    } else {
        for path in &args.image {
            images.push(load_image(path, c, size)?);
        }
    }
    let n = images.len();
    let data = images.into_iter().flat_map(|t| t.data).collect();
    Tensor::new(vec![n, c, size, size], data).context("stacking the images")
}

fn invert_and_reconstruct(
    pipe: &Pipeline,
    device: &Device,
    x0: &Tensor,
    steps: usize,
    args: &Args,
) -> Result<(Tensor, Tensor)> {
    let bar = progress_bar(args.quiet);
    // One bar over both runs: inversion, then reconstruction.
    let first = bar.clone();
    let request = LatentRequest {
        steps,
        batch: args.batch,
        progress: Some(Progress::new(move |done, total| {
            first.set_length(2 * total as u64);
            first.set_position(done as u64);
        })),
        labels: super::flags::labels_of(&args.class),
        guidance: Default::default(),
    };
    // Checked before the inversion runs, so a bad guidance flag costs nothing.
    pipe.guided(&args.guidance.guidance(), request.labels.as_ref())?;
    let latents = pipe
        .invert(device, x0, &request)
        .map_err(|e| batch_hint(e, args.batch))?;
    let offset = bar.position();
    let second = bar.clone();
    let request = LatentRequest {
        progress: Some(Progress::new(move |done, _| {
            second.set_position(offset + done as u64)
        })),
        guidance: args.guidance.guidance(),
        ..request
    };
    let rec = pipe
        .decode(device, &latents, &request)
        .map_err(|e| batch_hint(e, args.batch))?;
    bar.finish_and_clear();
    Ok((latents, rec))
}

/// Mean squared error per dimension with both images mapped to [0, 1] (the reconstruction clamped,
/// as it would be saved).
fn mse01(x0: &Tensor, rec: &Tensor) -> f64 {
    let sum: f64 = x0
        .data
        .iter()
        .zip(&rec.data)
        .map(|(&a, &b)| {
            let (a, b) = (
                (a as f64 / 2.0 + 0.5).clamp(0.0, 1.0),
                (b as f64 / 2.0 + 0.5).clamp(0.0, 1.0),
            );
            (a - b) * (a - b)
        })
        .sum();
    sum / x0.numel() as f64
}
