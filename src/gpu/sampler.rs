//! The sampling loop on the GPU (DDIM, DDPM, and noise-free tables such as DDIM inversion):
//! every step is one command buffer (copy the sample into the forward's input, the U-Net
//! forward, the fused update), submitted per step for progress, with no read back until the
//! end. Per-step data (the time-embedding tables inside the forward, the update coefficients)
//! is selected by step index through dynamic offsets, so the dispatches are recorded once.
//!
//! Entry points: [`sample`] / [`sample_recording`] run one batch on any [`StepForward`];
//! [`GpuRunner`] is the GPU device of the one sampling loop (`sampling::run`): it compiles a
//! `UNetPlan` per chunk size (at most two per run) over weights uploaded once.
//!
//! Layout: the sample lives on the device in NHWC, like every activation. The DDIM update is
//! elementwise and thresholds per image, so NHWC changes nothing in its math; the host converts
//! the initial sample and each step's noise from NCHW on the way in and the result on the way out.

use anyhow::{ensure, Context, Result};

use super::kernels::ddim_step::{
    ddim_rows, ddim_update, ddpm_rows, DdimBuffers, DdimUpdateConfig, NoiseLayout, UpdateRow,
};
use super::plan::{max_batch, PlanOptions, StepForward, UNetPlan};
use super::weights::GpuWeights;
use super::GpuContext;
use crate::model::UNet;
use crate::sampling::{Chunk, ChunkOutput, SamplerSteps, StepRunner};
use crate::schedule::{PredictionType, SchedulerConfig, X0Limit};
use crate::tensor::{nchw_to_nhwc, nhwc_to_nchw};
use crate::Tensor;

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

/// The GPU as a device of the sampling loop: one run's update rows and a compiled plan per chunk
/// size, all over the same uploaded weights.
pub struct GpuRunner<'a> {
    ctx: &'a GpuContext,
    unet: &'a UNet,
    weights: &'a GpuWeights,
    options: PlanOptions,
    /// The model timestep of every step, in loop order.
    timesteps: Vec<i64>,
    rows: Vec<UpdateRow>,
    prediction: PredictionType,
    limit: X0Limit,
    use_clipped_model_output: bool,
    max_batch: usize,
    /// Compiled plans by batch size: full chunks and the remainder.
    plans: Vec<(usize, UNetPlan)>,
}

impl<'a> GpuRunner<'a> {
    pub fn new(
        ctx: &'a GpuContext,
        unet: &'a UNet,
        weights: &'a GpuWeights,
        cfg: &SchedulerConfig,
        steps: &SamplerSteps,
        options: PlanOptions,
    ) -> Result<Self> {
        let rows = match steps {
            SamplerSteps::Ddim { steps, .. } | SamplerSteps::Inverse(steps) => ddim_rows(steps),
            SamplerSteps::Ddpm(s) => ddpm_rows(s),
            SamplerSteps::Multistep(_) => anyhow::bail!("multistep solvers on the GPU: not yet"),
        };
        Ok(Self {
            ctx,
            unet,
            weights,
            options,
            timesteps: (0..steps.len()).map(|i| steps.timestep(i)).collect(),
            rows,
            prediction: cfg.prediction_type,
            limit: steps.x0_limit(cfg),
            use_clipped_model_output: steps.use_clipped_model_output(),
            max_batch: max_batch(ctx, unet)?,
            plans: Vec::new(),
        })
    }

    /// The index in `plans` of the plan for `batch`, compiling it on first use.
    fn plan_index(&mut self, batch: usize) -> Result<usize> {
        Ok(match self.plans.iter().position(|(b, _)| *b == batch) {
            Some(i) => i,
            None => {
                let timesteps: Vec<Vec<f32>> = self
                    .timesteps
                    .iter()
                    .map(|&t| vec![t as f32; batch])
                    .collect();
                let plan =
                    UNetPlan::new(self.ctx, self.unet, self.weights, &timesteps, self.options)
                        .with_context(|| format!("compiling the U-Net for a batch of {batch}"))?;
                self.plans.push((batch, plan));
                self.plans.len() - 1
            }
        })
    }
}

impl StepRunner for GpuRunner<'_> {
    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn run_chunk(
        &mut self,
        chunk: Chunk,
        record: &[usize],
        tick: &mut dyn FnMut(),
    ) -> Result<ChunkOutput> {
        let Chunk { x, mut noise } = chunk;
        let i = self.plan_index(x.shape[0])?;
        let plan = &self.plans[i].1;
        let spec = SampleSpec {
            steps: &self.rows,
            prediction: self.prediction,
            limit: self.limit,
            use_clipped_model_output: self.use_clipped_model_output,
        };
        let (x, frames) = sample_recording(
            self.ctx,
            plan,
            &spec,
            &x,
            &mut |s| Ok(noise.get_mut(s).and_then(Option::take)),
            record,
            &mut |_, _| tick(),
        )?;
        Ok(ChunkOutput { x, frames })
    }
}
