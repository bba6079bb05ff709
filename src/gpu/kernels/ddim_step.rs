//! The fused sampler update (`shaders/ddim_step.wgsl`): one dispatch per step (two with dynamic
//! thresholding, whose search is `threshold::dynamic_threshold`), recorded once and encoded for step `s` with a dynamic offset into a table of
//! per-step coefficients. DDIM rows come from `schedule::ddim_table`, DDPM rows from
//! `schedule::ddpm_table`; the reference twins are `schedule::ddim_step` and `schedule::ddpm_step`.

use anyhow::{bail, ensure, Result};

use super::guide::{given_or_off, Guide};
use super::threshold::{dynamic_threshold, prediction_code, Level, ThresholdConfig, ThresholdIo};
use crate::gpu::kernel::{grid_2d, Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::precision::Precision;
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;
use crate::schedule::{DdimStep, DdpmStep, PredictionType, X0Limit};

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/ddim_step.wgsl"),
    "\n",
    include_str!("../../../shaders/predict.wgsl"),
    "\n",
    include_str!("../../../shaders/guide.wgsl"),
);
const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub numel: u32,
    pub per_sample: u32,
    pub prediction: u32,
    pub limit: u32,
    pub clip_range: f32,
    pub use_clipped: u32,
    pub write_x0: u32,
    pub _pad: u32,
}

/// One row of the per-step table as the shader sees it (each in its own aligned uniform slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepRow {
    pub sqrt_a: f32,
    pub sqrt_b: f32,
    pub x0_coef: f32,
    pub eps_coef: f32,
    pub sample_coef: f32,
    pub sigma: f32,
    pub noise_offset: u32,
    pub has_noise: u32,
    pub step: u32,
    pub _pad: [u32; 3],
}

// The threshold search reads the first fields of this row.
const _: () = assert!(
    std::mem::offset_of!(StepRow, sqrt_a) == std::mem::offset_of!(Level, sqrt_a)
        && std::mem::offset_of!(StepRow, sqrt_b) == std::mem::offset_of!(Level, sqrt_b)
);

/// One step's coefficients in f64: `x_prev = x0_coef·x0 + eps_coef·ε + sample_coef·x + sigma·z`,
/// with (x0, ε) predicted using `sqrt_alpha_prod_t` and `sqrt_one_minus_alpha_prod_t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateRow {
    pub sqrt_alpha_prod_t: f64,
    pub sqrt_one_minus_alpha_prod_t: f64,
    pub x0_coef: f64,
    pub eps_coef: f64,
    pub sample_coef: f64,
    pub sigma: f64,
}

impl From<&DdimStep> for UpdateRow {
    fn from(s: &DdimStep) -> Self {
        Self {
            sqrt_alpha_prod_t: s.sqrt_alpha_prod_t,
            sqrt_one_minus_alpha_prod_t: s.sqrt_one_minus_alpha_prod_t,
            x0_coef: s.sqrt_alpha_prod_t_prev,
            eps_coef: s.dir_coef,
            sample_coef: 0.0,
            sigma: s.sigma,
        }
    }
}

impl From<&DdpmStep> for UpdateRow {
    fn from(s: &DdpmStep) -> Self {
        Self {
            sqrt_alpha_prod_t: s.sqrt_alpha_prod_t,
            sqrt_one_minus_alpha_prod_t: s.sqrt_one_minus_alpha_prod_t,
            x0_coef: s.x0_coef,
            eps_coef: 0.0,
            sample_coef: s.sample_coef,
            sigma: s.sigma,
        }
    }
}

/// DDIM rows for a table from `schedule::ddim_table`.
pub fn ddim_rows(steps: &[DdimStep]) -> Vec<UpdateRow> {
    steps.iter().map(UpdateRow::from).collect()
}

/// DDPM rows for a table from `schedule::ddpm_table`.
pub fn ddpm_rows(steps: &[DdpmStep]) -> Vec<UpdateRow> {
    steps.iter().map(UpdateRow::from).collect()
}

/// Where each step's noise lies in the noise buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseLayout {
    /// All steps' noise, step `s` at element `s · numel` (uploaded once).
    AllSteps,
    /// One step's worth at offset 0, rewritten (`queue.write_buffer`) before each step.
    Rewritten,
}

