//! The public entry point: a model with its scheduler, sampled on a device.
//!
//! ```no_run
//! use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
//! let pipe = Pipeline::load(std::path::Path::new("weights/mnist"))?;
//! let device = Device::auto();
//! let request = SampleRequest {
//!     noise: Noise::Seed { seed: 0, num: 16 },
//!     ..SampleRequest::default()
//! };
//! let images = pipe.sample(&device, &request)?; // NCHW in [-1, 1]
//! ddim_wgpu::image_io::save_grid(std::path::Path::new("grid.png"), &images, None)?;
//! # anyhow::Ok(())
//! ```
//!
//! A run that overflows fails with [`Diverged`] on either device; an explicit batch that does not
//! fit the device fails with [`BatchTooLarge`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::cpu::sampler::{CpuRunner, MAX_BATCH as CPU_MAX_BATCH};
use crate::gpu::plan::PlanOptions;
use crate::gpu::sampler::GpuRunner;
use crate::gpu::{AdapterChoice, GpuContext, GpuWeights};
use crate::model::{ClassLabels, Model, UNet};
use crate::rng::RngKind;
use crate::sampling::{
    self, ChunkSink, Guidance, Guided, NoisePlan, Run, SamplerSteps, Start, StepRunner,
};
use crate::schedule::SchedulerConfig;
use crate::Tensor;
use anyhow::{ensure, Context, Result};

pub use crate::sampling::{Diverged, Noise, Progress, SampleSettings, SamplerKind, Trajectory};

/// Where the U-Net runs.
pub enum Device {
    /// The pure-Rust CPU reference.
    Cpu,
    /// A wgpu adapter (shared: several devices may hold the same context).
    Gpu(Arc<GpuContext>),
}

impl Device {
    /// Opens the adapter `choice` selects.
    pub fn gpu(choice: &AdapterChoice) -> Result<Self> {
        Ok(Self::Gpu(Arc::new(GpuContext::new(choice)?)))
    }

    /// The best adapter if there is one, else the CPU reference.
    pub fn auto() -> Self {
        Self::gpu(&AdapterChoice::default()).unwrap_or(Self::Cpu)
    }

    /// The adapter, or None for the CPU reference.
    pub fn gpu_context(&self) -> Option<&GpuContext> {
        match self {
            Self::Cpu => None,
            Self::Gpu(ctx) => Some(ctx),
        }
    }

    /// The device in words: the adapter's name and backend, or "CPU reference".
    pub fn describe(&self) -> String {
        match self {
            Self::Cpu => "CPU reference".to_string(),
            Self::Gpu(ctx) => ctx.describe(),
        }
    }
}

/// Images per chunk when `num` images run in chunks of at most `cap`: as even as possible.
fn even_chunks(num: usize, cap: usize) -> usize {
    let num = num.max(1);
    num.div_ceil(num.div_ceil(cap.max(1)))
}

/// Which predicted x0 a run keeps besides its final samples ([`Pipeline::sample_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrajectoryFrames {
    /// Only the final samples.
    #[default]
    Off,
    /// The predicted x0 after every k-th step and after the last ([`Trajectory::every`]).
    Every(usize),
    /// About ten frames: every ⌈steps / 10⌉-th step and the last.
    Tenth,
}

/// What to sample.
#[derive(Clone, Debug)]
pub struct SampleRequest {
    pub settings: SampleSettings,
    /// Where x_T and the per-step noise come from; it sets the number of images.
    pub noise: Noise,
    /// The generator kind every seed of `noise` seeds.
    pub rng: RngKind,
    /// Images per U-Net evaluation; None chooses one ([`Pipeline::batch_for`]).
    pub batch: Option<usize>,
    /// The predicted x0 to keep (it takes device memory, so it counts in the batch's choice).
    pub trajectory: TrajectoryFrames,
    /// Called after every model evaluation; None reports nothing.
    pub progress: Option<Progress>,
    /// Class labels of a class-conditional model: one for all images or one per image (in the
    /// order of `noise`'s images); None for an unconditional model.
    pub labels: Option<ClassLabels>,
    /// Classifier-free guidance (off by default): the model runs on twice the batch.
    pub guidance: Guidance,
}

impl SampleRequest {
    /// The number of images the request makes.
    pub fn num(&self) -> usize {
        self.noise.num()
    }
}

