//! The one sampling loop, for every device and sampler: chunks of images, the noise each chunk
//! consumes, trajectory frames and progress, over a device that runs all steps of one chunk
//! ([`StepRunner`]: the CPU reference, `cpu::sampler`, or a compiled GPU plan, `gpu::sampler`).

use super::guidance::Guided;
use super::noise::{NoisePlan, StepNoise};
use super::steps::SamplerSteps;
use super::trajectory::Trajectory;
use crate::model::ClassLabels;
use crate::Tensor;
use anyhow::{ensure, Context, Result};
use std::sync::Arc;

/// One chunk of a run, as a device receives it.
pub struct Chunk {
    /// The starting samples (x_T, or the images to invert), NCHW.
    pub x: Tensor,
    /// Per step, this chunk's part of that step's noise (NCHW), drawn when the step asks.
    pub noise: StepNoise,
    /// The chunk's class labels, one per image (None for an unconditional model).
    pub labels: Option<ClassLabels>,
    /// Classifier-free guidance: the device runs the model on the doubled batch (the null
    /// label's half first) and steps on the combination, at the chunk's batch.
    pub guidance: Option<Guided>,
}

/// What a device gives back for a chunk.
pub struct ChunkOutput {
    /// The sample after the last step, NCHW.
    pub x: Tensor,
    /// The predicted x0 after each recorded step, NCHW, in the order of `record`.
    pub frames: Vec<Tensor>,
}

/// A device that runs every step of one run's [`SamplerSteps`] on a chunk of images.
pub trait StepRunner {
    /// The most images one model evaluation may hold on this device (a guided chunk holds half
    /// as many images: its evaluations run on the doubled batch).
    fn max_batch(&self) -> usize;

    /// Runs all steps on `chunk`, keeping the predicted x0 after each step listed in `record`
    /// (ascending step indices), and calls `tick()` after every model evaluation.
    fn run_chunk(
        &mut self,
        chunk: Chunk,
        record: &[usize],
        tick: &mut dyn FnMut(),
    ) -> Result<ChunkOutput>;
}

/// Reports progress as (model evaluations done, total), after every evaluation.
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn(usize, usize) + Send + Sync>);

