//! Dynamic thresholding's search (`shaders/threshold.wgsl`): each sample's s = clamp(quantile
//! of |x0|, 1, max_value), found exactly by a radix select, for the update that follows. One
//! kernel for every update that thresholds: it reads (sqrt_a, sqrt_b) from the first 8 bytes of
//! that update's per-step row, so the rows of those tables must start with them ([`Level`]).

use anyhow::{ensure, Result};

use crate::gpu::kernel::{Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;
use crate::schedule::PredictionType;

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/threshold.wgsl"),
    "\n",
    include_str!("../../../shaders/predict.wgsl"),
    "\n",
    include_str!("../../../shaders/guide.wgsl"),
);

/// Codes of `PredictionType` in every shader's `prediction` field (predict.wgsl).
pub fn prediction_code(p: PredictionType) -> u32 {
    match p {
        PredictionType::Epsilon => 0,
        PredictionType::Sample => 1,
        PredictionType::VPrediction => 2,
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub per_sample: u32,
    pub prediction: u32,
    pub rank_lo: u32,
    pub rank_hi: u32,
    pub rank_weight: f32,
    pub max_value: f32,
    pub _pad: [u32; 2],
}

/// The head of every per-step row this kernel is bound to (each row module asserts at compile
/// time that its row starts with these fields at these offsets).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Level {
    pub sqrt_a: f32,
    pub sqrt_b: f32,
}

/// What the search needs besides the buffers.
#[derive(Clone, Copy, Debug)]
pub struct ThresholdConfig {
    pub batch: usize,
    pub per_sample: usize,
    pub prediction: PredictionType,
    /// `dynamic_thresholding_ratio`, the quantile q.
    pub ratio: f64,
    /// `sample_max_value`.
    pub max_value: f64,
}

/// The buffers of one search. `table` holds the update's per-step rows, one per `stride` bytes.
pub struct ThresholdIo<'a> {
    pub table: &'a wgpu::Buffer,
    pub stride: u32,
    pub model_out: &'a GpuTensor,
    pub sample: &'a GpuTensor,
    /// `batch` f32, written.
    pub thresholds: &'a GpuTensor,
    /// The update's guidance (x0 comes from the guided output).
    pub guide: &'a super::guide::Guide,
}

fn spec() -> KernelSpec {
    KernelSpec {
        shader: "threshold",
        source: SOURCE,
        entry: "dynamic_threshold",
        bindings: vec![
            Binding::Uniform,          // params
            Binding::UniformDynamic,   // (sqrt_a, sqrt_b) of this step's row
            Binding::StorageRead,      // model output
            Binding::StorageRead,      // sample
            Binding::StorageReadWrite, // per-sample thresholds
            Binding::Uniform,          // guidance (guide.wgsl)
            Binding::StorageRead,      // guidance's per-image std ratio
        ],
    }
}

/// The search as a dispatch, encoded with `Dispatch::encode(pass, s)` for step `s` of the table.
pub fn dynamic_threshold(
    ctx: &GpuContext,
    cfg: &ThresholdConfig,
    io: &ThresholdIo<'_>,
) -> Result<Dispatch> {
    let ThresholdConfig {
        batch,
        per_sample,
        ratio,
        max_value,
        ..
    } = *cfg;
    ensure!(
        (0.0..=1.0).contains(&ratio),
        "dynamic_thresholding_ratio must be in [0, 1], got {ratio}"
    );
    ensure!(batch > 0 && per_sample > 0, "thresholding: empty sample");
    ensure!(
        batch <= 65535,
        "thresholding: batch {batch} too large (one workgroup per sample)"
    );
    let numel = batch * per_sample;
    let bytes = (numel * 4) as u64;
    let model_out = io
        .model_out
        .flat("thresholding model output", io.guide.model_values(numel))?;
    let sample = io.sample.flat("thresholding sample", numel)?;
    let thresholds = io.thresholds.flat("thresholds", batch)?;
    // torch.quantile's rank position, computed in f64 as the CPU reference does.
    let pos = ratio * (per_sample - 1) as f64;
    let params = Params {
        per_sample: per_sample as u32,
        prediction: prediction_code(cfg.prediction),
        rank_lo: pos.floor() as u32,
        rank_hi: pos.ceil() as u32,
        rank_weight: (pos - pos.floor()) as f32,
        max_value: max_value as f32,
        _pad: [0; 2],
    };
    let uniform = ctx.uniform("threshold params", &params);
    let kernel = ctx.kernel(&spec())?;
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[
            (&uniform).into(),
            BufferSlice {
                buffer: io.table,
                offset: 0,
                size: Some(std::mem::size_of::<Level>() as u64),
            },
            model_out,
            sample,
            thresholds,
            io.guide.params(),
            io.guide.ratio.binding(),
        ],
    )?;
    Ok(Dispatch {
        label: "threshold::dynamic_threshold".into(),
        kernel,
        bind_group,
        workgroups: [batch as u32, 1, 1],
        dynamic_strides: vec![io.stride],
        // Four radix rounds, each re-predicting x0 (about 4 flops) from both inputs.
        flops: 4 * 4 * (batch * per_sample) as u64,
        bytes: 4 * 2 * bytes,
    })
}
