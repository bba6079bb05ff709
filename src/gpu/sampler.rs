//! The DDIM sampling loop on the GPU: every step is one command buffer (copy the sample into the
//! forward's input, the U-Net forward, the fused DDIM update), submitted per step for progress,
//! with no read back until the end. Per-step data (the time-embedding tables inside the forward,
//! the DDIM coefficients) is selected by step index through dynamic offsets, so the dispatches
//! are recorded once.
//!
//! Layout: the sample lives on the device in NHWC, like every activation. The DDIM update is
//! elementwise and thresholds per image, so NHWC changes nothing in its math; the host converts
//! the initial sample and each step's noise from NCHW on the way in and the result on the way out.

use anyhow::{ensure, Context, Result};

use super::kernel::Dispatch;
use super::kernels::ddim_step::{
    ddim_update, DdimBuffers, DdimUpdateConfig, NoiseLayout, UpdateRow,
};
use super::GpuContext;
use crate::schedule::{PredictionType, X0Limit};
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
    /// DDPM: false.
    pub prediction: PredictionType,
    pub limit: X0Limit,
    pub use_clipped_model_output: bool,
}

/// The sample after every step, in NCHW: x_T in, x_0 out.
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
    let (n, c, h, w) = x_t.nchw();
    let numel = x_t.numel();
    ensure!(!spec.steps.is_empty(), "sampling needs at least one step");
    ensure!(
        forward.input().size() >= (numel * 4) as u64 && forward.output().size() >= (numel * 4) as u64,
        "the forward plan's input/output hold fewer than the sample's {numel} values ({n}x{c}x{h}x{w})"
    );
    let sample = ctx.upload("sample", &nchw_to_nhwc(&x_t.data, n, c, h, w));
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
            x0_out: None,
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
        ctx.validated(&format!("submitting DDIM step {s}"), || {
            ctx.queue.submit([encoder.finish()]);
        })?;
        progress(s + 1, total);
    }
    let out = ctx.read_f32(&sample, numel)?;
    Tensor::new(vec![n, c, h, w], nhwc_to_nchw(&out, n, c, h, w))
}
