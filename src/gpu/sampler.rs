//! The sampling loop on the GPU (DDIM, DDPM, noise-free tables such as DDIM inversion, the
//! multistep solvers DPM-Solver(++) with its SDE variants, UniPC and PNDM, the σ-space samplers
//! Euler, Euler ancestral, Heun and LMS, and the consistency sampler): every step is one command
//! buffer (copy the sample — the consistency sampler: its scaled model input, which its update
//! writes — into the forward's input, the U-Net forward, the fused update; the σ-space update
//! writes the next model input itself, scaled, and Heun's two evaluations of a step share one
//! command buffer), submitted per step for
//! progress, with no read back until the end. Per-step data (the time-embedding tables inside
//! the forward, the update coefficients) is selected by step index through dynamic offsets, so
//! the dispatches are recorded once; the multistep solvers keep their earlier outputs on the
//! device (`kernels::multistep`).
//!
//! Entry points: [`sample`] / [`sample_recording`] run one batch on any [`StepForward`];
//! [`GpuRunner`] is the GPU device of the one sampling loop (`sampling::run`): it compiles a
//! `UNetPlan` per chunk size (at most two per run) over weights uploaded once.
//!
//! Layout: the sample lives on the device in NHWC, like every activation. The updates are
//! elementwise and threshold per image, so NHWC changes nothing in their math; the host converts
//! the initial sample and each step's noise from NCHW on the way in and the result on the way out.
//!
//! Divergence: the updates lower a one-u32 flag to the index of any step whose new sample holds
//! a NaN or infinity; it is read with the final sample, so a run that overflowed fails with
//! [`NonFinite`] (the first such step) at no cost to one that did not.

use anyhow::{ensure, Context, Result};

use super::kernel::Dispatch;
use super::kernels::consistency::{consistency_update, ConsistencyIo};
use super::kernels::ddim_step::{
    ddim_rows, ddim_update, ddpm_rows, DdimIo, DdimUpdateConfig, NoiseLayout, UpdateRow,
};
use super::kernels::guide::{guide, Guide};
use super::kernels::multistep::{check_history, history_slots, multistep_update, MultistepIo};
use super::kernels::sigma_step::{self, sigma_update, SigmaIo};
use super::memory::{mib, Footprint};
use super::plan::{max_batch, plan_footprint, PlanOptions, StepForward, UNetPlan};
use super::precision::Precision;
use super::tensor::GpuTensor;
use super::weights::GpuWeights;
use super::GpuContext;
use crate::model::UNet;
use crate::sampling::{Chunk, ChunkOutput, Guided, SamplerSteps, StepRunner};
use crate::schedule::{
    consistency_input, ConsistencyTable, MultistepTable, PredictionType, SchedulerConfig,
    SigmaTable, X0Limit,
};
use crate::tensor::{nchw_to_nhwc, nhwc_to_nchw};
use crate::Tensor;

/// The DDIM-kernel update of a loop (DDIM, or DDPM with `ddpm_rows`, or inversion).
pub struct DdimSpec<'a> {
    /// One row per model evaluation (`ddim_step::ddim_rows(&schedule::ddim_table(..))` or
    /// `ddpm_rows`), in the order of the timesteps the forward was built with.
    pub steps: &'a [UpdateRow],
    pub prediction: PredictionType,
    pub limit: X0Limit,
    /// diffusers' `use_clipped_model_output` (DDIM only; false for DDPM and inversion).
    pub use_clipped_model_output: bool,
}

