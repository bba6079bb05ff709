//! The sampling loop on the GPU (DDIM, DDPM, and noise-free tables such as DDIM inversion):
//! every step is one command buffer (copy the sample into the forward's input, the U-Net
//! forward, the fused update), submitted per step for progress, with no read back until the
//! end. Per-step data (the time-embedding tables inside the forward, the update coefficients)
//! is selected by step index through dynamic offsets, so the dispatches are recorded once.
//!
//! Entry points: [`sample`] runs one batch on any [`StepForward`]; [`sample_images`] and
//! [`run_table`] compile `UNetPlan`s and mirror `sampling::sample_images_cpu` /
//! `sampling::run_table_cpu` (what `gpu::run` and `ddim sample --device gpu` call).
//!
//! Layout: the sample lives on the device in NHWC, like every activation. The DDIM update is
//! elementwise and thresholds per image, so NHWC changes nothing in its math; the host converts
//! the initial sample and each step's noise from NCHW on the way in and the result on the way out.

use anyhow::{ensure, Context, Result};

use super::kernel::Dispatch;
use super::kernels::ddim_step::{
    ddim_rows, ddim_update, ddpm_rows, DdimBuffers, DdimUpdateConfig, NoiseLayout, UpdateRow,
};
use super::plan::{max_batch, PlanOptions, UNetPlan};
use super::GpuContext;
use crate::model::{UNet, Weights};
use crate::sampling::{in_chunks, NoisePlan, SampleSettings, StepTable, Trajectory};
use crate::schedule::{PredictionType, SchedulerConfig, X0Limit};
use crate::Tensor;

/// What the sampler needs from a compiled U-Net forward: NHWC input and output buffers for a
/// fixed batch, and dispatches that evaluate the network at sampling step `step` (the plan was
/// built with the timesteps of every step).
pub trait StepForward {
    /// NHWC `[B, H, W, C_in]` input, written by the sampler before each step.
    fn input(&self) -> &wgpu::Buffer;
    /// NHWC `[B, H, W, C_out]` model output of the last forward.
    fn output(&self) -> &wgpu::Buffer;
    /// The dispatches of one forward, encoded in order with `Dispatch::encode(pass, step)`.
    fn dispatches(&self) -> &[Dispatch];
}

/// NCHW → NHWC for a `[n, c, h, w]` buffer.
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    let hw = h * w;
    for b in 0..n {
        for ch in 0..c {
            let src = &x[(b * c + ch) * hw..][..hw];
            for (p, &v) in src.iter().enumerate() {
                out[(b * hw + p) * c + ch] = v;
            }
        }
    }
    out
}

/// NHWC → NCHW for a `[n, h, w, c]` buffer.
pub fn nhwc_to_nchw(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    let hw = h * w;
    for b in 0..n {
        for p in 0..hw {
            let src = &x[(b * hw + p) * c..][..c];
            for (ch, &v) in src.iter().enumerate() {
                out[(b * c + ch) * hw + p] = v;
            }
        }
    }
    out
}

/// How to run a sampling loop (DDIM, or DDPM with `ddpm_rows`).
pub struct SampleSpec<'a> {
    /// One row per model evaluation (`ddim_step::ddim_rows(&schedule::ddim_table(..))` or
    /// `ddpm_rows`), in the order of the timesteps the forward was built with.
    pub steps: &'a [UpdateRow],
    pub prediction: PredictionType,
    pub limit: X0Limit,
    /// diffusers' `use_clipped_model_output` (DDIM only; false for DDPM and inversion).
    pub use_clipped_model_output: bool,
}

