//! The public entry point: a model with its scheduler, sampled on a device.
//!
//! ```no_run
//! use ddim_wgpu::pipeline::{Device, Pipeline, SampleRequest};
//! let pipe = Pipeline::load(std::path::Path::new("weights/mnist"))?;
//! let device = Device::auto();
//! let request = SampleRequest { num: 16, ..SampleRequest::default() };
//! let images = pipe.sample(&device, &request)?; // NCHW in [-1, 1]
//! ddim_wgpu::image_io::save_grid(std::path::Path::new("grid.png"), &images, None)?;
//! # anyhow::Ok(())
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::cpu::sampler::{CpuRunner, MAX_BATCH as CPU_MAX_BATCH};
use crate::gpu::plan::PlanOptions;
use crate::gpu::sampler::GpuRunner;
use crate::gpu::{AdapterChoice, GpuContext, GpuWeights};
use crate::model::{Model, UNet};
use crate::rng::RngKind;
use crate::sampling::{
    self, run::ChunkSink, NoisePlan, Progress, Run, SampleSettings, SamplerSteps, Start,
    StepRunner, Trajectory,
};
use crate::schedule::SchedulerConfig;
use crate::Tensor;
use anyhow::{ensure, Context, Result};

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

/// What to sample.
#[derive(Clone, Debug)]
pub struct SampleRequest {
    pub settings: SampleSettings,
    /// Number of images.
    pub num: usize,
    /// Images per U-Net evaluation; None chooses one ([`Pipeline::auto_batch`]).
    pub batch: Option<usize>,
    pub seed: u64,
    pub rng: RngKind,
    /// One generator per image, seeded with these (`num` of them; `seed` is then unused): the
    /// image of seed s does not depend on the others ([`NoisePlan::per_seed`]).
    pub seeds: Option<Vec<u64>>,
    /// x_T for all `num` images (NCHW) instead of drawing it.
    pub init_noise: Option<Tensor>,
    /// Called after every model evaluation; None reports nothing.
    pub progress: Option<Progress>,
}

impl Default for SampleRequest {
    fn default() -> Self {
        Self {
            settings: SampleSettings::default(),
            num: 16,
            batch: None,
            seed: 0,
            rng: RngKind::Torch,
            seeds: None,
            init_noise: None,
            progress: None,
        }
    }
}

/// A deterministic run between images and their latents: [`Pipeline::invert`] (x0 → x_T) and
/// [`Pipeline::decode`] (x_T → x0, DDIM with eta 0).
#[derive(Clone, Debug)]
pub struct LatentRequest {
    pub steps: usize,
    /// Images per U-Net evaluation; None chooses one ([`Pipeline::auto_batch`]).
    pub batch: Option<usize>,
    /// Called after every model evaluation; None reports nothing.
    pub progress: Option<Progress>,
}

impl Default for LatentRequest {
    fn default() -> Self {
        Self {
            steps: 50,
            batch: None,
            progress: None,
        }
    }
}

/// What a run gives back besides its final samples.
struct Outputs<'t, 's> {
    trajectory: Option<&'t mut Trajectory>,
    progress: Option<&'t Progress>,
    sink: Option<ChunkSink<'s>>,
}

impl<'t> Outputs<'t, '_> {
    fn progress(progress: Option<&'t Progress>) -> Self {
        Self {
            trajectory: None,
            progress,
            sink: None,
        }
    }
}

/// A model, its network description and its scheduler configuration.
pub struct Pipeline {
    pub model: Model,
    pub unet: UNet,
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

    /// Samples `request.num` images; returns x0 as NCHW in [-1, 1] (not clamped).
    pub fn sample(&self, device: &Device, request: &SampleRequest) -> Result<Tensor> {
        Ok(self.sample_inner(device, request, None, None)?.0)
    }

    /// [`Pipeline::sample`], handing each chunk's images to `sink` as it finishes instead of
    /// returning them all: memory holds one chunk.
    pub fn sample_chunks(
        &self,
        device: &Device,
        request: &SampleRequest,
        sink: ChunkSink<'_>,
    ) -> Result<()> {
        self.sample_inner(device, request, None, Some(sink))?;
        Ok(())
    }