/// How to run a sampling loop: which update follows each forward.
pub enum SampleSpec<'a> {
    Ddim(DdimSpec<'a>),
    /// DPM-Solver(++) (noise at every step for the SDE variants), UniPC or PNDM: one row per
    /// model evaluation.
    Multistep(&'a MultistepTable),
    /// Euler, Euler ancestral, Heun or LMS: one row per model evaluation; the update also writes
    /// the next evaluation's (scaled) model input.
    Sigma(&'a SigmaTable),
    /// The consistency sampler: one row per step; it writes the next step's scaled input.
    Consistency(&'a ConsistencyTable),
}

impl<'a> From<DdimSpec<'a>> for SampleSpec<'a> {
    fn from(d: DdimSpec<'a>) -> Self {
        Self::Ddim(d)
    }
}

impl SampleSpec<'_> {
    /// Model evaluations.
    pub fn len(&self) -> usize {
        match self {
            Self::Ddim(d) => d.steps.len(),
            Self::Multistep(t) => t.steps.len(),
            Self::Sigma(t) => t.steps.len(),
            Self::Consistency(t) => t.steps.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether evaluation `s` and the next one are recorded into one command buffer: Heun's
    /// first-order evaluation and its corrector (neither draws noise, so no noise upload has to
    /// fall between them).
    fn pairs_with_next(&self, s: usize) -> bool {
        match self {
            Self::Sigma(t) => {
                t.steps[s].save_sample
                    && !t.steps[s].draws
                    && t.steps.get(s + 1).is_some_and(|n| !n.draws)
            }
            Self::Ddim(_) | Self::Multistep(_) | Self::Consistency(_) => false,
        }
    }

    /// Why step `s` needs a noise tensor, if it does (naming its noise multiplier).
    fn needs_noise(&self, s: usize) -> Option<String> {
        match self {
            Self::Ddim(d) => {
                let sigma = d.steps[s].sigma;
                (sigma > 0.0).then(|| format!("has sigma {sigma}"))
            }
            Self::Multistep(t) => t
                .draws_noise
                .then(|| format!("draws noise (sigma {})", t.steps[s].noise)),
            Self::Consistency(t) => t
                .draws_noise
                .then(|| format!("draws noise (sigma {})", t.steps[s].noise)),
            Self::Sigma(t) => t.steps[s]
                .draws
                .then(|| format!("draws noise ({})", t.options.sampler.class_name())),
        }
    }

    /// Whether any step adds noise (a noise buffer is kept).
    fn noisy(&self) -> bool {
        (0..self.len()).any(|s| self.needs_noise(s).is_some())
    }
}

/// Values per image (in units of one sample) the loop keeps on the device besides the plan:
/// the sample, one step's noise, the solver history (or the consistency sampler's scaled
/// input), the predicted-x0 scratch and `frames` recorded frames, and the read-back of the
/// sample and the frames. Mirrors [`sample_recording`] and `Update::new`.
fn sampler_values(noisy: bool, history: usize, frames: usize) -> usize {
    let x0_scratch = usize::from(frames > 0);
    1 + usize::from(noisy) + history + x0_scratch + frames + (1 + frames)
}

/// A loop's update dispatches and the device buffers they use besides the sample.
struct Update {
    dispatches: Vec<Dispatch>,
    /// One step's noise, rewritten before each noisy step.
    noise: Option<GpuTensor>,
    /// What each step copies into the forward's input when it is not the sample: the
    /// consistency sampler's scaled input, written by the update.
    model_in: Option<GpuTensor>,
}

/// The tensors an update reads and writes besides its own: the model output, the sample
/// (updated in place), the model's input (the σ-space update writes the next one), where to put
/// the predicted x0, and the divergence flag word.
struct LoopIo<'a> {
    model_out: &'a GpuTensor,
    model_in: &'a GpuTensor,
    sample: &'a GpuTensor,
    x0_out: Option<&'a GpuTensor>,
    first_bad: &'a wgpu::Buffer,
    /// Guidance, read by every update (off: the output is read as it is).
    guide: &'a Guide,
}

impl Update {
    fn new(
        ctx: &GpuContext,
        spec: &SampleSpec<'_>,
        (batch, per_sample): (usize, usize),
        io: LoopIo<'_>,
    ) -> Result<Self> {
        let numel = batch * per_sample;
        let LoopIo {
            model_out,
            model_in,
            sample,
            x0_out,
            first_bad,
            guide,
        } = io;
        Ok(match spec {
            SampleSpec::Ddim(d) => {
                let noisy = d.steps.iter().any(|s| s.sigma > 0.0);
                let noise = noisy.then(|| ctx.tensor("step noise", &[numel], Precision::F32));
                let dispatches = ddim_update(
                    ctx,
                    &DdimUpdateConfig {
                        batch,
                        per_sample,
                        prediction: d.prediction,
                        limit: d.limit,
                        use_clipped_model_output: d.use_clipped_model_output,
                    },
                    d.steps,
                    NoiseLayout::Rewritten,
                    &DdimIo {
                        model_out,
                        noise: noise.as_ref(),
                        sample,
                        x0_out,
                        first_bad: Some(first_bad),
                        guide: Some(guide),
                    },
                )?;
                Self {
                    dispatches,
                    noise,
                    model_in: None,
                }
            }
            SampleSpec::Multistep(table) => {
                let noise = table
                    .draws_noise
                    .then(|| ctx.tensor("step noise", &[numel], Precision::F32));
                let bytes = check_history(ctx, table, batch, per_sample)?;
                // The bind group keeps the history alive as long as the loop's dispatches.
                let history =
                    ctx.tensor("multistep history", &[bytes as usize / 4], Precision::F32);
                let dispatches = multistep_update(
                    ctx,
                    table,
                    batch,
                    per_sample,
                    &MultistepIo {
                        model_out,
                        sample,
                        history: &history,
                        x0_out,
                        noise: noise.as_ref(),
                        first_bad: Some(first_bad),
                        guide: Some(guide),
                    },
                )?;
                Self {
                    dispatches,
                    noise,
                    model_in: None,
                }
            }
            SampleSpec::Consistency(table) => {
                let noise = table
                    .draws_noise
                    .then(|| ctx.tensor("step noise", &[numel], Precision::F32));
                let model_in = ctx.tensor("consistency model input", &[numel], Precision::F32);
                let dispatch = consistency_update(
                    ctx,
                    table,
                    numel,
                    &ConsistencyIo {
                        model_out,
                        sample,
                        model_in: &model_in,
                        noise: noise.as_ref(),
                        x0_out,
                        first_bad: Some(first_bad),
                        guide: Some(guide),
                    },
                )?;
                Self {
                    dispatches: vec![dispatch],
                    noise,
                    model_in: Some(model_in),
                }
            }
            SampleSpec::Sigma(table) => {
                let noisy = table.steps.iter().any(|s| s.draws);
                let noise = noisy.then(|| ctx.tensor("step noise", &[numel], Precision::F32));
                let slots = sigma_step::history_slots(table);
                // The bind group keeps the history alive as long as the loop's dispatches.
                let history =
                    (slots > 0).then(|| ctx.tensor("σ history", &[slots * numel], Precision::F32));
                let dispatch = sigma_update(
                    ctx,
                    table,
                    batch,
                    per_sample,
                    &SigmaIo {
                        model_out,
                        noise: noise.as_ref(),
                        sample,
                        history: history.as_ref(),
                        model_in,
                        x0_out,
                        first_bad: Some(first_bad),
                        guide: Some(guide),
                    },
                )?;
                Self {
                    dispatches: vec![dispatch],
                    noise,
                    model_in: None,
                }
            }
        })
    }
}

/// A GPU run whose sample became NaN or infinite: the same error as the CPU reference's.
/// `timestep` is filled in by callers that know the run's timesteps ([`GpuRunner`]).
pub use crate::sampling::Diverged as NonFinite;

/// The sample after every step, in NCHW: x_T in, x_0 out.
/// [`sample_recording`] also keeps the predicted x0 of chosen steps.
///
/// `noise(s)` is called for every step `s` in order when any step adds noise (DDIM with
/// sigma > 0, DDPM, the SDE solvers, consistency runs of two or more steps), and returns that
/// step's NCHW noise (`x_t.numel()` values) or None where the sampler draws none (the caller
/// knows the draw rule: diffusers' DDIM draws at every step when eta > 0, even where sigma is
/// 0; DDPM only where t > 0; the SDE solvers and consistency runs at every step), so a
/// sequential generator (torch's) stays aligned with the reference. With eta = 0 it is never
/// called, nor for the deterministic solvers. For the consistency sampler `x_t` is the
/// unscaled start (latents × σ_max); its first model input is scaled here. `progress(s,
/// total)` follows each submission.
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
/// NCHW; for the multistep solvers of ε, (x − σ_s·ε)/α_s) after each step listed in `record`
/// (ascending step indices). The update kernel writes
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
    sample_guided(ctx, forward, spec, None, x_t, noise, record, progress)
}

/// [`sample_recording`] with classifier-free guidance: `forward` runs on the doubled batch
/// (2·N images, its labels the null label's half first; the caller builds it so), the sample
/// is copied (or, by the σ-space update, written) into both halves of its input, and every
/// update reads u + w·(c − u) of its output, rescaled when `guidance.rescale` > 0 (one
/// per-image reduction before the update). The sample, the noise and the frames keep N images.
#[allow(clippy::too_many_arguments)]
pub fn sample_guided(
    ctx: &GpuContext,
    forward: &dyn StepForward,
    spec: &SampleSpec<'_>,
    guidance: Option<&Guided>,
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
    ensure!(!spec.is_empty(), "sampling needs at least one step");
    let nhwc = [n, h, w, c];
    // A guided forward holds both halves.
    let halves = if guidance.is_some() { 2 } else { 1 };
    forward.input().flat(
        "the forward plan's input (the sample's size, twice when guided)",
        halves * numel,
    )?;
    forward.output().flat(
        "the forward plan's output (the sample's size, twice when guided)",
        halves * numel,
    )?;
    let x_nhwc = nchw_to_nhwc(&x_t.data, n, c, h, w);
    if let SampleSpec::Sigma(table) = spec {
        // x_T comes scaled by init_noise_sigma (`sampling::run`); the first model input is
        // x / sqrt(σ₀² + 1), and the update writes every later one.
        let scale = table.steps[0].scale;
        let input: Vec<f32> = x_nhwc.iter().map(|&v| v / scale).collect();
        for half in 0..halves {
            ctx.queue.write_buffer(
                forward.input().buffer(),
                (half * numel * 4) as u64,
                bytemuck::cast_slice(&input),
            );
        }
    }
    let sample = ctx.tensor_from("sample", &x_nhwc, &nhwc, Precision::F32)?;
    // The σ-space update writes the next model input itself; the others copy the sample.
    let copies_input = !matches!(spec, SampleSpec::Sigma(_));
    ensure!(
        record.windows(2).all(|p| p[0] < p[1]) && record.iter().all(|&s| s < spec.len()),
        "steps to record must ascend and lie below {}, got {record:?}",
        spec.len()
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
    let first_bad = ctx.upload("first non-finite step", &[u32::MAX]);
    let x0_scratch =
        (!record.is_empty()).then(|| ctx.tensor("predicted x0", &nhwc, Precision::F32));
    let frames: Vec<GpuTensor> = record
        .iter()
        .map(|s| {
            ctx.tensor(
                &format!("predicted x0 after step {s}"),
                &nhwc,
                Precision::F32,
            )
        })
        .collect();
    let mut guide = guide(ctx, guidance, n, c * h * w, forward.output())?;
    // The rescale's per-image reduction runs before the update (and its threshold search).
    let guide_std = guide.dispatch.take();
    let io = LoopIo {
        model_out: forward.output(),
        model_in: forward.input(),
        sample: &sample,
        x0_out: x0_scratch.as_ref(),
        first_bad: &first_bad,
        guide: &guide,
    };
    let update = Update::new(ctx, spec, (n, c * h * w), io)?;
    if let (SampleSpec::Consistency(table), Some(model_in)) = (spec, &update.model_in) {
        // The first step's input, scaled on the host as the CPU reference scales it.
        let x = consistency_input(table, 0, &x_t.data)?;
        ctx.queue.write_buffer(
            model_in.buffer(),
            0,
            bytemuck::cast_slice(&nchw_to_nhwc(&x, n, c, h, w)),
        );
    }
    let input_source = update.model_in.as_ref().unwrap_or(&sample);
    let total = spec.len();
    let mut first = 0;
    while first < total {
        // Heun's first-order evaluation and its corrector go in one command buffer.
        let evals = first..(first + 1 + spec.pairs_with_next(first) as usize).min(total);
        for s in evals.clone() {
            let Some(buf) = &update.noise else { break };
            match noise(s).with_context(|| format!("noise for step {s}"))? {
                Some(z) => {
                    ensure!(
                        z.len() == numel,
                        "noise for step {s} has {} values, the sample {numel}",
                        z.len()
                    );
                    // Applied before this submission, after the previous step's commands (a
                    // pair of evaluations never draws: see `pairs_with_next`).
                    let z = nchw_to_nhwc(&z, n, c, h, w);
                    ctx.queue
                        .write_buffer(buf.buffer(), 0, bytemuck::cast_slice(&z));
                }
                None => {
                    if let Some(why) = spec.needs_noise(s) {
                        anyhow::bail!("step {s} {why} but no noise was given");
                    }
                }
            }
        }
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("sampler step"),
            });
        for s in evals.clone() {
            if copies_input {
                for half in 0..halves as u64 {
                    encoder.copy_buffer_to_buffer(
                        input_source.buffer(),
                        0,
                        forward.input().buffer(),
                        half * bytes,
                        Some(bytes),
                    );
                }
            }
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("sampler step"),
                    timestamp_writes: None,
                });
                let dispatches = forward.dispatches().iter().chain(&guide_std);
                for d in dispatches.chain(&update.dispatches) {
                    d.encode(&mut pass, s as u32);
                }
            }
            if let (Some(k), Some(x0)) = (record.iter().position(|&r| r == s), &x0_scratch) {
                encoder.copy_buffer_to_buffer(x0.buffer(), 0, frames[k].buffer(), 0, Some(bytes));
            }
        }
        let what = match evals.len() {
            1 => format!("submitting step {first}"),
            _ => format!("submitting steps {evals:?}"),
        };
        ctx.validated(&what, || {
            ctx.queue.submit([encoder.finish()]);
        })?;
        for s in evals.clone() {
            progress(s + 1, total);
        }
        first = evals.end;
    }
    // The flag travels in the same read-back as the sample (as f32 bits).
    let reads: Vec<(&wgpu::Buffer, usize)> = std::iter::once((&first_bad, 1))
        .chain(
            std::iter::once(&sample)
                .chain(&frames)
                .map(|t| (t.buffer(), numel)),
        )
        .collect();
    let mut values = ctx.read_many(&reads)?.into_iter();
    let flag = values.next().context("reading the divergence flag back")?;
    let step = flag.first().map_or(u32::MAX, |v| v.to_bits());
    let mut tensors = values.map(|v| Tensor::new(vec![n, c, h, w], nhwc_to_nchw(&v, n, c, h, w)));
    let out = tensors.next().context("reading the sample back")??;
    if step != u32::MAX {
        return Err(NonFinite {
            step: step as usize,
            timestep: None,
            bad: out.data.iter().filter(|v| !v.is_finite()).count(),
            numel,
        }
        .into());
    }
    Ok((out, tensors.collect::<Result<_>>()?))
}