impl Default for SampleRequest {
    /// 16 images of seed 0 (torch's generator), 50 DDIM steps at eta 0.
    fn default() -> Self {
        Self {
            settings: SampleSettings::default(),
            noise: Noise::Seed { seed: 0, num: 16 },
            rng: RngKind::Torch,
            batch: None,
            trajectory: TrajectoryFrames::Off,
            progress: None,
            labels: None,
            guidance: Guidance::default(),
        }
    }
}

/// What [`Pipeline::sample_with`] gives back.
#[derive(Clone, Debug)]
pub struct Sampled {
    /// x0, NCHW in [-1, 1] (not clamped).
    pub images: Tensor,
    /// The frames `request.trajectory` asked for; None when it was [`TrajectoryFrames::Off`].
    pub trajectory: Option<Trajectory>,
    /// The images per U-Net evaluation the run used.
    pub batch: usize,
}

/// An explicit batch the device cannot hold, refused before anything of its size is allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchTooLarge {
    pub batch: usize,
    /// The most images per batch that fit.
    pub fits: usize,
    /// The adapter's name.
    pub device: String,
    /// The limit that sets `fits`, in words.
    pub limit: String,
}

impl std::fmt::Display for BatchTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a batch of {} does not fit on {}: {}; at most {} image(s) per batch fit",
            self.batch, self.device, self.limit, self.fits
        )
    }
}

impl std::error::Error for BatchTooLarge {}

/// A deterministic run between images and their latents: [`Pipeline::invert`] (x0 → x_T) and
/// [`Pipeline::decode`] (x_T → x0, DDIM with eta 0).
#[derive(Clone, Debug)]
pub struct LatentRequest {
    /// Number of steps.
    pub steps: usize,
    /// Images per U-Net evaluation; None chooses one ([`Pipeline::batch_for`]).
    pub batch: Option<usize>,
    /// Called after every model evaluation; None reports nothing.
    pub progress: Option<Progress>,
    /// Class labels of a class-conditional model: one for all images or one per image.
    pub labels: Option<ClassLabels>,
    /// Classifier-free guidance (off by default; [`Pipeline::invert`] refuses it: a guided
    /// inversion is not the inverse of any decode).
    pub guidance: Guidance,
}

impl Default for LatentRequest {
    fn default() -> Self {
        Self {
            steps: 50,
            batch: None,
            progress: None,
            labels: None,
            guidance: Guidance::default(),
        }
    }
}

/// What a run gives back besides its final samples, and the labels it conditions on.
struct Outputs<'t, 's> {
    trajectory: Option<&'t mut Trajectory>,
    progress: Option<&'t Progress>,
    sink: Option<ChunkSink<'s>>,
    labels: Option<&'t ClassLabels>,
    guidance: Guidance,
}

impl<'t> Outputs<'t, '_> {
    fn latent(request: &'t LatentRequest) -> Self {
        Self {
            trajectory: None,
            progress: request.progress.as_ref(),
            sink: None,
            labels: request.labels.as_ref(),
            guidance: request.guidance,
        }
    }
}

/// A model, its network description and its scheduler configuration.
pub struct Pipeline {
    /// Where the model came from, its config and its f32 weights.
    pub model: Model,
    /// The network as one list of layers, shared by both devices (input and output shapes in
    /// `unet.input` / `unet.output`).
    pub unet: UNet,
    /// The scheduler configuration every run starts from (a caller may change it between runs).
    pub scheduler: SchedulerConfig,
    /// The weights on each device this pipeline has run on, uploaded once.
    /// Keyed by `GpuContext::id`.
    gpu_weights: Mutex<Vec<(u64, Arc<GpuWeights>)>>,
}

impl Pipeline {
    /// Loads a diffusers model directory (pipeline or flat layout); the scheduler config comes
    /// from the directory, or DDIM defaults when it has none.
    pub fn load(dir: &Path) -> Result<Self> {
        let model = Model::load(dir)?;
        let scheduler = match SchedulerConfig::from_model_dir(dir)? {
            Some((cfg, _)) => cfg,
            None => SchedulerConfig::default(),
        };
        Self::new(model, scheduler)
    }

    /// A pipeline of a loaded model and a scheduler configuration (e.g. one read with
    /// [`SchedulerConfig::from_file`], or `SchedulerConfig::default()`: `DDIMScheduler()`'s).
    pub fn new(model: Model, scheduler: SchedulerConfig) -> Result<Self> {
        let unet = UNet::from_config(&model.config)
            .with_context(|| format!("building the network of {}", model.paths.config.display()))?;
        Ok(Self {
            model,
            unet,
            scheduler,
            gpu_weights: Mutex::new(Vec::new()),
        })
    }

