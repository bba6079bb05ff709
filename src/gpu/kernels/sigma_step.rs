//! The fused update of the σ-space samplers (`shaders/sigma_step.wgsl`): one dispatch per model
//! evaluation, recorded once and encoded for evaluation `s` with a dynamic offset into a table of
//! per-evaluation rows, which also writes the next evaluation's model input (`x / sqrt(σ² + 1)`).
//! Rows come from a `schedule::SigmaTable`; the reference twin is `schedule::sigma_step`.
//!
//! Earlier derivatives (LMS, Heun) and Heun's saved sample stay on the device in one history
//! buffer (ring slots, then the saved sample), so a run reads nothing back until the end.

use anyhow::{ensure, Result};

use super::guide::{given_or_off, Guide};
use crate::gpu::kernel::{grid_2d, Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::precision::Precision;
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;
use crate::schedule::{SigmaTable, SIGMA_HISTORY};

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/sigma_step.wgsl"),
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
    pub clip_range: f32,
    pub write_x0: u32,
    pub saved_offset: u32,
    pub ring: u32,
    pub _pad: [u32; 2],
}

/// One row of the per-evaluation table as the shader sees it (`Step`), in its own aligned slot.
/// Coefficients on earlier derivatives are by ring slot, not by age.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepRow {
    pub churn: f32,
    pub x0_sample: f32,
    pub x0_model: f32,
    pub deriv_sigma: f32,
    pub d0: f32,
    pub noise: f32,
    pub next_scale: f32,
    pub has_noise: u32,
    pub slots: [f32; 4],
    pub from_saved: u32,
    pub save_sample: u32,
    pub write_slot: u32,
    pub step: u32,
}

// The shader reads a vec4 of slot coefficients: at most four ring slots.
const _: () = assert!(SIGMA_HISTORY <= 4);

/// Ring slots of derivatives the update keeps: the oldest age a row reads plus one (0 when no
/// row reads an earlier derivative).
pub fn ring_slots(table: &SigmaTable) -> usize {
    if table.history == 0 {
        0
    } else {
        table.history + 1
    }
}

fn uses_saved(table: &SigmaTable) -> bool {
    table.steps.iter().any(|s| s.save_sample)
}

/// Slots of `numel` values the history buffer holds: the ring, then Heun's saved sample.
pub fn history_slots(table: &SigmaTable) -> usize {
    ring_slots(table) + uses_saved(table) as usize
}

/// The table's rows as the shader reads them: coefficients rounded from f64 to f32, ages mapped
/// to ring slots (evaluation `s` writes slot `s mod ring`).
pub fn step_rows(table: &SigmaTable) -> Result<Vec<StepRow>> {
    let ring = ring_slots(table);
    table
        .steps
        .iter()
        .enumerate()
        .map(|(s, st)| {
            let mut slots = [0f32; 4];
            for (age, &c) in st.derivs.iter().enumerate().skip(1) {
                if c == 0.0 {
                    continue;
                }
                ensure!(
                    age < ring && age <= s,
                    "σ step {s} uses the derivative of {age} evaluations before, but only {} are \
                     kept and {s} ran before it",
                    ring.saturating_sub(1)
                );
                slots[(s - age) % ring] = c as f32;
            }
            let next_scale = table.steps.get(s + 1).map_or(1.0, |n| n.scale);
            Ok(StepRow {
                churn: st.churn as f32,
                x0_sample: st.x0_sample as f32,
                x0_model: st.x0_model as f32,
                deriv_sigma: st.deriv_sigma as f32,
                d0: st.derivs[0] as f32,
                noise: st.noise as f32,
                next_scale,
                has_noise: st.draws as u32,
                slots,
                from_saved: st.from_saved as u32,
                save_sample: st.save_sample as u32,
                write_slot: if ring == 0 { 0 } else { (s % ring) as u32 },
                step: s as u32,
            })
        })
        .collect()
}

/// Device buffers of the update. `sample` is updated in place.
pub struct SigmaIo<'a> {
    /// The model output of the current evaluation (f32, `numel` values, any shape).
    pub model_out: &'a GpuTensor,
    /// This evaluation's noise (`numel` values), rewritten before each evaluation that draws;
    /// None when no evaluation draws.
    pub noise: Option<&'a GpuTensor>,
    pub sample: &'a GpuTensor,
    /// f32, at least [`history_slots`] × numel values; contents before step 0 are never read.
    /// None when the table keeps nothing.
    pub history: Option<&'a GpuTensor>,
    /// Where the next evaluation's model input goes (the forward's input).
    pub model_in: &'a GpuTensor,
    /// Where to store x0 each evaluation, if wanted.
    pub x0_out: Option<&'a GpuTensor>,
    /// One u32, lowered to the index of any evaluation whose new sample holds a NaN or infinity.
    pub first_bad: Option<&'a wgpu::Buffer>,
    /// Classifier-free guidance: `model_out` and `model_in` hold the doubled batch, the update
    /// reads the guided output and writes the next input into both halves (run `guide.dispatch`
    /// first when it has one). None: unguided.
    pub guide: Option<&'a Guide>,
}

fn spec() -> KernelSpec {
    KernelSpec {
        shader: "sigma_step",
        source: SOURCE,
        entry: "sigma_update",
        bindings: vec![
            Binding::Uniform,          // params
            Binding::UniformDynamic,   // this evaluation's row
            Binding::StorageRead,      // model output
            Binding::StorageRead,      // noise
            Binding::StorageReadWrite, // sample (in place)
            Binding::StorageReadWrite, // history: ring slots, then the saved sample
            Binding::StorageReadWrite, // the next model input
            Binding::StorageReadWrite, // x0 out
            Binding::StorageReadWrite, // first_bad (atomic u32)
            Binding::Uniform,          // guidance (guide.wgsl)
            Binding::StorageRead,      // guidance's per-image std ratio
        ],
    }
}