/// A run's update, owned (lent to each chunk as a [`SampleSpec`]): the GPU form of
/// [`SamplerSteps`].
pub enum RunUpdate {
    Ddim {
        rows: Vec<UpdateRow>,
        prediction: PredictionType,
        limit: X0Limit,
        use_clipped_model_output: bool,
    },
    Multistep(MultistepTable),
    Sigma(SigmaTable),
    Consistency(ConsistencyTable),
}

impl RunUpdate {
    /// The update of `steps` on the schedule `cfg`.
    pub fn new(cfg: &SchedulerConfig, steps: &SamplerSteps) -> Self {
        let ddim = |rows| RunUpdate::Ddim {
            rows,
            prediction: cfg.prediction_type,
            limit: steps.x0_limit(cfg),
            use_clipped_model_output: steps.use_clipped_model_output(),
        };
        match steps {
            SamplerSteps::Ddim { steps, .. } | SamplerSteps::Inverse(steps) => {
                ddim(ddim_rows(steps))
            }
            SamplerSteps::Ddpm(s) => ddim(ddpm_rows(s)),
            SamplerSteps::Multistep(t) => RunUpdate::Multistep(t.clone()),
            SamplerSteps::Sigma(t) => RunUpdate::Sigma(t.clone()),
            SamplerSteps::Consistency(t) => RunUpdate::Consistency(t.clone()),
        }
    }