    /// Values per image (C·H·W).
    pub fn per_image(&self) -> usize {
        self.unet.input.c * self.unet.input.h * self.unet.input.w
    }

    /// The per-step coefficients `settings` give with this pipeline's scheduler.
    pub fn steps(&self, settings: &SampleSettings) -> Result<SamplerSteps> {
        SamplerSteps::new(&self.scheduler, settings)
    }

    /// Samples `request.num()` images; returns x0 as NCHW in [-1, 1] (not clamped).
    pub fn sample(&self, device: &Device, request: &SampleRequest) -> Result<Tensor> {
        Ok(self.sample_with(device, request)?.images)
    }

    /// [`Pipeline::sample`], also giving back the trajectory `request.trajectory` asks for and
    /// the batch the run used.
    pub fn sample_with(&self, device: &Device, request: &SampleRequest) -> Result<Sampled> {
        let steps = self.steps(&request.settings)?;
        let mut trajectory = self.trajectory(request.trajectory, &steps)?;
        let noise = self.noise_plan(request, &steps)?;
        let (images, batch) = self.run(
            device,
            &steps,
            Start::Noise(&noise),
            request.batch,
            Outputs {
                trajectory: trajectory.as_mut(),
                progress: request.progress.as_ref(),
                sink: None,
                labels: request.labels.as_ref(),
                guidance: request.guidance,
            },
        )?;
        Ok(Sampled {
            images,
            trajectory,
            batch,
        })
    }

    /// [`Pipeline::sample`], handing each chunk's images to `sink` as it finishes instead of
    /// returning them all: memory holds one chunk. Returns the batch the run used. A trajectory
    /// would keep every image's frames, so `request.trajectory` must be off.
    pub fn sample_chunks(
        &self,
        device: &Device,
        request: &SampleRequest,
        sink: ChunkSink<'_>,
    ) -> Result<usize> {
        ensure!(
            request.trajectory == TrajectoryFrames::Off,
            "a run that hands its images on chunk by chunk keeps no trajectory (asked for {:?})",
            request.trajectory
        );
        let steps = self.steps(&request.settings)?;
        let noise = self.noise_plan(request, &steps)?;
        let (_, batch) = self.run(
            device,
            &steps,
            Start::Noise(&noise),
            request.batch,
            Outputs {
                trajectory: None,
                progress: request.progress.as_ref(),
                sink: Some(sink),
                labels: request.labels.as_ref(),
                guidance: request.guidance,
            },
        )?;
        Ok(batch)
    }

    /// The frames `keep` asks for in a run of `steps`, before they are filled.
    fn trajectory(
        &self,
        keep: TrajectoryFrames,
        steps: &SamplerSteps,
    ) -> Result<Option<Trajectory>> {
        let len = steps.len();
        Ok(match keep {
            TrajectoryFrames::Off => None,
            TrajectoryFrames::Every(k) => Some(Trajectory::every(len, k)?),
            TrajectoryFrames::Tenth => Some(Trajectory::every(len, len.div_ceil(10))?),
        })
    }

    /// The request's noise, checked against this model's images.
    fn noise_plan(&self, request: &SampleRequest, steps: &SamplerSteps) -> Result<NoisePlan> {
        ensure!(request.num() > 0, "the number of images must be at least 1");
        if let Noise::Given { x_t, .. } = &request.noise {
            let (c, h, w) = (self.unet.input.c, self.unet.input.h, self.unet.input.w);
            ensure!(
                x_t.shape.len() == 4 && x_t.shape[1..] == [c, h, w],
                "the initial noise has shape {:?}, expected [N, {c}, {h}, {w}]",
                x_t.shape
            );
            let bad = x_t.data.iter().filter(|v| !v.is_finite()).count();
            ensure!(
                bad == 0,
                "the initial noise has {bad} non-finite value(s) (NaN or ±Inf) among {}",
                x_t.numel()
            );
        }
        Ok(NoisePlan::new(
            request.rng,
            request.noise.clone(),
            self.per_image(),
            steps,
        ))
    }

    /// DDIM inversion (diffusers' DDIMInverseScheduler): clean images x0 (NCHW in [-1, 1]) to
    /// their latents x_T after `request.steps` steps.
    pub fn invert(&self, device: &Device, x0: &Tensor, request: &LatentRequest) -> Result<Tensor> {
        ensure!(
            !request.guidance.is_on(),
            "inversion runs at guidance scale 1: a guided inversion is not the inverse of any \
             decode (guidance may apply to the reconstruction)"
        );
        let steps = SamplerSteps::inverse(&self.scheduler, request.steps)?;
        let (x_t, _) = self.run(
            device,
            &steps,
            Start::Given(x0),
            request.batch,
            Outputs::latent(request),
        )?;
        Ok(x_t)
    }