/// The sample after every step, in NCHW: x_T in, x_0 out.
/// [`sample_recording`] also keeps the predicted x0 of chosen steps.
///
/// `noise(s)` is called for every step `s` in order when any step has sigma > 0, and returns
/// that step's NCHW noise (`x_t.numel()` values) or None where the sampler draws none (the
/// caller knows the draw rule: diffusers' DDIM draws at every step when eta > 0, even where
/// sigma is 0; DDPM only where t > 0), so a sequential generator (torch's) stays aligned with
/// the reference. With eta = 0 it is never called. `progress(s, total)` follows each submission.
pub fn sample(
    ctx: &GpuContext,
    forward: &dyn StepForward,
    spec: &SampleSpec<'_>,
    x_t: &Tensor,
    noise: &mut dyn FnMut(usize) -> Result<Option<Vec<f32>>>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    Ok(sample_recording(ctx, forward, spec, x_t, noise, &[], progress)?.0)
}

/// [`sample`], also returning the predicted x0 (after the x0 limit, as the update uses it;
/// NCHW) after each step listed in `record` (ascending step indices). The update kernel writes
/// x0 to a scratch buffer that each recorded step's command buffer copies into its own frame
/// buffer, so there is still no read back until the end.
pub fn sample_recording(
    ctx: &GpuContext,
    forward: &dyn StepForward,
    spec: &SampleSpec<'_>,
    x_t: &Tensor,
    noise: &mut dyn FnMut(usize) -> Result<Option<Vec<f32>>>,
    record: &[usize],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Vec<Tensor>)> {
    ensure!(
        x_t.shape.len() == 4,
        "the initial sample must be NCHW, got shape {:?}",
        x_t.shape
    );
    let (n, c, h, w) = x_t.nchw();
    let numel = x_t.numel();
    ensure!(!spec.steps.is_empty(), "sampling needs at least one step");
    ensure!(
        forward.input().size() >= (numel * 4) as u64 && forward.output().size() >= (numel * 4) as u64,
        "the forward plan's input/output hold fewer than the sample's {numel} values ({n}x{c}x{h}x{w})"
    );
    let sample = ctx.upload("sample", &nchw_to_nhwc(&x_t.data, n, c, h, w));
    ensure!(
        record.windows(2).all(|p| p[0] < p[1]) && record.iter().all(|&s| s < spec.steps.len()),
        "steps to record must ascend and lie below {}, got {record:?}",
        spec.steps.len()
    );
    let bytes = (numel * 4) as u64;
    let read_back = bytes * (record.len() as u64 + 1);
    ensure!(
        read_back <= ctx.limits.max_buffer_size,
        "keeping the predicted x0 of {} steps for {n} image(s) needs {} MiB, more than the {} MiB \
         one buffer may hold on {}: record fewer steps or use a smaller batch",
        record.len(),
        read_back >> 20,
        ctx.limits.max_buffer_size >> 20,
        ctx.info.name
    );
    let x0_scratch = (!record.is_empty()).then(|| ctx.storage("predicted x0", bytes));
    let frames: Vec<wgpu::Buffer> = record
        .iter()
        .map(|s| ctx.storage(&format!("predicted x0 after step {s}"), bytes))
        .collect();
    let noisy = spec.steps.iter().any(|s| s.sigma > 0.0);
    let noise_buf = noisy.then(|| ctx.storage("step noise", (numel * 4) as u64));
    let update = ddim_update(
        ctx,
        &DdimUpdateConfig {
            batch: n,
            per_sample: c * h * w,
            prediction: spec.prediction,
            limit: spec.limit,
            use_clipped_model_output: spec.use_clipped_model_output,
        },
        spec.steps,
        NoiseLayout::Rewritten,
        &DdimBuffers {
            model_out: forward.output(),
            noise: noise_buf.as_ref(),
            sample: &sample,
            x0_out: x0_scratch.as_ref(),
        },
    )?;
    let total = spec.steps.len();
    for (s, step) in spec.steps.iter().enumerate() {
        if let Some(buf) = &noise_buf {
            match noise(s).with_context(|| format!("noise for step {s}"))? {
                Some(z) => {
                    ensure!(
                        z.len() == numel,
                        "noise for step {s} has {} values, the sample {numel}",
                        z.len()
                    );
                    // Applied before this submission, after the previous step's commands.
                    let z = nchw_to_nhwc(&z, n, c, h, w);
                    ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(&z));
                }
                None => ensure!(
                    step.sigma == 0.0,
                    "step {s} has sigma {} but no noise was given",
                    step.sigma
                ),
            }
        }
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("ddim step"),
            });
        encoder.copy_buffer_to_buffer(&sample, 0, forward.input(), 0, Some((numel * 4) as u64));
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("ddim step"),
                timestamp_writes: None,
            });
            for d in forward.dispatches().iter().chain(&update) {
                d.encode(&mut pass, s as u32);
            }
        }
        if let (Some(k), Some(x0)) = (record.iter().position(|&r| r == s), &x0_scratch) {
            encoder.copy_buffer_to_buffer(x0, 0, &frames[k], 0, Some(bytes));
        }
        ctx.validated(&format!("submitting DDIM step {s}"), || {
            ctx.queue.submit([encoder.finish()]);
        })?;
        progress(s + 1, total);
    }
    let reads: Vec<(&wgpu::Buffer, usize)> = std::iter::once(&sample)
        .chain(&frames)
        .map(|b| (b, numel))
        .collect();
    let mut tensors = ctx
        .read_many(&reads)?
        .into_iter()
        .map(|v| Tensor::new(vec![n, c, h, w], nhwc_to_nchw(&v, n, c, h, w)));
    let out = tensors.next().context("reading the sample back")??;
    Ok((out, tensors.collect::<Result<_>>()?))
}

