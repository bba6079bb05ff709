//! `ddim interpolate`: decode a spherical (or linear) interpolation between two seeds' noise, or,
//! for a class-conditional model, between two classes' embeddings at one seed's noise.

use std::path::PathBuf;

use anyhow::Result;
use ddim_wgpu::image_io::save_grid;
use ddim_wgpu::model::ClassLabels;
use ddim_wgpu::pipeline::LatentRequest;
use ddim_wgpu::rng::{NoiseSource, RngKind};
use ddim_wgpu::sampling::{lerp, slerp};
use ddim_wgpu::Tensor;

use super::fits;
use super::flags::batch_hint;
use super::sample::{bar_progress, check_outputs, load_pipeline, progress_bar, DeviceArgs};
use super::schedule::SchedulerOverrides;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory in diffusers layout (default: the bundled MNIST model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Seed of the first endpoint's noise.
    #[arg(long, default_value_t = 0, value_parser = super::numbers::at_least::<u64, 0>)]
    pub seed_a: u64,
    /// Seed of the second endpoint's noise.
    #[arg(long, default_value_t = 1, value_parser = super::numbers::at_least::<u64, 0>)]
    pub seed_b: u64,
    /// Number of frames, endpoints included.
    #[arg(long, default_value_t = 8, value_parser = super::numbers::at_least::<usize, 2>)]
    pub frames: usize,
    /// Interpolate linearly instead of spherically (to compare: lerp leaves the noise shell).
    #[arg(long)]
    pub lerp: bool,
    /// DDIM steps used to decode each frame (eta 0).
    #[arg(long, default_value_t = 50, value_parser = super::numbers::at_least::<usize, 1>)]
    pub steps: usize,
    #[arg(long, value_parser = super::flags::rng(), default_value_t = RngKind::Torch)]
    pub rng: RngKind,
    #[command(flatten)]
    pub scheduler: SchedulerOverrides,
    /// Class label of a class-conditional model (one for all frames, or one per frame).
    #[arg(long, value_name = "N[,N2,...]", value_parser = super::flags::class_labels)]
    pub class: Option<super::flags::ClassArg>,
    /// Interpolate between two classes instead of two seeds: the class embedding goes from
    /// --class-a's to --class-b's across the frames, all decoded from --seed-a's noise.
    #[arg(long, value_name = "A", requires = "class_b", conflicts_with_all = ["class", "seed_b", "lerp"],
          value_parser = super::numbers::at_least::<u32, 0>)]
    pub class_a: Option<u32>,
    /// The class at the strip's end (with --class-a).
    #[arg(long, value_name = "B", requires = "class_a", value_parser = super::numbers::at_least::<u32, 0>)]
    pub class_b: Option<u32>,
    #[command(flatten)]
    pub guidance: super::flags::GuidanceArgs,
    /// The PNG strip to write.
    #[arg(long, value_name = "FILE", default_value = "interpolation.png")]
    pub out: PathBuf,
    /// Images per U-Net evaluation (default: chosen from the device's limits, as for `sample`).
    #[arg(long, value_parser = super::numbers::at_least::<usize, 1>)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    check_outputs(&[("--out", &args.out)])?;
    let (pipe, name) = load_pipeline(args.model.as_deref(), &args.scheduler)?;
    let per = pipe.per_image();
    // The frames' noise and images, and the strip's bytes (as for `ddim sample`).
    let each = fits::PerImage {
        elements: per as u128,
        f32_copies: 2,
        bytes: 2,
    };
    fits::check("--frames", args.frames as u128, each, "")?;
    let a = NoiseSource::new(args.rng, args.seed_a).randn(per)?;
    let classes = args.class_a.zip(args.class_b);
    let b = match classes {
        Some(_) => a.clone(),
        None => NoiseSource::new(args.rng, args.seed_b).randn(per)?,
    };
    let alphas: Vec<f64> = (0..args.frames)
        .map(|f| f as f64 / (args.frames - 1) as f64)
        .collect();
    let mut x = Vec::with_capacity(per * args.frames);
    for &alpha in &alphas {
        x.extend(if args.lerp {
            lerp(&a, &b, alpha)
        } else {
            slerp(&a, &b, alpha)
        });
    }
    let labels = match classes {
        Some((ca, cb)) => Some(ClassLabels::Mixed(
            alphas.iter().map(|&t| (ca, cb, t as f32)).collect(),
        )),
        None => super::flags::labels_of(&args.class),
    };
    let (c, h, w) = (pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w);
    let x = Tensor::new(vec![args.frames, c, h, w], x)?;
    let device = args.device.open()?;
    let bar = progress_bar(args.quiet);
    let request = LatentRequest {
        steps: args.steps,
        batch: args.batch,
        progress: Some(bar_progress(&bar, 0)),
        labels,
        guidance: args.guidance.guidance(),
    };
    let images = pipe
        .decode(&device, &x, &request)
        .map_err(|e| batch_hint(e, args.batch))?;
    bar.finish_and_clear();
    save_grid(&args.out, &images, Some(args.frames))?;
    if !args.quiet {
        let what = match classes {
            Some((ca, cb)) => format!("class {ca} to class {cb} at seed {}", args.seed_a),
            None => format!(
                "{} from seed {} to seed {}",
                if args.lerp { "lerp" } else { "slerp" },
                args.seed_a,
                args.seed_b
            ),
        };
        println!(
            "wrote {} ({} frames, {what}, {name}, DDIM {} steps) on {}",
            args.out.display(),
            args.frames,
            args.steps,
            device.describe()
        );
    }
    Ok(())
}