    pub fn spec(&self) -> SampleSpec<'_> {
        match self {
            Self::Ddim {
                rows,
                prediction,
                limit,
                use_clipped_model_output,
            } => SampleSpec::Ddim(DdimSpec {
                steps: rows,
                prediction: *prediction,
                limit: *limit,
                use_clipped_model_output: *use_clipped_model_output,
            }),
            Self::Multistep(t) => SampleSpec::Multistep(t),
            Self::Sigma(t) => SampleSpec::Sigma(t),
            Self::Consistency(t) => SampleSpec::Consistency(t),
        }
    }
}

/// The most images one chunk of a sampling loop may hold on a context, and why.
pub struct Capacity {
    pub max_batch: usize,
    /// The limit that sets `max_batch`, in words.
    pub limit: String,
}

/// What fits: every buffer within one storage binding (the solver history included) and, where
/// the context knows its memory budget, the weights, the plan (measured, `plan_footprint`) and
/// the loop's own buffers within the budget. Errors when not even one image fits.
pub fn batch_capacity(
    ctx: &GpuContext,
    unet: &UNet,
    weights: &GpuWeights,
    update: &RunUpdate,
    timesteps: &[f64],
    options: PlanOptions,
    frames: usize,
) -> Result<Capacity> {
    let binding = ctx.max_binding_bytes();
    let mut cap = Capacity {
        max_batch: max_batch(ctx, unet)?,
        limit: format!(
            "every buffer must fit one storage binding of {}",
            mib(binding)
        ),
    };
    let history = match update {
        RunUpdate::Multistep(t) => history_slots(t),
        RunUpdate::Sigma(t) => sigma_step::history_slots(t),
        RunUpdate::Ddim { .. } | RunUpdate::Consistency(_) => 0,
    };
    if history > 0 {
        let per_image = (history * unet.input.numel() * 4) as u64;
        let n = binding / per_image;
        ensure!(
            n >= 1,
            "one image's solver history needs {} but {} allows {} per binding",
            mib(per_image),
            ctx.info.name,
            mib(binding)
        );
        if n < cap.max_batch as u64 {
            cap = Capacity {
                max_batch: n as usize,
                limit: format!(
                    "the solver history must fit one storage binding of {}",
                    mib(binding)
                ),
            };
        }
    }
    let Some(budget) = &ctx.memory else {
        return Ok(cap);
    };
    let ts: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
    let plan = plan_footprint(ctx, unet, weights, &ts, options)?;
    let noisy = update.spec().noisy();
    // The consistency sampler's scaled input counts like one history slot.
    let kept = history + matches!(update, RunUpdate::Consistency(_)) as usize;
    let run = Footprint {
        fixed: weights.bytes + plan.fixed,
        per_image: plan.per_image
            + (sampler_values(noisy, kept, frames) * unet.input.numel() * 4) as u64,
    };
    let n = run.max_batch(budget.bytes);
    ensure!(
        n >= 1,
        "one image needs {} of device memory on {} (weights {}, plan {} + {} per image, sampler \
         buffers included), but the budget is {} ({})",
        mib(run.at(1)),
        ctx.info.name,
        mib(weights.bytes),
        mib(plan.fixed),
        mib(run.per_image),
        mib(budget.bytes),
        budget.source
    );
    if n < cap.max_batch {
        cap = Capacity {
            max_batch: n,
            limit: format!(
                "the device memory budget is {} ({}): {} for the weights and plan, {} per image",
                mib(budget.bytes),
                budget.source,
                mib(run.fixed),
                mib(run.per_image)
            ),
        };
    }
    Ok(cap)
}