/// The update rows of a sampler table, the x0 limit, and whether ε is re-derived from the
/// limited x0 (as the CPU steps `ddim_step`, `ddpm_step` and `inverse_step` do).
fn update_rows(
    table: &StepTable,
    cfg: &SchedulerConfig,
    settings: &SampleSettings,
) -> (Vec<UpdateRow>, X0Limit, bool) {
    match table {
        StepTable::Ddim(s) => (
            ddim_rows(s),
            X0Limit::from_config(cfg),
            settings.use_clipped_model_output,
        ),
        StepTable::Ddpm(s) => (ddpm_rows(s), X0Limit::from_config(cfg), false),
        StepTable::Inverse(s) => (ddim_rows(s), X0Limit::for_inverse(cfg), false),
    }
}

/// Compiled plans by batch size (a run needs at most two: full chunks and the remainder).
#[derive(Default)]
struct Plans(Vec<(usize, UNetPlan)>);

impl Plans {
    fn get(
        &mut self,
        ctx: &GpuContext,
        unet: &UNet,
        weights: &Weights,
        table: &StepTable,
        batch: usize,
    ) -> Result<&UNetPlan> {
        let i = match self.0.iter().position(|(b, _)| *b == batch) {
            Some(i) => i,
            None => {
                let timesteps: Vec<Vec<f32>> = (0..table.len())
                    .map(|i| vec![table.timestep(i) as f32; batch])
                    .collect();
                let plan = UNetPlan::new(ctx, unet, weights, &timesteps, PlanOptions::default())
                    .with_context(|| format!("compiling the U-Net for a batch of {batch}"))?;
                self.0.push((batch, plan));
                self.0.len() - 1
            }
        };
        Ok(&self.0[i].1)
    }
}