    /// Deterministic DDIM (eta 0) from given latents x_T: the decoder that inversion and
    /// interpolation use.
    pub fn decode(&self, device: &Device, x_t: &Tensor, request: &LatentRequest) -> Result<Tensor> {
        let steps = SamplerSteps::ddim_eta0(&self.scheduler, request.steps)?;
        let (x0, _) = self.run(
            device,
            &steps,
            Start::Given(x_t),
            request.batch,
            Outputs::latent(request),
        )?;
        Ok(x0)
    }

    /// The batch [`Pipeline::sample_with`] uses for `request` on `device`, decided as the run
    /// decides it (its trajectory frames included), without sampling.
    pub fn batch_for(&self, device: &Device, request: &SampleRequest) -> Result<usize> {
        let num = request.num();
        let per_eval = self.images_per_image(&request.guidance);
        match device {
            Device::Cpu => self.decide_batch(None, num, request.batch, per_eval),
            Device::Gpu(ctx) => {
                let steps = self.steps(&request.settings)?;
                let frames = self
                    .trajectory(request.trajectory, &steps)?
                    .map_or(0, |t| t.steps.len());
                let weights = self.gpu_weights(ctx)?;
                let gpu = self.gpu_runner(ctx, &weights, &steps, frames)?;
                self.decide_batch(Some((ctx, &gpu)), num, request.batch, per_eval)
            }
        }
    }