/// The GPU as a device of the sampling loop: one run's update rows and a compiled plan per chunk
/// size, all over the same uploaded weights.
pub struct GpuRunner<'a> {
    ctx: &'a GpuContext,
    unet: &'a UNet,
    weights: &'a GpuWeights,
    options: PlanOptions,
    /// The model timestep of every step, in loop order.
    timesteps: Vec<f64>,
    update: RunUpdate,
    max_batch: usize,
    /// What sets `max_batch`, for messages.
    limit: String,
    /// Compiled plans by batch size: full chunks and the remainder.
    plans: Vec<(usize, UNetPlan)>,
}

impl<'a> GpuRunner<'a> {
    /// The runner for `steps` on `cfg`, keeping the predicted x0 of `frames` steps per chunk;
    /// its [`StepRunner::max_batch`] is [`batch_capacity`].
    pub fn new(
        ctx: &'a GpuContext,
        unet: &'a UNet,
        weights: &'a GpuWeights,
        cfg: &SchedulerConfig,
        steps: &SamplerSteps,
        options: PlanOptions,
        frames: usize,
    ) -> Result<Self> {
        let update = RunUpdate::new(cfg, steps);
        let timesteps: Vec<f64> = (0..steps.len()).map(|i| steps.timestep(i)).collect();
        let capacity = batch_capacity(ctx, unet, weights, &update, &timesteps, options, frames)?;
        Ok(Self {
            ctx,
            unet,
            weights,
            options,
            timesteps,
            update,
            max_batch: capacity.max_batch,
            limit: capacity.limit,
            plans: Vec::new(),
        })
    }