/// What the update does, independent of the step.
#[derive(Clone, Copy, Debug)]
pub struct DdimUpdateConfig {
    pub batch: usize,
    /// Elements per sample (C·H·W).
    pub per_sample: usize,
    pub prediction: PredictionType,
    pub limit: X0Limit,
    pub use_clipped_model_output: bool,
}

impl DdimUpdateConfig {
    pub fn numel(&self) -> usize {
        self.batch * self.per_sample
    }

    fn params(&self, write_x0: bool) -> Params {
        let (limit, clip_range) = match self.limit {
            X0Limit::None => (0, 0.0),
            X0Limit::Clip(r) => (1, r),
            X0Limit::Threshold { .. } => (2, 0.0),
        };
        Params {
            numel: self.numel() as u32,
            per_sample: self.per_sample as u32,
            prediction: prediction_code(self.prediction),
            limit,
            clip_range: clip_range as f32,
            use_clipped: self.use_clipped_model_output as u32,
            write_x0: write_x0 as u32,
            _pad: 0,
        }
    }
}

/// The update's tensors (f32, `numel` values each, any shape). `sample` is updated in place.
pub struct DdimIo<'a> {
    /// The model output for the current step.
    pub model_out: &'a GpuTensor,
    /// Host-generated noise (see `NoiseLayout`: `numel` values, or `numel` per step); None when
    /// every step has sigma = 0.
    pub noise: Option<&'a GpuTensor>,
    pub sample: &'a GpuTensor,
    /// Where to store the (limited) predicted x0 each step, if wanted.
    pub x0_out: Option<&'a GpuTensor>,
    /// One u32, lowered (`atomicMin`) to the index of any step whose new sample holds a NaN or
    /// infinity; the caller initialises it to `u32::MAX`. None: not reported.
    pub first_bad: Option<&'a wgpu::Buffer>,
    /// Classifier-free guidance: `model_out` holds the doubled batch and the update reads the
    /// guided output (run `guide.dispatch` first when it has one). None: unguided.
    pub guide: Option<&'a Guide>,
}

fn spec() -> KernelSpec {
    KernelSpec {
        shader: "ddim_step",
        source: SOURCE,
        entry: "ddim_update",
        bindings: vec![
            Binding::Uniform,          // params
            Binding::UniformDynamic,   // this step's row of the table
            Binding::StorageRead,      // model output
            Binding::StorageRead,      // noise
            Binding::StorageRead,      // per-sample thresholds
            Binding::StorageReadWrite, // sample (in place)
            Binding::StorageReadWrite, // x0 out
            Binding::StorageReadWrite, // first_bad (atomic u32)
            Binding::Uniform,          // guidance (guide.wgsl)
            Binding::StorageRead,      // guidance's per-image std ratio
        ],
    }
}

/// The per-step rows as f32, each in a slot of `stride` bytes.
pub fn step_table_bytes(
    steps: &[UpdateRow],
    numel: usize,
    layout: NoiseLayout,
    stride: usize,
) -> Vec<u8> {
    let mut bytes = vec![0u8; steps.len().max(1) * stride];
    for (s, st) in steps.iter().enumerate() {
        let row = StepRow {
            sqrt_a: st.sqrt_alpha_prod_t as f32,
            sqrt_b: st.sqrt_one_minus_alpha_prod_t as f32,
            x0_coef: st.x0_coef as f32,
            eps_coef: st.eps_coef as f32,
            sample_coef: st.sample_coef as f32,
            sigma: st.sigma as f32,
            noise_offset: match layout {
                NoiseLayout::AllSteps => (s * numel) as u32,
                NoiseLayout::Rewritten => 0,
            },
            has_noise: (st.sigma > 0.0) as u32,
            step: s as u32,
            _pad: [0; 3],
        };
        bytes[s * stride..s * stride + std::mem::size_of::<StepRow>()]
            .copy_from_slice(bytemuck::bytes_of(&row));
    }
    bytes
}

