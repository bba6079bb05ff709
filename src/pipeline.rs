//! The public entry point: a model with its scheduler, sampled on a device.
//!
//! ```no_run
//! use ddim_wgpu::pipeline::{Device, Pipeline, SampleRequest};
//! let pipe = Pipeline::load(std::path::Path::new("weights/mnist"))?;
//! let device = Device::auto();
//! let request = SampleRequest { num: 16, ..SampleRequest::default() };
//! let images = pipe.sample(&device, &request, &mut |_, _| {})?; // NCHW in [-1, 1]
//! ddim_wgpu::image_io::save_grid(std::path::Path::new("grid.png"), &images, None)?;
//! # anyhow::Ok(())
//! ```

use crate::gpu::{AdapterChoice, GpuContext};
use crate::model::{Model, UNet};
use crate::rng::RngKind;
use crate::sampling::{
    run_table_cpu, sample_images_cpu, NoisePlan, SampleSettings, SamplerKind, StepTable, Trajectory,
};
use crate::schedule::SchedulerConfig;
use crate::Tensor;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// Where the U-Net runs.
pub enum Device {
    /// The pure-Rust CPU reference.
    Cpu,
    /// A wgpu adapter.
    Gpu(Box<GpuContext>),
}

impl Device {
    /// Opens the adapter `choice` selects.
    pub fn gpu(choice: &AdapterChoice) -> Result<Self> {
        Ok(Self::Gpu(Box::new(GpuContext::new(choice)?)))
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
    /// x_T for all `num` images (NCHW) instead of drawing it.
    pub init_noise: Option<Tensor>,
}

impl Default for SampleRequest {
    fn default() -> Self {
        Self {
            settings: SampleSettings::default(),
            num: 16,
            batch: None,
            seed: 0,
            rng: RngKind::Torch,
            init_noise: None,
        }
    }
}

/// A model, its network description and its scheduler configuration.
pub struct Pipeline {
    pub model: Model,
    pub unet: UNet,
    pub scheduler: SchedulerConfig,
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
        })
    }

    /// Values per image (C·H·W).
    pub fn per_image(&self) -> usize {
        self.unet.input.c * self.unet.input.h * self.unet.input.w
    }

    /// Samples `request.num` images; returns x0 as NCHW in [-1, 1] (not clamped).
    /// `progress(done, total)` counts model evaluations.
    pub fn sample(
        &self,
        device: &Device,
        request: &SampleRequest,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        self.sample_with(device.gpu_context(), request, None, progress)
    }

    /// [`Pipeline::sample`], also keeping the predicted x0 after the steps `trajectory.steps`
    /// (see [`Trajectory::every`]) in `trajectory.frames`.
    pub fn sample_trajectory(
        &self,
        device: &Device,
        request: &SampleRequest,
        trajectory: &mut Trajectory,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        self.sample_with(device.gpu_context(), request, Some(trajectory), progress)
    }

    /// Images per U-Net evaluation when the caller does not choose one: as many as fit the
    /// device (on a GPU every buffer within one storage binding, `gpu::plan::max_batch`) and
    /// about 512 MiB of activations (16 at most on the CPU reference, which gains nothing from
    /// more), then evened out over the chunks of `num` (1,000 images at a cap of 200 run as
    /// 5 × 200; at a cap of 341 as 3 × 334, the last chunk 332).
    /// `gpu` is None for the CPU reference ([`Device::gpu_context`]).
    pub fn auto_batch(&self, gpu: Option<&GpuContext>, num: usize) -> Result<usize> {
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
            None => cap = cap.min(16),
            Some(ctx) => cap = cap.min(crate::gpu::plan::max_batch(ctx, &self.unet)?),
        }
        let num = num.max(1);
        Ok(num.div_ceil(num.div_ceil(cap)))
    }

    /// [`Pipeline::sample`] on an adapter the caller already opened.
    pub fn sample_on_gpu(
        &self,
        ctx: &GpuContext,
        request: &SampleRequest,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        self.sample_with(Some(ctx), request, None, progress)
    }

    fn sample_with(
        &self,
        gpu: Option<&GpuContext>,
        request: &SampleRequest,
        trajectory: Option<&mut Trajectory>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        ensure!(request.num > 0, "the number of images must be at least 1");
        let table = StepTable::new(&self.scheduler, &request.settings)?;
        let mut plan = NoisePlan::new(
            request.rng,
            request.seed,
            request.num,
            self.per_image(),
            &table,
            request.settings.eta,
        );
        if let Some(x) = &request.init_noise {
            let (c, h, w) = (self.unet.input.c, self.unet.input.h, self.unet.input.w);
            ensure!(
                x.shape == [request.num, c, h, w],
                "the initial noise has shape {:?}, expected [{}, {c}, {h}, {w}]",
                x.shape,
                request.num
            );
            plan.initial_override = Some(x.data.clone());
        }
        let batch = match request.batch {
            Some(b) => b.max(1),
            None => self.auto_batch(gpu, request.num)?,
        };
        match gpu {
            None => sample_images_cpu(
                &self.unet,
                &self.model.weights,
                &self.scheduler,
                &request.settings,
                &plan,
                batch,
                trajectory,
                progress,
            ),
            Some(ctx) => crate::gpu::sample_images(
                ctx,
                &self.unet,
                &self.model.weights,
                &self.scheduler,
                &request.settings,
                &plan,
                batch,
                trajectory,
                progress,
            ),
        }
    }

    /// DDIM inversion (diffusers' DDIMInverseScheduler): clean images x0 (NCHW in [-1, 1]) to
    /// their latents x_T after `steps` steps.
    pub fn invert(
        &self,
        device: &Device,
        x0: &Tensor,
        steps: usize,
        batch: Option<usize>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        self.check_images(x0)?;
        let table = StepTable::inverse(&self.scheduler, steps)?;
        self.run_table(device, &table, x0, batch, progress)
    }

    /// Deterministic DDIM (eta 0) from given latents x_T: the decoder that inversion and
    /// interpolation use.
    pub fn decode(
        &self,
        device: &Device,
        x_t: &Tensor,
        steps: usize,
        batch: Option<usize>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        self.check_images(x_t)?;
        let settings = SampleSettings {
            sampler: SamplerKind::Ddim,
            steps,
            eta: 0.0,
            use_clipped_model_output: false,
        };
        let table = StepTable::new(&self.scheduler, &settings)?;
        self.run_table(device, &table, x_t, batch, progress)
    }

    fn run_table(
        &self,
        device: &Device,
        table: &StepTable,
        x: &Tensor,
        batch: Option<usize>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let batch = match batch {
            Some(b) => b.max(1),
            None => self.auto_batch(device.gpu_context(), x.shape[0])?,
        };
        match device {
            Device::Cpu => run_table_cpu(
                &self.unet,
                &self.model.weights,
                &self.scheduler,
                table,
                x,
                batch,
                progress,
            ),
            Device::Gpu(ctx) => crate::gpu::run_table(
                ctx,
                &self.unet,
                &self.model.weights,
                &self.scheduler,
                table,
                x,
                batch,
                progress,
            ),
        }
    }

    fn check_images(&self, x: &Tensor) -> Result<()> {
        let (c, h, w) = (self.unet.input.c, self.unet.input.h, self.unet.input.w);
        ensure!(
            x.shape.len() == 4 && x.shape[1..] == [c, h, w] && x.shape[0] > 0,
            "expected images of shape [N, {c}, {h}, {w}], got {:?}",
            x.shape
        );
        Ok(())
    }
}
