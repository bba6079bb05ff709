//! The fused update of the multistep solvers (`shaders/multistep.wgsl`): DPM-Solver(++) and its
//! SDE variants, UniPC and PNDM. One dispatch per step (two with dynamic thresholding, whose
//! search is `threshold::dynamic_threshold`), recorded once and encoded for step `s` with a
//! dynamic offset into a table of per-step rows. Rows come from a `schedule::MultistepTable`;
//! the reference twin is `schedule::multistep_step_noisy`.
//!
//! The kept outputs of earlier steps stay on the device in one history buffer (slots plus the
//! corrector's `last` sample), so a run reads nothing back until the end and binds seven storage
//! buffers (with the step noise and the divergence flag) whatever the solver. Slots are assigned
//! by liveness ([`slot_plan`]): an output gets a slot only when a later step reads it, and
//! keeps it until its last reader, so DPM-Solver and UniPC use a ring's worth and PNDM (whose
//! PLMS reads the first output of each Runge–Kutta block up to 12 evaluations later) five.

use anyhow::{bail, ensure, Result};

use super::guide::{given_or_off, Guide};
use super::threshold::{dynamic_threshold, prediction_code, Level, ThresholdConfig, ThresholdIo};
use crate::gpu::kernel::{grid_2d, Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::precision::Precision;
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;
use crate::schedule::{Combination, MultistepTable, X0Limit};

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/multistep.wgsl"),
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
    pub thresholding: u32,
    pub predicts_x0: u32,
    pub rederive_eps: u32,
    pub write_x0: u32,
    pub last_offset: u32,
    pub raw_output: u32,
}

/// One row of the per-step table as the shader sees it (`Step`), in its own aligned slot.
/// Coefficients are by history slot, not by age: `pred_slots[k]` multiplies slot k.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepRow {
    pub sqrt_a: f32,
    pub sqrt_b: f32,
    pub pred_sample: f32,
    pub pred_y0: f32,
    pub corr_sample: f32,
    pub corr_y0: f32,
    pub corrects: u32,
    pub save_last: u32,
    pub pred_slots: [f32; MAX_SLOTS],
    pub corr_slots: [f32; MAX_SLOTS],
    /// The slot this step's output goes to, when `writes`.
    pub write_slot: u32,
    pub step: u32,
    /// Coefficient of this step's noise draw (the SDE variants).
    pub noise: f32,
    /// Whether a later step reads this step's output.
    pub writes: u32,
}

/// History slots a row can address: two vec4 of coefficients in the shader.
pub const MAX_SLOTS: usize = 8;

// The threshold search reads the first fields of this row.
const _: () = assert!(
    std::mem::offset_of!(StepRow, sqrt_a) == std::mem::offset_of!(Level, sqrt_a)
        && std::mem::offset_of!(StepRow, sqrt_b) == std::mem::offset_of!(Level, sqrt_b)
);
/// Where each step's output lives on the device.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotPlan {
    /// Per step: the slot its output is written to, or None when no later step reads it.
    pub write: Vec<Option<usize>>,
    /// Slots in use (at least 1).
    pub slots: usize,
}

/// The combinations a step applies (the corrector only where it corrects).
fn combinations(table: &MultistepTable, s: usize) -> impl Iterator<Item = &Combination> {
    let st = &table.steps[s];
    std::iter::once(&st.predictor).chain((st.corrector_order > 0).then_some(&st.corrector))
}

