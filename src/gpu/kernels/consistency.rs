//! The fused update of the consistency sampler (`shaders/consistency.wgsl`): one dispatch per
//! step, recorded once and encoded for step `s` with a dynamic offset into a table of per-step
//! rows, that denoises, clips, adds this step's noise and writes the next step's scaled model
//! input. Rows come from a `schedule::ConsistencyTable`; the reference twins are
//! `schedule::consistency_step` and `schedule::consistency_input`.

use anyhow::{ensure, Result};

use super::guide::{given_or_off, Guide};
use crate::gpu::kernel::{grid_2d, Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;
use crate::schedule::ConsistencyTable;

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/consistency.wgsl"),
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
    pub clip: u32,
    pub write_x0: u32,
    pub _pad: u32,
}

/// One row of the per-step table as the shader sees it (`Step`), in its own aligned slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepRow {
    pub c_skip: f32,
    pub c_out: f32,
    pub noise: f32,
    /// The next step's input divisor sqrt(σ² + σ_d²); 1 after the last step.
    pub in_div: f32,
    pub step: u32,
    pub _pad: [u32; 3],
}

/// The table's rows as the shader reads them.
pub fn step_rows(table: &ConsistencyTable) -> Vec<StepRow> {
    table
        .steps
        .iter()
        .enumerate()
        .map(|(s, st)| StepRow {
            c_skip: st.c_skip,
            c_out: st.c_out,
            noise: if table.draws_noise { st.noise } else { 0.0 },
            in_div: table.steps.get(s + 1).map_or(1.0, |n| n.in_div),
            step: s as u32,
            _pad: [0; 3],
        })
        .collect()
}

/// Device buffers of the update. `sample` is updated in place.
pub struct ConsistencyIo<'a> {
    /// The model output for the current step (f32, `numel` values).
    pub model_out: &'a GpuTensor,
    /// The unscaled sample x.
    pub sample: &'a GpuTensor,
    /// Receives x'/sqrt(σ_next² + σ_d²), the next step's model input.
    pub model_in: &'a GpuTensor,
    /// This step's noise draw, rewritten before each step, when the run draws.
    pub noise: Option<&'a GpuTensor>,
    /// Where to store the denoised sample each step, if wanted.
    pub x0_out: Option<&'a GpuTensor>,
    /// One u32, lowered to the index of any step whose new sample holds a NaN or infinity.
    pub first_bad: Option<&'a wgpu::Buffer>,
    /// Classifier-free guidance: `model_out` holds the doubled batch and the update reads the
    /// guided output (run `guide.dispatch` first when it has one). None: unguided.
    pub guide: Option<&'a Guide>,
}

fn spec() -> KernelSpec {
    KernelSpec {
        shader: "consistency",
        source: SOURCE,
        entry: "consistency_update",
        bindings: vec![
            Binding::Uniform,          // params
            Binding::UniformDynamic,   // this step's row
            Binding::StorageRead,      // model output
            Binding::StorageRead,      // noise
            Binding::StorageReadWrite, // sample (in place)
            Binding::StorageReadWrite, // next model input
            Binding::StorageReadWrite, // x0 out
            Binding::StorageReadWrite, // first_bad (atomic u32)
            Binding::Uniform,          // guidance (guide.wgsl)
            Binding::StorageRead,      // guidance's per-image std ratio
        ],
    }
}

/// The dispatch of one consistency update, encoded with `Dispatch::encode(pass, s)` for step
/// `s` of `table`, over `numel` sample values.
pub fn consistency_update(
    ctx: &GpuContext,
    table: &ConsistencyTable,
    numel: usize,
    io: &ConsistencyIo<'_>,
) -> Result<Dispatch> {
    ensure!(numel > 0, "consistency update: empty sample");
    ensure!(!table.steps.is_empty(), "consistency update: no steps");
    ensure!(
        io.noise.is_some() == table.draws_noise,
        "consistency update: the run {} but {} noise buffer was given",
        if table.draws_noise {
            "draws noise"
        } else {
            "draws none"
        },
        if io.noise.is_some() { "a" } else { "no" }
    );
    let mut off = None;
    // Unguided, the guide's per-image split is never read: one "image" of numel serves.
    let guide = given_or_off(ctx, io.guide, &mut off, 1, numel, io.model_out)?;
    let model_out = io
        .model_out
        .flat("consistency model output", guide.model_values(numel))?;
    let sample = io.sample.flat("consistency sample", numel)?;
    let model_in = io.model_in.flat("consistency model input", numel)?;
    let noise = match io.noise {
        Some(t) => Some(t.flat("consistency noise", numel)?),
        None => None,
    };
    let x0_out = match io.x0_out {
        Some(t) => Some(t.flat("consistency x0", numel)?),
        None => None,
    };
    let rows = step_rows(table);
    let stride = std::mem::size_of::<StepRow>()
        .next_multiple_of(ctx.limits.min_uniform_buffer_offset_alignment as usize);
    let mut table_bytes = vec![0u8; rows.len() * stride];
    for (s, row) in rows.iter().enumerate() {
        table_bytes[s * stride..s * stride + std::mem::size_of::<StepRow>()]
            .copy_from_slice(bytemuck::bytes_of(row));
    }
    let step_table = ctx.buffer_with(
        "consistency step table",
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        &table_bytes,
    );
    let params = Params {
        numel: numel as u32,
        clip: table.config.clip_denoised as u32,
        write_x0: x0_out.is_some() as u32,
        _pad: 0,
    };
    let uniform = ctx.uniform("consistency params", &params);
    let no_noise = ctx.storage("consistency no noise", 16);
    let no_x0 = ctx.storage("consistency no x0", 16);
    let no_flag = ctx.storage("consistency no first_bad", 16);
    let kernel = ctx.kernel(&spec())?;
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[
            (&uniform).into(),
            BufferSlice {
                buffer: &step_table,
                offset: 0,
                size: Some(std::mem::size_of::<StepRow>() as u64),
            },
            model_out,
            noise.unwrap_or((&no_noise).into()),
            sample,
            model_in,
            x0_out.unwrap_or((&no_x0).into()),
            io.first_bad.unwrap_or(&no_flag).into(),
            guide.params(),
            guide.ratio.binding(),
        ],
    )?;
    // Reads m, x (and z); writes x', the next input (and x0).
    let noisy = table.draws_noise as u64;
    let writes_x0 = io.x0_out.is_some() as u64;
    Ok(Dispatch {
        label: "consistency::consistency_update".into(),
        kernel,
        bind_group,
        workgroups: grid_2d(
            (numel as u32).div_ceil(WORKGROUP),
            ctx.limits.max_compute_workgroups_per_dimension,
        ),
        dynamic_strides: vec![stride as u32],
        flops: (6 + 2 * noisy) * numel as u64,
        bytes: 4 * (4 + noisy + writes_x0) * numel as u64,
    })
}