/// The dispatches of one DDIM update (threshold search first when thresholding), to be
/// encoded with `Dispatch::encode(pass, s)` for step `s` of `steps`.
pub fn ddim_update(
    ctx: &GpuContext,
    cfg: &DdimUpdateConfig,
    steps: &[UpdateRow],
    layout: NoiseLayout,
    io: &DdimIo<'_>,
) -> Result<Vec<Dispatch>> {
    let numel = cfg.numel();
    ensure!(numel > 0 && cfg.batch > 0, "DDIM update: empty sample");
    ensure!(
        numel < u32::MAX as usize,
        "DDIM update: {numel} elements overflow 32-bit indexing"
    );
    ensure!(!steps.is_empty(), "DDIM update: no steps");
    let bytes = (numel * 4) as u64;
    let mut off = None;
    let guide = given_or_off(
        ctx,
        io.guide,
        &mut off,
        cfg.batch,
        cfg.per_sample,
        io.model_out,
    )?;
    let model_out = io
        .model_out
        .flat("DDIM update model output", guide.model_values(numel))?;
    let sample = io.sample.flat("DDIM update sample", numel)?;
    let x0_out = match io.x0_out {
        Some(t) => Some(t.flat("DDIM update x0", numel)?),
        None => None,
    };
    let noisy = steps.iter().any(|s| s.sigma > 0.0);
    let noise = match (noisy, io.noise) {
        (true, None) => bail!("DDIM update: eta > 0 needs a noise buffer"),
        (true, Some(z)) => {
            let need = match layout {
                NoiseLayout::AllSteps => numel * steps.len(),
                NoiseLayout::Rewritten => numel,
            };
            let noise = z.flat(&format!("DDIM update noise ({layout:?})"), need)?;
            ensure!(
                layout == NoiseLayout::Rewritten || numel * steps.len() < u32::MAX as usize,
                "DDIM update: noise for all steps overflows 32-bit indexing; rewrite it per step"
            );
            Some(noise)
        }
        (false, _) => None,
    };
    let params = cfg.params(x0_out.is_some());
    // Dynamic offsets must be multiples of the alignment, which a row may exceed.
    let stride = std::mem::size_of::<StepRow>()
        .next_multiple_of(ctx.limits.min_uniform_buffer_offset_alignment as usize);
    let table = ctx.buffer_with(
        "ddim step table",
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        &step_table_bytes(steps, numel, layout, stride),
    );
    let uniform = ctx.uniform("ddim params", &params);
    // Two placeholders: one buffer may not be bound both read-only and read-write.
    let no_noise = ctx.storage("ddim no noise", 16);
    let no_x0 = ctx.storage("ddim no x0", 16);
    let no_flag = ctx.storage("ddim no first_bad", 16);
    let thresholds = ctx.tensor("ddim thresholds", &[cfg.batch], Precision::F32);
    let mut out = vec![];
    if let X0Limit::Threshold { ratio, max_value } = cfg.limit {
        out.push(dynamic_threshold(
            ctx,
            &ThresholdConfig {
                batch: cfg.batch,
                per_sample: cfg.per_sample,
                prediction: cfg.prediction,
                ratio,
                max_value,
            },
            &ThresholdIo {
                table: &table,
                stride: stride as u32,
                model_out: io.model_out,
                sample: io.sample,
                thresholds: &thresholds,
                guide,
            },
        )?);
    }
    let kernel = ctx.kernel(&spec())?;
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[
            (&uniform).into(),
            BufferSlice {
                buffer: &table,
                offset: 0,
                size: Some(std::mem::size_of::<StepRow>() as u64),
            },
            model_out,
            noise.unwrap_or((&no_noise).into()),
            thresholds.binding(),
            sample,
            x0_out.unwrap_or((&no_x0).into()),
            io.first_bad.unwrap_or(&no_flag).into(),
            guide.params(),
            guide.ratio.binding(),
        ],
    )?;
    out.push(Dispatch {
        label: "ddim::ddim_update".into(),
        kernel,
        bind_group,
        workgroups: grid_2d(
            (numel as u32).div_ceil(WORKGROUP),
            ctx.limits.max_compute_workgroups_per_dimension,
        ),
        dynamic_strides: vec![stride as u32],
        flops: 8 * numel as u64,
        bytes: 4 * bytes,
    });
    Ok(out)
}