    /// [`Pipeline::sample`], also keeping the predicted x0 after every `every`-th step and after
    /// the last ([`Trajectory::every`]; None: a tenth of the steps, rounded up).
    pub fn sample_trajectory(
        &self,
        device: &Device,
        request: &SampleRequest,
        every: Option<usize>,
    ) -> Result<(Tensor, Trajectory)> {
        let (images, trajectory) = self.sample_inner(device, request, Some(every), None)?;
        Ok((images, trajectory.context("no trajectory was kept")?))
    }

    fn sample_inner(
        &self,
        device: &Device,
        request: &SampleRequest,
        trajectory_every: Option<Option<usize>>,
        sink: Option<ChunkSink<'_>>,
    ) -> Result<(Tensor, Option<Trajectory>)> {
        ensure!(request.num > 0, "the number of images must be at least 1");
        let steps = self.steps(&request.settings)?;
        let mut trajectory = match trajectory_every {
            Some(every) => Some(Trajectory::every(
                steps.len(),
                every.unwrap_or(steps.len().div_ceil(10)),
            )?),
            None => None,
        };
        let mut noise = match &request.seeds {
            None => NoisePlan::new(
                request.rng,
                request.seed,
                request.num,
                self.per_image(),
                &steps,
            ),
            Some(seeds) => {
                ensure!(
                    seeds.len() == request.num && request.init_noise.is_none(),
                    "one generator per seed needs exactly `num` ({}) seeds, got {}, and no initial \
                     noise",
                    request.num,
                    seeds.len()
                );
                NoisePlan::per_seed(request.rng, seeds.clone(), self.per_image(), &steps)
            }
        };
        if let Some(x) = &request.init_noise {
            let (c, h, w) = (self.unet.input.c, self.unet.input.h, self.unet.input.w);
            ensure!(
                x.shape == [request.num, c, h, w],
                "the initial noise has shape {:?}, expected [{}, {c}, {h}, {w}]",
                x.shape,
                request.num
            );
            let bad = x.data.iter().filter(|v| !v.is_finite()).count();
            ensure!(
                bad == 0,
                "the initial noise has {bad} non-finite value(s) (NaN or ±Inf) among {}",
                x.numel()
            );
            noise.initial_override = Some(x.data.clone());
        }
        let images = self.run(
            device,
            &steps,
            Start::Noise(&noise),
            request.batch,
            Outputs {
                trajectory: trajectory.as_mut(),
                progress: request.progress.as_ref(),
                sink,
            },
        )?;
        Ok((images, trajectory))
    }

    /// DDIM inversion (diffusers' DDIMInverseScheduler): clean images x0 (NCHW in [-1, 1]) to
    /// their latents x_T after `request.steps` steps.
    pub fn invert(&self, device: &Device, x0: &Tensor, request: &LatentRequest) -> Result<Tensor> {
        let steps = SamplerSteps::inverse(&self.scheduler, request.steps)?;
        let progress = request.progress.as_ref();
        self.run(
            device,
            &steps,
            Start::Given(x0),
            request.batch,
            Outputs::progress(progress),
        )
    }

    /// Deterministic DDIM (eta 0) from given latents x_T: the decoder that inversion and
    /// interpolation use.
    pub fn decode(&self, device: &Device, x_t: &Tensor, request: &LatentRequest) -> Result<Tensor> {
        let steps = SamplerSteps::ddim_eta0(&self.scheduler, request.steps)?;
        let progress = request.progress.as_ref();
        self.run(
            device,
            &steps,
            Start::Given(x_t),
            request.batch,
            Outputs::progress(progress),
        )
    }

    /// Images per U-Net evaluation when the caller does not choose one: as many as fit the
    /// device (on a GPU every buffer within one storage binding, `gpu::plan::max_batch`) and
    /// about 512 MiB of activations (16 at most on the CPU reference, which gains nothing from
    /// more), then evened out over the chunks of `num` (1,000 images at a cap of 200 run as
    /// 5 × 200; at a cap of 341 as 3 × 334, the last chunk 332).
    /// `gpu` is None for the CPU reference ([`Device::gpu_context`]).
    pub fn auto_batch(&self, gpu: Option<&GpuContext>, num: usize) -> Result<usize> {
        Ok(even_chunks(num, self.auto_batch_cap(gpu)?))
    }