/// Samples all `noise.num` images on the GPU in chunks of `batch` (x0 as NCHW in [-1, 1], not
/// clamped), consuming exactly the noise the CPU reference (`sampling::sample_images_cpu`)
/// consumes. One plan is compiled per distinct chunk size (at most two) and reused.
/// Fills `trajectory`'s frames when given. `progress(done, total)` counts model evaluations.
#[allow(clippy::too_many_arguments)]
pub fn sample_images(
    ctx: &GpuContext,
    unet: &UNet,
    weights: &Weights,
    cfg: &SchedulerConfig,
    settings: &SampleSettings,
    noise: &NoisePlan,
    batch: usize,
    mut trajectory: Option<&mut Trajectory>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let table = StepTable::new(cfg, settings)?;
    noise.check_model(unet)?;
    let (c, h, w) = (unet.input.c, unet.input.h, unet.input.w);
    let per_image = c * h * w;
    let fits = max_batch(ctx, unet)?;
    let batch = batch.min(fits).min(noise.num);
    if let Some(t) = trajectory.as_deref_mut() {
        t.start(table.len(), noise.num, c, h, w)?;
    }
    let record = trajectory
        .as_ref()
        .map_or(&[][..], |t| &t.steps[..])
        .to_vec();
    let (rows, limit, use_clipped) = update_rows(&table, cfg, settings);
    let spec = SampleSpec {
        steps: &rows,
        prediction: cfg.prediction_type,
        limit,
        use_clipped_model_output: use_clipped,
    };
    let mut plans = Plans::default();
    in_chunks(
        noise.num,
        batch,
        (c, h, w),
        table.len(),
        progress,
        &mut |range, tick| {
            let plan = plans.get(ctx, unet, weights, &table, range.len())?;
            let chunk = noise.chunk(range.clone())?;
            let x_t = Tensor::new(vec![range.len(), c, h, w], chunk.initial)?;
            let mut steps = chunk.steps;
            let (x0, frames) = sample_recording(
                ctx,
                plan,
                &spec,
                &x_t,
                &mut |s| Ok(steps.get_mut(s).and_then(Option::take)),
                &record,
                &mut |_, _| tick(),
            )
            .with_context(|| format!("sampling images {range:?}"))?;
            if let Some(t) = trajectory.as_deref_mut() {
                for (k, frame) in frames.iter().enumerate() {
                    t.store(k, range.clone(), per_image, &frame.data);
                }
            }
            Ok(x0)
        },
    )
}

/// Runs a noise-free table (DDIM with eta 0, or DDIM inversion) on the GPU from the samples `x`
/// (NCHW), in chunks of `batch`; the counterpart of `sampling::run_table_cpu`.
#[allow(clippy::too_many_arguments)]
pub fn run_table(
    ctx: &GpuContext,
    unet: &UNet,
    weights: &Weights,
    cfg: &SchedulerConfig,
    table: &StepTable,
    x: &Tensor,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    ensure!(
        x.shape.len() == 4,
        "samples must be NCHW, got {:?}",
        x.shape
    );
    let (num, c, h, w) = x.nchw();
    ensure!(num > 0, "no samples given");
    ensure!(
        (c, h, w) == (unet.input.c, unet.input.h, unet.input.w)
            && (unet.output.c, unet.output.h, unet.output.w) == (c, h, w),
        "samples {:?} do not match the model's input {} and output {}",
        x.shape,
        unet.input,
        unet.output
    );
    let (rows, limit, use_clipped) = update_rows(table, cfg, &SampleSettings::default());
    ensure!(
        rows.iter().all(|r| r.sigma == 0.0),
        "run_table takes a noise-free table (eta 0 or inversion)"
    );
    let spec = SampleSpec {
        steps: &rows,
        prediction: cfg.prediction_type,
        limit,
        use_clipped_model_output: use_clipped,
    };
    let batch = batch.min(max_batch(ctx, unet)?).min(num);
    let mut plans = Plans::default();
    in_chunks(
        num,
        batch,
        (c, h, w),
        table.len(),
        progress,
        &mut |range, tick| {
            let plan = plans.get(ctx, unet, weights, table, range.len())?;
            sample(
                ctx,
                plan,
                &spec,
                &x.images(range.clone())?,
                &mut |_| Ok(None),
                &mut |_, _| tick(),
            )
            .with_context(|| format!("running samples {range:?}"))
        },
    )
}
