//! `ddim forward`: one U-Net evaluation on a batch read from a safetensors file.

use super::model_args::{AdapterArgs, ModelArgs};
use anyhow::{bail, Context, Result};
use ddim_wgpu::cpu;
use ddim_wgpu::model::tensor_io::{read_tensor, write_tensor, write_tensors};
use ddim_wgpu::model::{ClassLabels, UNet, Weights};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Seed of the random weights used with --arch.
    #[arg(long, default_value_t = 0, value_parser = super::numbers::at_least::<u64, 0>)]
    pub seed: u64,
    /// Input batch [B, C, H, W]: the tensor named `sample`, or the file's only tensor.
    #[arg(long)]
    pub input: PathBuf,
    /// One timestep for the whole batch, or one per batch element: `T` or `T1,T2,...`;
    /// decimals are used as given (Euler, Heun, LMS and consistency models evaluate fractional t;
    /// a Fourier-embedded model takes σ itself).
    #[arg(long)]
    pub timestep: String,
    /// Class labels of a class-conditional model: one for the whole batch or one per element.
    #[arg(long, value_name = "N[,N2,...]", value_parser = super::flags::class_labels)]
    pub class: Option<super::flags::ClassArg>,
    /// Output file; the prediction is written as the tensor `sample`.
    #[arg(long)]
    pub out: PathBuf,
    /// Where to run: auto (a GPU adapter when wgpu finds one, else the CPU reference), cpu or gpu.
    /// `--save-layers` runs on the CPU under auto.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "gpu"])]
    pub device: String,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Do not print the timing line.
    #[arg(long)]
    pub quiet: bool,
    /// Accept timesteps outside 0..num_train_timesteps-1 of the model's scheduler config (the
    /// network evaluates any value; the model was never trained on them).
    #[arg(long)]
    pub allow_any_timestep: bool,
    /// Also write every layer's output (and the time embedding), named by layer, to this file.
    #[arg(long)]
    pub save_layers: Option<PathBuf>,
}

/// Parses `T` or `T1,T2,...` into timesteps; a negative one only with `allow_negative`.
pub fn parse_timesteps(text: &str, allow_negative: bool) -> Result<Vec<f32>> {
    text.split(',')
        .map(|s| {
            let s = s.trim();
            let t: f32 = s
                .parse()
                .with_context(|| format!("--timestep: {s:?} is not a number"))?;
            if !t.is_finite() || (t < 0.0 && !allow_negative) {
                bail!(
                    "--timestep: {s} must be a finite, non-negative number (a negative one, such \
                     as a consistency model's 250·ln σ, needs --allow-any-timestep)"
                );
            }
            Ok(t)
        })
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    let timesteps = parse_timesteps(&args.timestep, args.allow_any_timestep)?;
    let labels = super::flags::labels_of(&args.class);
    let outputs: Vec<(&str, &std::path::Path)> = [("--out", Some(args.out.as_path()))]
        .into_iter()
        .chain([("--save-layers", args.save_layers.as_deref())])
        .filter_map(|(flag, p)| Some((flag, p?)))
        .collect();
    super::sample::check_outputs(&outputs)?;
    let pipe = args.model.load(args.seed)?.pipeline;
    let train_steps = pipe.scheduler.num_train_timesteps;
    if !args.allow_any_timestep {
        if let Some(t) = timesteps
            .iter()
            .find(|&&t| t > train_steps.saturating_sub(1) as f32)
        {
            bail!(
                "--timestep {t} is outside the model's 0..={} (num_train_timesteps {train_steps} in \
                 its scheduler config); pass --allow-any-timestep to evaluate it anyway",
                train_steps.saturating_sub(1)
            );
        }
    }
    let model = pipe.model;
    let (config, weights) = (model.config, model.weights);
    let x = read_tensor(&args.input, "sample")
        .with_context(|| format!("--input {}", args.input.display()))?;
    if x.shape.len() != 4 {
        bail!(
            "--input {}: the input must be [batch, channels, height, width], got shape {:?}",
            args.input.display(),
            x.shape
        );
    }
    let bad = x.data.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        bail!(
            "--input {}: {bad} non-finite value(s) (NaN or ±Inf) among {}; the U-Net needs finite \
             inputs",
            args.input.display(),
            x.numel()
        );
    }
    let (_, _, h, w) = x.nchw();
    let unet = UNet::new(&config, h, w)?;
    ClassLabels::check(labels.as_ref(), &unet.time).context("--class")?;
    if args.device == "gpu" || (args.device == "auto" && args.save_layers.is_none()) {
        match open_gpu(&args) {
            Ok(ctx) => {
                return run_gpu(
                    &args,
                    &ctx,
                    &unet,
                    &weights,
                    &x,
                    &timesteps,
                    labels.as_ref(),
                )
            }
            Err(e) if args.device == "gpu" || args.adapter.names_one() => return Err(e),
            Err(e) => log::warn!("no usable GPU adapter ({e:#}); using the CPU reference"),
        }
    }
    let start = Instant::now();
    let mut layers = Vec::new();
    let keep = args.save_layers.is_some();
    let y = cpu::forward::forward_with(
        &unet,
        &weights,
        &x,
        &timesteps,
        labels.as_ref(),
        &mut |name, t| {
            if keep {
                layers.push((name.to_string(), t.clone()));
            }
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    let gflop = unet.flops() as f64 * x.shape[0] as f64 / 1e9;
    if !args.quiet {
        eprintln!(
            "forward (cpu): input {:?} in {secs:.3} s ({gflop:.2} GFLOP, {:.2} GFLOP/s)",
            x.shape,
            gflop / secs
        );
    }
    write_tensor(&args.out, "sample", &y)?;
    if let Some(path) = &args.save_layers {
        write_tensors(path, &layers)?;
    }
    Ok(())
}

fn open_gpu(args: &Args) -> Result<ddim_wgpu::gpu::GpuContext> {
    if args.save_layers.is_some() {
        bail!("--save-layers is only supported with --device cpu (use `ddim verify` for the GPU)");
    }
    ddim_wgpu::gpu::GpuContext::new(&args.adapter.choice()?)
}

/// The GPU branch: the compiled plan (batch split by the adapter's binding limits).
fn run_gpu(
    args: &Args,
    ctx: &ddim_wgpu::gpu::GpuContext,
    unet: &UNet,
    weights: &Weights,
    x: &ddim_wgpu::Tensor,
    timesteps: &[f32],
    labels: Option<&ClassLabels>,
) -> Result<()> {
    let start = Instant::now();
    let weights = ddim_wgpu::gpu::GpuWeights::upload(ctx, unet, weights)?;
    let y = ddim_wgpu::gpu::plan::forward(ctx, unet, &weights, x, timesteps, labels, None)?;
    let secs = start.elapsed().as_secs_f64();
    if !args.quiet {
        let gflop = unet.flops() as f64 * x.shape[0] as f64 / 1e9;
        eprintln!(
            "forward (gpu: {}): input {:?} in {secs:.3} s including plan build ({gflop:.2} GFLOP)",
            ctx.describe(),
            x.shape
        );
    }
    write_tensor(&args.out, "sample", &y)
}