    /// The batch a GPU run uses: `batch` if it fits `gpu` (refused with the limit it hits
    /// otherwise, before anything of its size is allocated), else [`Pipeline::auto_batch`]
    /// within what fits.
    fn gpu_batch(
        &self,
        ctx: &GpuContext,
        gpu: &GpuRunner<'_>,
        num: usize,
        batch: Option<usize>,
    ) -> Result<usize> {
        let fits = gpu.max_batch();
        match batch {
            Some(b) => {
                let b = b.clamp(1, num.max(1));
                ensure!(
                    b <= fits,
                    "a batch of {b} does not fit on {}: {}; at most {fits} image(s) per batch fit \
                     (or leave --batch out to have it chosen)",
                    ctx.info.name,
                    gpu.limit()
                );
                Ok(b)
            }
            None => Ok(even_chunks(num, self.auto_batch_cap(Some(ctx))?.min(fits))),
        }
    }

    /// The batch [`Pipeline::sample`] would use for `request` on `device` (the same checks).
    pub fn batch_for(&self, device: &Device, request: &SampleRequest) -> Result<usize> {
        match device {
            Device::Cpu => match request.batch {
                Some(b) => Ok(b.max(1)),
                None => self.auto_batch(None, request.num),
            },
            Device::Gpu(ctx) => {
                let steps = self.steps(&request.settings)?;
                let weights = self.gpu_weights(ctx)?;
                let gpu = GpuRunner::new(
                    ctx,
                    &self.unet,
                    &weights,
                    &self.scheduler,
                    &steps,
                    PlanOptions::default(),
                    0,
                )?;
                self.gpu_batch(ctx, &gpu, request.num, request.batch)
            }
        }
    }

    /// The most images per chunk [`Pipeline::auto_batch`] allows.
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

    /// This pipeline's weights on `ctx`, uploaded on first use in the context's precision and
    /// shared by every plan.
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

    /// The one sampling loop on `device`.
    fn run(
        &self,
        device: &Device,
        steps: &SamplerSteps,
        start: Start<'_>,
        batch: Option<usize>,
        outputs: Outputs<'_, '_>,
    ) -> Result<Tensor> {
        let Outputs {
            trajectory,
            progress,
            sink,
        } = outputs;
        let (c, h, w) = (self.unet.input.c, self.unet.input.h, self.unet.input.w);
        ensure!(
            (self.unet.output.c, self.unet.output.h, self.unet.output.w) == (c, h, w),
            "the model outputs {} but samples are {c}x{h}x{w}: cannot sample with it",
            self.unet.output
        );
        let num = match start {
            Start::Noise(plan) => plan.num,
            Start::Given(x) => x.shape.first().copied().unwrap_or(0),
        };
        let frames = trajectory.as_deref().map_or(0, |t| t.steps.len());
        let run = |batch| Run {
            steps,
            start,
            image: (c, h, w),
            batch,
            trajectory,
            progress,
            // `Some(s)` re-coerces the sink to the run's shorter lifetime.
            sink: match sink {
                Some(s) => Some(s),
                None => None,
            },
        };
        match device {
            Device::Cpu => {
                let batch = match batch {
                    Some(b) => b.max(1),
                    None => self.auto_batch(None, num)?,
                };
                let mut cpu = CpuRunner {
                    unet: &self.unet,
                    weights: &self.model.weights,
                    cfg: &self.scheduler,
                    steps,
                };
                sampling::run(&mut cpu, run(batch))
            }
            Device::Gpu(ctx) => {
                let weights = self.gpu_weights(ctx)?;
                let mut gpu = GpuRunner::new(
                    ctx,
                    &self.unet,
                    &weights,
                    &self.scheduler,
                    steps,
                    PlanOptions::default(),
                    frames,
                )?;
                let batch = self.gpu_batch(ctx, &gpu, num, batch)?;
                sampling::run(&mut gpu as &mut dyn StepRunner, run(batch))
            }
        }
    }
}