impl Progress {
    pub fn new(f: impl Fn(usize, usize) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn report(&self, done: usize, total: usize) {
        (self.0)(done, total)
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

/// Where a run starts.
pub enum Start<'a> {
    /// x_T and the per-step noise from a noise plan.
    Noise(&'a NoisePlan),
    /// Given samples (NCHW) and no step noise: inversion, or decoding given latents.
    Given(&'a Tensor),
}

/// Called with each chunk's final samples (its image range and NCHW values) as it finishes.
pub type ChunkSink<'a> = &'a mut dyn FnMut(std::ops::Range<usize>, &Tensor) -> Result<()>;

/// One run of the loop.
pub struct Run<'a> {
    pub steps: &'a SamplerSteps,
    pub start: Start<'a>,
    /// Per-image shape (C, H, W).
    pub image: (usize, usize, usize),
    /// Images per chunk (clamped to the device's [`StepRunner::max_batch`]).
    pub batch: usize,
    /// Fills these frames when given.
    pub trajectory: Option<&'a mut Trajectory>,
    pub progress: Option<&'a Progress>,
    /// Class labels, one for all images or one per image; each chunk gets its images' labels.
    pub labels: Option<&'a ClassLabels>,
    /// Classifier-free guidance (checked against the model and the labels by the caller).
    pub guidance: Option<Guided>,
    /// Receives every chunk as it finishes; with a sink the returned tensor is empty (shape
    /// [0, C, H, W]) and memory holds one chunk, not the whole run.
    pub sink: Option<ChunkSink<'a>>,
}

/// Runs `run` on `device` chunk by chunk and returns the final samples of all images, NCHW
/// (or hands each chunk to `run.sink`).
pub fn run(device: &mut dyn StepRunner, run: Run<'_>) -> Result<Tensor> {
    let Run {
        steps,
        start,
        image: (c, h, w),
        batch,
        mut trajectory,
        progress,
        labels,
        guidance,
        mut sink,
    } = run;
    let per_image = c * h * w;
    let num = match start {
        Start::Noise(plan) => {
            ensure!(
                plan.per_image == per_image,
                "the noise plan is for {} values per image, the model takes {per_image}",
                plan.per_image
            );
            ensure!(
                plan.step_draws.len() == steps.len(),
                "the noise plan covers {} steps, the run has {}",
                plan.step_draws.len(),
                steps.len()
            );
            plan.num()
        }
        Start::Given(x) => {
            ensure!(
                x.shape.len() == 4 && x.shape[1..] == [c, h, w] && x.shape[0] > 0,
                "expected samples of shape [N, {c}, {h}, {w}], got {:?}",
                x.shape
            );
            ensure!(
                (0..steps.len()).all(|i| !steps.draws_noise(i)),
                "given samples run without step noise: use eta 0 or inversion"
            );
            x.shape[0]
        }
    };
    ensure!(num > 0, "the number of images must be at least 1");
    ensure!(batch > 0, "the batch size must be at least 1");
    // A guided evaluation holds two images per image of the chunk.
    let per_eval = if guidance.is_some() { 2 } else { 1 };
    let fits = device.max_batch() / per_eval;
    ensure!(
        fits > 0,
        "the device holds {} image(s) per model evaluation; guidance needs 2 per image",
        device.max_batch()
    );
    let batch = batch.min(fits).min(num);
    if let Some(t) = trajectory.as_deref_mut() {
        t.start(steps.len(), num, c, h, w)?;
    }
    let record = trajectory
        .as_deref()
        .map_or(Vec::new(), |t| t.steps.clone());
    let total = num.div_ceil(batch) * steps.len();
    let mut done = 0;
    let mut out = Tensor::zeros(&[if sink.is_some() { 0 } else { num }, c, h, w]);
    for first in (0..num).step_by(batch) {
        let range = first..(first + batch).min(num);
        let labels = labels.map(|l| l.images(range.clone())).transpose()?;
        let chunk = match start {
            Start::Noise(plan) => {
                let mut noise = plan.chunk(range.clone())?;
                // The pipeline's `latents * init_noise_sigma` (f32; 80 for consistency models).
                let scale = steps.init_noise_sigma();
                if scale != 1.0 {
                    let scale = scale as f32;
                    noise.initial.iter_mut().for_each(|v| *v *= scale);
                }
                Chunk {
                    x: Tensor::new(vec![range.len(), c, h, w], noise.initial)?,
                    noise: noise.steps,
                    labels,
                    guidance,
                }
            }
            Start::Given(x) => Chunk {
                x: x.images(range.clone())?,
                noise: StepNoise::none(steps.len()),
                labels,
                guidance,
            },
        };
        let y = device
            .run_chunk(chunk, &record, &mut || {
                done += 1;
                if let Some(p) = progress {
                    p.report(done, total);
                }
            })
            .with_context(|| format!("images {range:?}"))?;
        ensure!(
            y.x.numel() == range.len() * per_image && y.frames.len() == record.len(),
            "images {range:?} came back with {} values and {} frames, expected {} and {}",
            y.x.numel(),
            y.frames.len(),
            range.len() * per_image,
            record.len()
        );
        match sink.as_deref_mut() {
            Some(sink) => sink(range.clone(), &y.x).with_context(|| format!("images {range:?}"))?,
            None => {
                out.data[range.start * per_image..range.end * per_image].copy_from_slice(&y.x.data)
            }
        }
        if let Some(t) = trajectory.as_deref_mut() {
            for (k, frame) in y.frames.iter().enumerate() {
                t.store(k, range.clone(), per_image, &frame.data);
            }
        }
    }
    Ok(out)
}