/// Assigns slots by liveness: step s's output takes the lowest slot whose output has no reader
/// after s (reads come before the write in each invocation, so a slot whose last reader is s
/// itself is free). Fails when a step reads an output from before the run or more than
/// [`MAX_SLOTS`] outputs are live at once.
pub fn slot_plan(table: &MultistepTable) -> Result<SlotPlan> {
    let n = table.steps.len();
    let mut last_use: Vec<Option<usize>> = vec![None; n];
    for s in 0..n {
        for c in combinations(table, s) {
            for (age, &w) in c.outputs.iter().enumerate().skip(1) {
                if w == 0.0 {
                    continue;
                }
                ensure!(
                    age <= s,
                    "multistep step {s} uses the output of {age} steps before, but only {s} \
                     steps ran before it"
                );
                last_use[s - age] = Some(s);
            }
        }
    }
    let mut owner: Vec<usize> = Vec::new();
    let mut write = vec![None; n];
    for s in 0..n {
        if last_use[s].is_none() {
            continue;
        }
        let free = owner
            .iter()
            .position(|&e| last_use[e].is_some_and(|last| last <= s));
        let k = free.unwrap_or_else(|| {
            owner.push(s);
            owner.len() - 1
        });
        owner[k] = s;
        write[s] = Some(k);
    }
    ensure!(
        owner.len() <= MAX_SLOTS,
        "{} keeps {} outputs at once; the multistep kernel holds {MAX_SLOTS}",
        table.options.family.class_name(),
        owner.len()
    );
    Ok(SlotPlan {
        write,
        slots: owner.len().max(1),
    })
}

/// Slots of `numel` values the history buffer holds: the outputs, then `last` when any step
/// corrects.
pub fn history_slots(table: &MultistepTable) -> usize {
    let outputs = slot_plan(table).map_or(table.history, |p| p.slots);
    outputs + uses_last(table) as usize
}

fn uses_last(table: &MultistepTable) -> bool {
    table.steps.iter().any(|s| s.corrector_order > 0)
}

/// Bytes of the history buffer for `numel` sample values.
pub fn history_bytes(table: &MultistepTable, numel: usize) -> u64 {
    (history_slots(table) * numel * 4) as u64
}

/// A combination's coefficients at step `s`: (age-0 coefficient, per-slot coefficients).
fn by_slot(c: &Combination, s: usize, plan: &SlotPlan) -> Result<(f32, [f32; MAX_SLOTS])> {
    let mut slots = [0f32; MAX_SLOTS];
    for (age, &w) in c.outputs.iter().enumerate().skip(1) {
        if w == 0.0 {
            continue;
        }
        let Some(k) = s.checked_sub(age).and_then(|e| plan.write[e]) else {
            bail!("multistep step {s} reads the output of {age} steps before, which is not kept");
        };
        slots[k] = w as f32;
    }
    Ok((c.outputs[0] as f32, slots))
}

/// The table's rows as the shader reads them: coefficients rounded from f64 to f32, ages mapped
/// to the slots of [`slot_plan`].
pub fn step_rows(table: &MultistepTable) -> Result<Vec<StepRow>> {
    let plan = slot_plan(table)?;
    table
        .steps
        .iter()
        .enumerate()
        .map(|(s, st)| {
            let (pred_y0, pred_slots) = by_slot(&st.predictor, s, &plan)?;
            let corrects = st.corrector_order > 0;
            let (corr_y0, corr_slots) = if corrects {
                ensure!(s > 0, "multistep step 0 cannot correct: no earlier sample");
                by_slot(&st.corrector, s, &plan)?
            } else {
                (0.0, [0.0; MAX_SLOTS])
            };
            Ok(StepRow {
                sqrt_a: st.alpha_s as f32,
                sqrt_b: st.sigma_s as f32,
                pred_sample: st.predictor.sample as f32,
                pred_y0,
                corr_sample: if corrects {
                    st.corrector.sample as f32
                } else {
                    0.0
                },
                corr_y0,
                corrects: corrects as u32,
                save_last: table
                    .steps
                    .get(s + 1)
                    .is_some_and(|n| n.corrector_order > 0) as u32,
                pred_slots,
                corr_slots,
                write_slot: plan.write[s].unwrap_or(0) as u32,
                step: s as u32,
                noise: st.noise as f32,
                writes: plan.write[s].is_some() as u32,
            })
        })
        .collect()
}

