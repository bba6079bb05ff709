//! Sampling many images on the GPU: builds the U-Net plan for a batch and runs the sampler loop
//! on each chunk of images, with the noise plan shared with the CPU reference.

use super::GpuContext;
use crate::model::{UNet, Weights};
use crate::sampling::{NoisePlan, SampleSettings, StepTable};
use crate::schedule::SchedulerConfig;
use crate::Tensor;
use anyhow::Result;

/// Samples all `plan.num` images in chunks of `batch`; x0 as NCHW in [-1, 1].
#[allow(clippy::too_many_arguments)]
pub fn sample_images(
    ctx: &GpuContext,
    unet: &UNet,
    weights: &Weights,
    cfg: &SchedulerConfig,
    settings: &SampleSettings,
    plan: &NoisePlan,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    super::sampler::sample_images(ctx, unet, weights, cfg, settings, plan, batch, progress)
}

/// Runs a noise-free table (DDIM eta 0 or inversion) from the given samples, in chunks of `batch`.
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
    super::sampler::run_table(ctx, unet, weights, cfg, table, x, batch, progress)
}