/// The history's size in bytes for `numel` sample values, or an error naming the batch when one
/// binding cannot hold it.
pub fn check_history(
    ctx: &GpuContext,
    table: &SigmaTable,
    batch: usize,
    numel: usize,
) -> Result<u64> {
    let bytes = (history_slots(table) * numel * 4) as u64;
    let limit = ctx.max_binding_bytes();
    ensure!(
        bytes <= limit,
        "the {} history for a batch of {batch} ({} slots of {} values) needs {} MiB, more than \
         the {} MiB one binding may hold on {}: use a smaller batch",
        table.options.sampler.class_name(),
        history_slots(table),
        numel / batch.max(1),
        bytes >> 20,
        limit >> 20,
        ctx.info.name
    );
    ensure!(
        bytes / 4 < u32::MAX as u64,
        "σ update: a history of {} values overflows 32-bit indexing",
        bytes / 4
    );
    Ok(bytes)
}

/// The dispatch of the σ-space update, to be encoded with `Dispatch::encode(pass, s)` for
/// evaluation `s` of `table`, for a sample of `batch` × `per_sample` values.
pub fn sigma_update(
    ctx: &GpuContext,
    table: &SigmaTable,
    batch: usize,
    per_sample: usize,
    io: &SigmaIo<'_>,
) -> Result<Dispatch> {
    let numel = batch * per_sample;
    ensure!(numel > 0, "σ update: empty sample");
    ensure!(!table.steps.is_empty(), "σ update: no steps");
    let history_bytes = check_history(ctx, table, batch, numel)?;
    let mut off = None;
    let guide = given_or_off(ctx, io.guide, &mut off, batch, per_sample, io.model_out)?;
    let model_out = io
        .model_out
        .flat("σ update model output", guide.model_values(numel))?;
    let sample = io.sample.flat("σ update sample", numel)?;
    let model_in = io
        .model_in
        .flat("σ update model input", guide.model_values(numel))?;
    let x0_out = match io.x0_out {
        Some(t) => Some(t.flat("σ update x0", numel)?),
        None => None,
    };
    let draws = table.steps.iter().any(|s| s.draws);
    let noise = match io.noise {
        Some(t) => Some(t.flat("σ update noise", numel)?),
        None => {
            ensure!(
                !draws,
                "σ update: the run draws noise but no noise buffer was given"
            );
            None
        }
    };
    let history = match io.history {
        Some(h) => {
            ensure!(
                h.precision() == Precision::F32
                    && h.offset() == 0
                    && h.is_contiguous()
                    && (h.numel() * 4) as u64 >= history_bytes,
                "σ update: the history is a {:?} {} tensor, needs {history_bytes} bytes of f32",
                h.shape(),
                h.precision()
            );
            Some(BufferSlice {
                buffer: h.buffer(),
                offset: 0,
                size: Some(history_bytes),
            })
        }
        None => {
            ensure!(
                history_bytes == 0,
                "σ update: the run keeps a history but no history buffer was given"
            );
            None
        }
    };
    let rows = step_rows(table)?;
    let stride = std::mem::size_of::<StepRow>()
        .next_multiple_of(ctx.limits.min_uniform_buffer_offset_alignment as usize);
    let mut table_bytes = vec![0u8; rows.len() * stride];
    for (s, row) in rows.iter().enumerate() {
        table_bytes[s * stride..s * stride + std::mem::size_of::<StepRow>()]
            .copy_from_slice(bytemuck::bytes_of(row));
    }
    let step_table = ctx.buffer_with(
        "σ step table",
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        &table_bytes,
    );
    let ring = ring_slots(table);
    let params = Params {
        numel: numel as u32,
        clip: table.options.clip.is_some() as u32,
        clip_range: table.options.clip.unwrap_or(1.0) as f32,
        write_x0: x0_out.is_some() as u32,
        saved_offset: (ring * numel) as u32,
        ring: ring as u32,
        _pad: [0; 2],
    };
    let uniform = ctx.uniform("σ update params", &params);
    let placeholder = |label| ctx.storage(label, 16);
    let (no_noise, no_history, no_x0, no_flag) = (
        placeholder("σ update no noise"),
        placeholder("σ update no history"),
        placeholder("σ update no x0"),
        placeholder("σ update no first_bad"),
    );
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
            history.unwrap_or((&no_history).into()),
            model_in,
            x0_out.unwrap_or((&no_x0).into()),
            io.first_bad.unwrap_or(&no_flag).into(),
            guide.params(),
            guide.ratio.binding(),
        ],
    )?;
    // Per element: reads x, m, z, ring terms, the saved sample; writes x, model input, d, x0.
    let terms = rows
        .iter()
        .map(|r| r.slots.iter().filter(|&&c| c != 0.0).count() as u64)
        .max()
        .unwrap_or(0);
    let reads = 3 + terms + uses_saved(table) as u64;
    let writes = 2 + (ring > 0) as u64 + uses_saved(table) as u64 + x0_out.is_some() as u64;
    Ok(Dispatch {
        label: "sigma_step::sigma_update".into(),
        kernel,
        bind_group,
        workgroups: grid_2d(
            (numel as u32).div_ceil(WORKGROUP),
            ctx.limits.max_compute_workgroups_per_dimension,
        ),
        dynamic_strides: vec![stride as u32],
        flops: (10 + 2 * terms) * numel as u64,
        bytes: 4 * (reads + writes) * numel as u64,
    })
}