/// Device buffers of the update. `sample` is updated in place.
pub struct MultistepIo<'a> {
    /// The model output for the current step (f32, `numel` values, any shape).
    pub model_out: &'a GpuTensor,
    pub sample: &'a GpuTensor,
    /// f32, at least [`history_bytes`]; its contents before step 0 are never read.
    pub history: &'a GpuTensor,
    /// Where to store the data prediction each step (x0, thresholded where the solver
    /// thresholds; for ε solvers derived from ε), if wanted.
    pub x0_out: Option<&'a GpuTensor>,
    /// This step's noise draw (f32, `numel` values), rewritten before each step, when the
    /// solver draws (`table.draws_noise`).
    pub noise: Option<&'a GpuTensor>,
    /// One u32, lowered (`atomicMin`) to the index of any step whose new sample holds a NaN or
    /// infinity; the caller initialises it to `u32::MAX`. None: not reported.
    pub first_bad: Option<&'a wgpu::Buffer>,
    /// Classifier-free guidance: `model_out` holds the doubled batch and the update reads the
    /// guided output (run `guide.dispatch` first when it has one). None: unguided.
    pub guide: Option<&'a Guide>,
}

fn spec() -> KernelSpec {
    KernelSpec {
        shader: "multistep",
        source: SOURCE,
        entry: "multistep_update",
        bindings: vec![
            Binding::Uniform,          // params
            Binding::UniformDynamic,   // this step's row of the table
            Binding::StorageRead,      // model output
            Binding::StorageRead,      // per-sample thresholds
            Binding::StorageReadWrite, // sample (in place)
            Binding::StorageReadWrite, // history: ring slots, then last
            Binding::StorageReadWrite, // x0 out
            Binding::StorageReadWrite, // first_bad (atomic u32)
            Binding::StorageRead,      // step noise
            Binding::Uniform,          // guidance (guide.wgsl)
            Binding::StorageRead,      // guidance's per-image std ratio
        ],
    }
}

/// (flops, bytes) per element of the costliest step, for benchmarks.
fn cost_per_element(table: &MultistepTable, rows: &[StepRow], write_x0: bool) -> (u64, u64) {
    let terms = |v: &[f32; MAX_SLOTS]| v.iter().filter(|&&c| c != 0.0).count() as u64;
    let thresholds = table.thresholds() as u64;
    rows.iter()
        .map(|r| {
            let corr = r.corrects as u64;
            let noisy = (r.noise != 0.0) as u64;
            let reads = 2 + noisy + terms(&r.pred_slots) + corr * (1 + terms(&r.corr_slots));
            let writes = 2 + r.save_last as u64 + write_x0 as u64;
            let flops = 4
                + 2 * noisy
                + thresholds * 6
                + 2 * (2 + terms(&r.pred_slots))
                + corr * 2 * (2 + terms(&r.corr_slots))
                + write_x0 as u64 * 3;
            (flops, 4 * (reads + writes))
        })
        .fold((0, 0), |(f, b), (f2, b2)| (f.max(f2), b.max(b2)))
}

/// The history's size in bytes for `batch` × `per_sample` values, or an error naming the batch
/// when one binding cannot hold it.
pub fn check_history(
    ctx: &GpuContext,
    table: &MultistepTable,
    batch: usize,
    per_sample: usize,
) -> Result<u64> {
    let history = history_bytes(table, batch * per_sample);
    let limit = ctx.max_binding_bytes();
    ensure!(
        history <= limit,
        "the {} history for a batch of {batch} ({} × {per_sample} values per image) needs {} \
         MiB, more than the {} MiB one binding may hold on {}: use a smaller batch",
        table.options.family.class_name(),
        history_slots(table),
        history >> 20,
        limit >> 20,
        ctx.info.name
    );
    ensure!(
        history / 4 < u32::MAX as u64,
        "multistep update: a history of {} values overflows 32-bit indexing",
        history / 4
    );
    Ok(history)
}