    /// The one place a run's batch is decided, for `num` images on the CPU reference (`gpu`
    /// None) or on a GPU runner (which knows what fits, its recorded frames included):
    /// - an explicit `batch` is clamped to `num`, and refused with [`BatchTooLarge`] where it does
    ///   not fit the GPU (before anything of its size is allocated);
    /// - otherwise as many images as fit the device (on a GPU every buffer within one storage
    ///   binding, and the memory budget) and about 512 MiB of activations (16 at most on the CPU
    ///   reference, which gains nothing from more), evened out over the chunks of `num` (1,000
    ///   images at a cap of 200 run as 5 × 200; at a cap of 341 as 3 × 334, the last chunk 332).
    ///
    /// `per_eval` is the model's images per image of the chunk: 2 under guidance (the doubled
    /// batch), else 1; every limit counts the model's images.
    fn decide_batch(
        &self,
        gpu: Option<(&GpuContext, &GpuRunner<'_>)>,
        num: usize,
        batch: Option<usize>,
        per_eval: usize,
    ) -> Result<usize> {
        let device_fits = gpu.map_or(usize::MAX, |(_, r)| r.max_batch());
        let fits = device_fits / per_eval;
        ensure!(
            fits > 0,
            "one guided image needs 2 images per model evaluation; the device holds {device_fits}"
        );
        match batch {
            Some(b) => {
                let b = b.clamp(1, num.max(1));
                if let Some((ctx, runner)) = gpu {
                    if b > fits {
                        return Err(BatchTooLarge {
                            batch: b,
                            fits,
                            device: ctx.info.name.clone(),
                            limit: runner.limit().to_string(),
                        }
                        .into());
                    }
                }
                Ok(b)
            }
            None => {
                let cap = self.auto_batch_cap(gpu.map(|(ctx, _)| ctx))? / per_eval;
                Ok(even_chunks(num, cap.max(1).min(fits)))
            }
        }
    }

    /// The most images per chunk a chosen batch may hold: the activation budget and the device's
    /// static limits (the runner adds the memory budget).
    fn auto_batch_cap(&self, gpu: Option<&GpuContext>) -> Result<usize> {
        const ACTIVATION_BUDGET: u64 = 512 << 20;
        // Every layer's output at once: an upper bound on what the liveness pool keeps.
        let per_image: u64 = self
            .unet
            .layers
            .iter()
            .map(|l| l.output.numel() as u64 * 4)
            .sum::<u64>()
            .max(1);
        let mut cap = (ACTIVATION_BUDGET / per_image).max(1) as usize;
        match gpu {
            None => cap = cap.min(CPU_MAX_BATCH),
            Some(ctx) => cap = cap.min(crate::gpu::plan::max_batch(ctx, &self.unet)?),
        }
        Ok(cap)
    }

    /// The model's images per image of a run: 2 under guidance (the doubled batch), else 1.
    fn images_per_image(&self, guidance: &Guidance) -> usize {
        if guidance.is_on() {
            2
        } else {
            1
        }
    }

    /// The guidance a run with `guidance` and `labels` applies to this model (None when off),
    /// refused with one line where it cannot apply: an unconditional model, no null label.
    pub fn guided(
        &self,
        guidance: &Guidance,
        labels: Option<&ClassLabels>,
    ) -> Result<Option<Guided>> {
        guidance.resolve(&self.unet.time, self.model.config.null_class_label, labels)
    }

    /// The GPU side of a run of `steps` keeping `frames` frames per chunk.
    fn gpu_runner<'a>(
        &'a self,
        ctx: &'a GpuContext,
        weights: &'a GpuWeights,
        steps: &SamplerSteps,
        frames: usize,
    ) -> Result<GpuRunner<'a>> {
        GpuRunner::new(
            ctx,
            &self.unet,
            weights,
            &self.scheduler,
            steps,
            PlanOptions::default(),
            frames,
        )
    }

    /// This pipeline's weights on `ctx`, uploaded on first use in the context's precision and
    /// shared by every plan. (For tests and benchmarks of the GPU backend; sampling uploads them
    /// when it needs them.)
    #[doc(hidden)]
    pub fn gpu_weights(&self, ctx: &GpuContext) -> Result<Arc<GpuWeights>> {
        let mut cache = self.gpu_weights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, w)) = cache.iter().find(|(id, _)| *id == ctx.id) {
            return Ok(w.clone());
        }
        let what = format!("uploading the weights to {}", ctx.info.name);
        // Refused before the first buffer if they cannot fit.
        ctx.ensure_fits(
            &format!("the model's {} parameters", self.model.weights.params()),
            self.model.weights.params() * ctx.precision.bytes() as u64,
        )?;
        let w = Arc::new(
            ctx.validated(&what, || {
                GpuWeights::upload_as(ctx, &self.unet, &self.model.weights, ctx.precision)
            })?
            .with_context(|| what.clone())?,
        );
        cache.push((ctx.id, w.clone()));
        Ok(w)
    }

    /// The one sampling loop on `device`; returns the final samples and the batch it used.
    fn run(
        &self,
        device: &Device,
        steps: &SamplerSteps,
        start: Start<'_>,
        batch: Option<usize>,
        outputs: Outputs<'_, '_>,
    ) -> Result<(Tensor, usize)> {
        let Outputs {
            trajectory,
            progress,
            sink,
            labels,
            guidance,
        } = outputs;
        let (c, h, w) = (self.unet.input.c, self.unet.input.h, self.unet.input.w);
        ensure!(
            (self.unet.output.c, self.unet.output.h, self.unet.output.w) == (c, h, w),
            "the model outputs {} but samples are {c}x{h}x{w}: cannot sample with it",
            self.unet.output
        );
        let num = match start {
            Start::Noise(plan) => plan.num(),
            Start::Given(x) => x.shape.first().copied().unwrap_or(0),
        };
        // Labels are checked before any device work: present exactly for a class-conditional
        // model, in range, one for all images or one per image.
        ClassLabels::check(labels, &self.unet.time)?;
        if let Some(l) = labels {
            ensure!(
                l.len() == 1 || l.len() == num,
                "{} class labels for {num} images: give one label for all images or one per image",
                l.len()
            );
        }
        let guided = self.guided(&guidance, labels)?;
        let per_eval = self.images_per_image(&guidance);
        let frames = trajectory.as_deref().map_or(0, |t| t.steps.len());
        let run = |batch| Run {
            steps,
            start,
            image: (c, h, w),
            batch,
            trajectory,
            progress,
            labels,
            guidance: guided,
            // `Some(s)` re-coerces the sink to the run's shorter lifetime.
            sink: match sink {
                Some(s) => Some(s),
                None => None,
            },
        };
        match device {
            Device::Cpu => {
                let batch = self.decide_batch(None, num, batch, per_eval)?;
                let mut cpu = CpuRunner {
                    unet: &self.unet,
                    weights: &self.model.weights,
                    cfg: &self.scheduler,
                    steps,
                };
                Ok((sampling::run(&mut cpu, run(batch))?, batch))
            }
            Device::Gpu(ctx) => {
                let weights = self.gpu_weights(ctx)?;
                let mut gpu = self.gpu_runner(ctx, &weights, steps, frames)?;
                let batch = self.decide_batch(Some((ctx, &gpu)), num, batch, per_eval)?;
                let x = sampling::run(&mut gpu as &mut dyn StepRunner, run(batch))?;
                Ok((x, batch))
            }
        }
    }
}