    /// What limits [`StepRunner::max_batch`], in words.
    pub fn limit(&self) -> &str {
        &self.limit
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
                let what = format!("compiling the U-Net for a batch of {batch}");
                let plan = self
                    .ctx
                    .validated(&what, || {
                        UNetPlan::new(self.ctx, self.unet, self.weights, &timesteps, self.options)
                    })?
                    .with_context(|| what.clone())?;
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
        let Chunk {
            x,
            mut noise,
            labels,
            guidance,
        } = chunk;
        // A guided chunk's forward runs on the doubled batch (the null label's half first).
        let halves = if guidance.is_some() { 2 } else { 1 };
        let i = self.plan_index(halves * x.shape[0])?;
        let plan = &self.plans[i].1;
        ensure!(
            !matches!(labels, Some(crate::model::ClassLabels::Mixed(_))),
            "interpolating between class embeddings is not yet supported on the GPU; use --device cpu"
        );
        // Guided: the null label's half, then the chunk's labels.
        let labels = match &guidance {
            Some(g) => Some(g.doubled_labels(labels.as_ref(), x.shape[0])?),
            None => labels,
        };
        plan.set_labels(self.ctx, self.unet, self.weights, labels.as_ref())?;
        let spec = self.update.spec();
        let (x, frames) = sample_guided(
            self.ctx,
            plan,
            &spec,
            guidance.as_ref(),
            &x,
            &mut |s| noise.step(s),
            record,
            &mut |_, _| tick(),
        )
        .map_err(|e| match e.downcast::<NonFinite>() {
            Ok(bad) => NonFinite {
                timestep: self.timesteps.get(bad.step).copied(),
                ..bad
            }
            .into(),
            Err(e) => e,
        })?;
        Ok(ChunkOutput { x, frames })
    }
}