/// The dispatches of one multistep update (threshold search first when the solver
/// thresholds), to be encoded with `Dispatch::encode(pass, s)` for step `s` of `table`, for a
/// sample of `batch` × `per_sample` values.
pub fn multistep_update(
    ctx: &GpuContext,
    table: &MultistepTable,
    batch: usize,
    per_sample: usize,
    io: &MultistepIo<'_>,
) -> Result<Vec<Dispatch>> {
    let numel = batch * per_sample;
    ensure!(numel > 0, "multistep update: empty sample");
    ensure!(!table.steps.is_empty(), "multistep update: no steps");
    let history = check_history(ctx, table, batch, per_sample)?;
    let mut off = None;
    let guide = given_or_off(ctx, io.guide, &mut off, batch, per_sample, io.model_out)?;
    let model_out = io
        .model_out
        .flat("multistep model output", guide.model_values(numel))?;
    let sample = io.sample.flat("multistep sample", numel)?;
    let x0_out = match io.x0_out {
        Some(t) => Some(t.flat("multistep x0", numel)?),
        None => None,
    };
    ensure!(
        io.noise.is_some() == table.draws_noise,
        "multistep update: the solver {} but {} noise buffer was given",
        if table.draws_noise {
            "draws noise"
        } else {
            "draws none"
        },
        if io.noise.is_some() { "a" } else { "no" }
    );
    let noise = match io.noise {
        Some(t) => Some(t.flat("multistep noise", numel)?),
        None => None,
    };
    ensure!(
        io.history.precision() == Precision::F32
            && io.history.offset() == 0
            && io.history.is_contiguous()
            && (io.history.numel() * 4) as u64 >= history,
        "multistep update: the history is a {:?} {} tensor, needs {history} bytes of f32",
        io.history.shape(),
        io.history.precision()
    );
    let rows = step_rows(table)?;
    let stride = std::mem::size_of::<StepRow>()
        .next_multiple_of(ctx.limits.min_uniform_buffer_offset_alignment as usize);
    let mut table_bytes = vec![0u8; rows.len() * stride];
    for (s, row) in rows.iter().enumerate() {
        table_bytes[s * stride..s * stride + std::mem::size_of::<StepRow>()]
            .copy_from_slice(bytemuck::bytes_of(row));
    }
    let step_table = ctx.buffer_with(
        "multistep step table",
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        &table_bytes,
    );
    let thresholding = table.thresholds();
    let params = Params {
        numel: numel as u32,
        per_sample: per_sample as u32,
        prediction: prediction_code(table.prediction),
        thresholding: thresholding as u32,
        predicts_x0: table.predicts_x0 as u32,
        rederive_eps: (thresholding && !table.predicts_x0) as u32,
        write_x0: x0_out.is_some() as u32,
        last_offset: (slot_plan(table)?.slots * numel) as u32,
        raw_output: table.raw_outputs as u32,
    };
    let uniform = ctx.uniform("multistep params", &params);
    let no_x0 = ctx.storage("multistep no x0", 16);
    let no_flag = ctx.storage("multistep no first_bad", 16);
    let no_noise = ctx.storage("multistep no noise", 16);
    let thresholds = ctx.tensor("multistep thresholds", &[batch], Precision::F32);
    let mut out = vec![];
    if let (true, X0Limit::Threshold { ratio, max_value }) = (thresholding, table.limit) {
        out.push(dynamic_threshold(
            ctx,
            &ThresholdConfig {
                batch,
                per_sample,
                prediction: table.prediction,
                ratio,
                max_value,
            },
            &ThresholdIo {
                table: &step_table,
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
                buffer: &step_table,
                offset: 0,
                size: Some(std::mem::size_of::<StepRow>() as u64),
            },
            model_out,
            thresholds.binding(),
            sample,
            BufferSlice {
                buffer: io.history.buffer(),
                offset: 0,
                size: Some(history),
            },
            x0_out.unwrap_or((&no_x0).into()),
            io.first_bad.unwrap_or(&no_flag).into(),
            noise.unwrap_or((&no_noise).into()),
            guide.params(),
            guide.ratio.binding(),
        ],
    )?;
    let (flops, traffic) = cost_per_element(table, &rows, io.x0_out.is_some());
    out.push(Dispatch {
        label: "multistep::multistep_update".into(),
        kernel,
        bind_group,
        workgroups: grid_2d(
            (numel as u32).div_ceil(WORKGROUP),
            ctx.limits.max_compute_workgroups_per_dimension,
        ),
        dynamic_strides: vec![stride as u32],
        flops: flops * numel as u64,
        bytes: traffic * numel as u64,
    });
    Ok(out)
}
