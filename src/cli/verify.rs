//! `ddim verify`: run one U-Net forward (and a short sample) on the chosen adapter and on the CPU
//! reference, print a per-layer table (max abs difference, relative L2) and fail when any layer
//! exceeds the tolerance. This is how a user checks their own GPU and driver.

use super::model_args::{AdapterArgs, ModelArgs};
use super::schedule::{SigmaArgs, SolverArgs};
use ddim_wgpu::gpu::Precision;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ddim_wgpu::cpu::forward::forward_with;
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::time_embedding::time_embedding;
use ddim_wgpu::gpu::plan::{folded_layers, PlanOptions, UNetPlan};
use ddim_wgpu::gpu::{GpuContext, GpuWeights};
use ddim_wgpu::model::unet::TimeProj;
use ddim_wgpu::model::{ClassLabels, UNet};
use ddim_wgpu::pipeline::{Device, Noise, SampleRequest};
use ddim_wgpu::rng::{RngKind, TorchRng};
use ddim_wgpu::sampling::{SampleSettings, SamplerKind};
use ddim_wgpu::tensor::{max_abs_diff, rel_l2};
use ddim_wgpu::Tensor;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per forward.
    #[arg(long, default_value_t = 2, value_parser = super::numbers::at_least::<usize, 1>)]
    pub batch: usize,
    /// Steps of the short DDIM sample compared after the forward (0: skip it).
    #[arg(long, default_value_t = 3, value_parser = super::numbers::at_least::<usize, 0>)]
    pub steps: usize,
    /// Sampler of the short sample.
    #[arg(long, value_parser = super::flags::sampler(), default_value_t = SamplerKind::Ddim)]
    pub sampler: SamplerKind,
    /// DDIM eta of the short sample (default 1 for DDIM: it exercises the noise path).
    #[arg(long)]
    pub eta: Option<f64>,
    #[command(flatten)]
    pub solver: SolverArgs,
    /// Class labels of a class-conditional model: one for the whole batch or one per image.
    #[arg(long, value_name = "N[,N2,...]", value_parser = super::flags::class_labels)]
    pub class: Option<super::flags::ClassArg>,
    #[command(flatten)]
    pub sigma: SigmaArgs,
    /// Seed of the input, the noise and (with --arch) the weights.
    #[arg(long, default_value_t = 0, value_parser = super::numbers::at_least::<u64, 0>)]
    pub seed: u64,
    /// Largest relative L2 error allowed for any layer of the forward (default 1e-4, or
    /// 5e-3 with --precision f16).
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Largest max-abs difference allowed for the sampled images (default 1e-3, or 3e-2 with
    /// --precision f16).
    #[arg(long)]
    pub sample_tolerance: Option<f64>,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Whether an error is within tolerance; NaN never is.
fn within(err: f64, tolerance: f64) -> bool {
    err <= tolerance
}

/// One compared tensor.
struct Row {
    name: String,
    shape: Vec<usize>,
    max_abs: f64,
    rel_l2: f64,
}

impl Row {
    fn new(name: &str, got: &Tensor, want: &Tensor) -> Self {
        let (max_abs, rel) = if got.shape == want.shape {
            (
                max_abs_diff(&got.data, &want.data).0,
                rel_l2(&got.data, &want.data),
            )
        } else {
            (f64::INFINITY, f64::INFINITY)
        };
        Self {
            name: name.to_string(),
            shape: want.shape.clone(),
            max_abs,
            rel_l2: rel,
        }
    }
}

/// Spread timesteps over the batch so that the embedding is exercised at both ends.
fn timesteps(batch: usize, train_steps: usize) -> Vec<f32> {
    let last = train_steps.saturating_sub(1) as f32;
    (0..batch)
        .map(|b| {
            if batch == 1 {
                last / 2.0
            } else {
                (last * (batch - 1 - b) as f32 / (batch - 1) as f32).round()
            }
        })
        .collect()
}

/// The GPU forward's time embedding and every layer's output (NCHW), named as the CPU
/// reference names them (`cpu::forward::forward_with`); layers the plan folds into a neighbour
/// (`gpu::plan::folded_layers`) have no output of their own.
fn gpu_forward_layers(
    ctx: &GpuContext,
    unet: &UNet,
    weights: &GpuWeights,
    x: &Tensor,
    timesteps: &[f32],
    labels: Option<&ClassLabels>,
) -> Result<Vec<(String, Tensor)>> {
    let steps = [timesteps.to_vec()];
    let options = PlanOptions {
        keep_layer_outputs: true,
        ..Default::default()
    };
    let plan = UNetPlan::new(ctx, unet, weights, &steps, options)?;
    plan.set_labels(ctx, unet, weights, labels)?;
    plan.write_input(ctx, x)?;
    plan.run(ctx, 0)?;
    let mut layers = plan.read_layers(ctx)?;
    let (dispatches, emb) = time_embedding(ctx, &unet.time, weights, &steps)?;
    run_dispatches(ctx, &dispatches, 0)?;
    let emb = Tensor::new(vec![timesteps.len(), emb.width()], emb.read(ctx)?.concat())?;
    layers.insert(0, ("time_embedding".to_string(), emb));
    Ok(layers)
}

pub fn run(args: Args) -> Result<()> {
    let pipe = args.model.load(args.seed)?.pipeline;
    super::fits::check_batch(&pipe.unet, args.batch, true)?;
    // f16 stores every activation to 11 significant bits: its defaults sit above what
    // tests/gpu_f16.rs and this command measure on lavapipe (README.md), f32's likewise.
    let (tolerance, sample_tolerance) = match args.adapter.precision {
        Precision::F32 => (1e-4, 1e-3),
        Precision::F16 => (5e-3, 3e-2),
    };
    let tolerance = args.tolerance.unwrap_or(tolerance);
    let sample_tolerance = args.sample_tolerance.unwrap_or(sample_tolerance);
    let device = Device::gpu(&args.adapter.choice()?)?;
    let ctx = device.gpu_context().context("a GPU device has a context")?;
    let unet = &pipe.unet;
    let weights = &pipe.model.weights;
    let labels = super::flags::labels_of(&args.class);
    ClassLabels::check(labels.as_ref(), &unet.time).context("--class")?;
    let (c, h, w) = (unet.input.c, unet.input.h, unet.input.w);
    let numel = args.batch * c * h * w;
    let x = Tensor::new(
        vec![args.batch, c, h, w],
        TorchRng::new(args.seed).randn(numel.max(16))?[..numel].to_vec(),
    )?;
    let mut ts = timesteps(args.batch, pipe.scheduler.num_train_timesteps);
    if matches!(unet.time.proj, TimeProj::Fourier { .. }) {
        // A Fourier embedding takes σ > 0 (it embeds ln σ): the spread starts at 0.01.
        ts.iter_mut().for_each(|t| *t = t.max(0.01));
    }

    // The forward, layer by layer.
    let t0 = Instant::now();
    let mut cpu_layers: Vec<(String, Tensor)> = vec![];
    forward_with(unet, weights, &x, &ts, labels.as_ref(), &mut |name, t| {
        cpu_layers.push((name.to_string(), t.clone()))
    })?;
    let cpu_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let gpu_weights = pipe.gpu_weights(ctx)?;
    let gpu_layers = gpu_forward_layers(ctx, unet, &gpu_weights, &x, &ts, labels.as_ref())
        .context("running the forward on the GPU")?;
    let gpu_secs = t0.elapsed().as_secs_f64();
    let mut rows = vec![];
    // The class embedding is added inside the GPU's embedding table; the resnets reading it
    // are compared.
    let mut folded = folded_layers(unet);
    folded.push("class_embedding");
    for (name, want) in &cpu_layers {
        match gpu_layers.iter().find(|(n, _)| n == name) {
            Some((_, got)) => rows.push(Row::new(name, got, want)),
            None if folded.contains(&name.as_str()) => {}
            None => bail!("the GPU plan reported no output for layer {name}"),
        }
    }

    // A short sample through the whole loop (GPU sampler vs CPU reference, same noise).
    let mut sample_row = None;
    // A Fourier (σ-conditioned, score) model cannot take the t = 0 every DDIM run ends at.
    let fourier = matches!(unet.time.proj, TimeProj::Fourier { .. });
    let samplable = unet.output == unet.input && !fourier;
    if args.steps > 0 && !samplable && !args.json {
        if fourier {
            println!("(no sample: a Fourier time embedding takes σ > 0, and DDIM ends at t = 0)");
        } else {
            println!(
                "(no sample: the model outputs {} for inputs {}, e.g. a learned variance)",
                unet.output, unet.input
            );
        }
    }
    if args.steps > 0 && samplable {
        let eta = args.eta.unwrap_or(if args.sampler == SamplerKind::Ddim {
            1.0
        } else {
            0.0
        });
        let settings = SampleSettings {
            sampler: args.sampler,
            steps: args.steps,
            eta,
            solver: args.solver.keys(),
            sigma: args.sigma.keys(),
            ..Default::default()
        };
        let request = SampleRequest {
            settings,
            noise: Noise::Seed {
                seed: args.seed,
                num: args.batch,
            },
            batch: Some(args.batch),
            rng: RngKind::Torch,
            labels: labels.clone(),
            ..Default::default()
        };
        let cpu = pipe.sample(&Device::Cpu, &request)?;
        let gpu = pipe
            .sample(&device, &request)
            .context("sampling on the GPU")?;
        sample_row = Some(Row::new(
            &match args.sampler {
                SamplerKind::Ddim => format!("sample ({} DDIM steps, eta {eta})", args.steps),
                other => format!("sample ({} {} steps)", args.steps, other.as_str()),
            },
            &gpu,
            &cpu,
        ));
    }

    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| !within(r.rel_l2, tolerance))
        .collect();
    let sample_failed = sample_row
        .as_ref()
        .is_some_and(|r| !within(r.max_abs, sample_tolerance));
    if args.json {
        let layer = |r: &Row| json!({"name": r.name, "shape": r.shape, "max_abs": r.max_abs, "rel_l2": r.rel_l2});
        let report = json!({
            "adapter": ctx.describe(),
            "batch": args.batch,
            "timesteps": ts,
            "precision": ctx.precision.wgsl(),
            "tolerance": tolerance,
            "layers": rows.iter().map(layer).collect::<Vec<_>>(),
            "sample": sample_row.as_ref().map(layer),
            "sample_tolerance": sample_tolerance,
            "cpu_forward_s": cpu_secs,
            "gpu_forward_s": gpu_secs,
            "ok": failed.is_empty() && !sample_failed,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("adapter: {} ({} storage)", ctx.describe(), ctx.precision);
        println!(
            "forward: batch {}, timesteps {:?}; CPU {:.2} s, GPU {:.2} s (first run, includes pipeline compilation)",
            args.batch, ts, cpu_secs, gpu_secs
        );
        let width = rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(10)
            .max(10);
        println!(
            "{:<width$}  {:<18}  {:>10}  {:>10}",
            "layer", "shape", "max abs", "rel L2"
        );
        for r in &rows {
            let flag = if within(r.rel_l2, tolerance) {
                ""
            } else {
                "  <-- above tolerance"
            };
            println!(
                "{:<width$}  {:<18}  {:>10.3e}  {:>10.3e}{flag}",
                r.name,
                format!("{:?}", r.shape),
                r.max_abs,
                r.rel_l2
            );
        }
        if let Some(r) = &sample_row {
            println!(
                "{}: max abs {:.3e}, rel L2 {:.3e} (tolerance {:.0e} max abs)",
                r.name, r.max_abs, r.rel_l2, sample_tolerance
            );
        }
    }
    if !failed.is_empty() || sample_failed {
        bail!(
            "verify failed on {}: {} layer(s) above rel L2 {:.0e}{}",
            ctx.describe(),
            failed.len(),
            tolerance,
            if sample_failed {
                ", and the sample differs"
            } else {
                ""
            }
        );
    }
    if !args.json {
        println!("OK: every layer within rel L2 {:.0e}", tolerance);
    }
    Ok(())
}
