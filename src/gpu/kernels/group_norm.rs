//! Group normalisation of NHWC activations with an optional fused SiLU (`shaders/group_norm.wgsl`).
//!
//! Three dispatches: per-(chunk, channel) partial statistics, Chan's combination per group, and
//! the elementwise apply. The apply pass also takes a resnet's neighbours of the norm ([`Apply`]):
//! the scale-shift time conditioning after norm2, and the ×2 resampling of h after norm1 + SiLU
//! in up/down resnets. The reference twin is `cpu::ops::group_norm` (+ `cpu::ops::silu`, the
//! scale-shift of `cpu::forward`, `cpu::resample`).

use anyhow::{ensure, Result};
use bytemuck::Zeroable;

use super::resample::Resample;
use crate::gpu::kernel::{grid_2d, Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::precision::{specialize, Precision};
use crate::gpu::tensor::{GpuTensor, StepTable};
use crate::gpu::variants::Reduction;
use crate::gpu::GpuContext;

/// The shader with the resampling taps its apply pass uses appended.
pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/group_norm.wgsl"),
    "\n",
    include_str!("../../../shaders/resample_taps.wgsl"),
);
/// With the subgroup combine appended too (compiled only on devices with `SUBGROUP`).
pub const SOURCE_SUBGROUP: &str = concat!(
    include_str!("../../../shaders/group_norm.wgsl"),
    "\n",
    include_str!("../../../shaders/resample_taps.wgsl"),
    "\n",
    include_str!("../../../shaders/group_norm_subgroup.wgsl"),
);
const WORKGROUP: u32 = 256;
/// Pixels per statistics chunk: small enough to give many invocations at low resolution,
/// large enough that the serial combine stays short.
const CHUNK_PIXELS: u32 = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub hw: u32,
    pub channels: u32,
    pub groups: u32,
    pub chunk_pixels: u32,
    pub num_chunks: u32,
    pub eps: f32,
    pub silu: u32,
    pub width: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub resample: u32,
    pub scale_shift: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// What to normalise: an NHWC tensor `[batch, hw, channels]` split into `groups` channel groups.
#[derive(Clone, Copy, Debug)]
pub struct GroupNormShape {
    pub batch: usize,
    /// Pixels per image (H·W).
    pub hw: usize,
    pub channels: usize,
    pub groups: usize,
    pub eps: f32,
    /// Apply SiLU after the affine transform (the resnet's norm → silu).
    pub silu: bool,
    /// Storage type of x and y (statistics and gamma/beta are f32).
    pub precision: Precision,
}

impl GroupNormShape {
    pub fn numel(&self) -> usize {
        self.batch * self.hw * self.channels
    }

    pub(crate) fn num_chunks(&self) -> usize {
        self.hw.div_ceil(CHUNK_PIXELS as usize)
    }

    pub(crate) fn params(&self) -> Params {
        Params {
            batch: self.batch as u32,
            hw: self.hw as u32,
            channels: self.channels as u32,
            groups: self.groups as u32,
            chunk_pixels: CHUNK_PIXELS,
            num_chunks: self.num_chunks() as u32,
            eps: self.eps,
            silu: self.silu as u32,
            ..Zeroable::zeroed()
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.batch > 0 && self.hw > 0 && self.channels > 0,
            "group norm: empty tensor {self:?}"
        );
        ensure!(
            self.groups > 0 && self.channels % self.groups == 0,
            "group norm: {} channels do not split into {} groups",
            self.channels,
            self.groups
        );
        ensure!(
            self.numel() < u32::MAX as usize,
            "group norm: {} elements overflow 32-bit indexing",
            self.numel()
        );
        Ok(())
    }
}

/// Intermediate storage for the statistics; one scratch can serve every group norm of a plan
/// (the dispatches of one norm finish before the next norm's begin) if sized for the largest.
pub struct GroupNormScratch {
    pub partials: wgpu::Buffer,
    /// (mean, rstd·gamma, beta) per (batch, channel).
    pub stats: wgpu::Buffer,
    partial_capacity: usize,
    stats_capacity: usize,
}

impl GroupNormScratch {
    /// Scratch large enough for every shape in `shapes`.
    pub fn new(ctx: &GpuContext, shapes: &[GroupNormShape]) -> Self {
        let partial_capacity = shapes
            .iter()
            .map(|s| s.batch * s.num_chunks() * s.channels)
            .max()
            .unwrap_or(1);
        let stats_capacity = shapes
            .iter()
            .map(|s| s.batch * s.channels)
            .max()
            .unwrap_or(1);
        Self {
            partials: ctx.storage("group norm partials", (partial_capacity * 16) as u64),
            stats: ctx.storage("group norm coefficients", (stats_capacity * 16) as u64),
            partial_capacity,
            stats_capacity,
        }
    }
}

fn spec(entry: &'static str, precision: Precision) -> KernelSpec {
    let (shader, source) = match entry {
        "gn_combine_sg" => ("group_norm_subgroup", SOURCE_SUBGROUP),
        _ => ("group_norm", SOURCE),
    };
    let (shader, source) = specialize(shader, source, &[("act", precision)]);
    KernelSpec {
        shader,
        source,
        entry,
        bindings: vec![
            Binding::Uniform,            // params
            Binding::StorageRead,        // x
            Binding::StorageReadWrite,   // partials
            Binding::StorageReadWrite,   // per-(batch, channel) coefficients
            Binding::StorageRead,        // gamma
            Binding::StorageRead,        // beta
            Binding::StorageReadWrite,   // y
            Binding::StorageReadDynamic, // the scale-shift table's step block
        ],
    }
}

/// The tensors of one group norm: NHWC `x` and `y` (`[batch, .., channels]`, stored as the
/// shape's precision), f32 `gamma` and `beta` of `channels`.
pub struct GroupNormIo<'a> {
    pub x: &'a GpuTensor,
    pub gamma: &'a GpuTensor,
    pub beta: &'a GpuTensor,
    pub y: &'a GpuTensor,
}

impl GroupNormShape {
    /// The shape of a norm over `x` (`[batch, .., channels]`).
    pub fn of(x: &GpuTensor, groups: usize, eps: f32, silu: bool) -> Result<Self> {
        let s = x.shape();
        ensure!(s.len() >= 2, "group norm: x {s:?} has no channel dimension");
        let (batch, channels) = (s[0], s[s.len() - 1]);
        Ok(Self {
            batch,
            hw: s[1..s.len() - 1].iter().product(),
            channels,
            groups,
            eps,
            silu,
            precision: x.precision(),
        })
    }
}

/// What the apply pass does besides `silu?(norm(x)·γ + β)`: the neighbours of a resnet's norms
/// it takes in, so that neither costs a pass of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Apply<'a> {
    /// `v·(1 + s) + t` before the SiLU, with `(s, t)` the step's `[B, 2C]` block of the table
    /// (diffusers' `resnet_time_scale_shift = "scale_shift"`: first half scale, then shift).
    pub scale_shift: Option<&'a StepTable>,
    /// `y = resample(…)`: x is NHWC `[B, H, W, C]` and y `[B, OH, OW, C]` (a resnet's h path
    /// after norm1 + SiLU when it resamples).
    pub resample: Resample,
}

/// The three dispatches computing `y = silu?(group_norm(x) · gamma + beta)` with the statistics
/// combined as `combine`. `x` and `y` must be different tensors.
pub fn group_norm(
    ctx: &GpuContext,
    shape: &GroupNormShape,
    combine: Reduction,
    scratch: &GroupNormScratch,
    io: &GroupNormIo<'_>,
) -> Result<Vec<Dispatch>> {
    group_norm_with(ctx, shape, combine, scratch, io, Apply::default())
}

/// [`group_norm`] with the apply pass doing `apply` too.
pub fn group_norm_with(
    ctx: &GpuContext,
    shape: &GroupNormShape,
    combine: Reduction,
    scratch: &GroupNormScratch,
    io: &GroupNormIo<'_>,
    apply: Apply<'_>,
) -> Result<Vec<Dispatch>> {
    shape.validate()?;
    ensure!(
        combine == Reduction::Serial || ctx.uses_subgroups(),
        "group norm: the subgroup combine needs a device with subgroups"
    );
    let partial_len = shape.batch * shape.num_chunks() * shape.channels;
    // gn_combine writes one coefficient vec4 per (batch, channel), not per group.
    ensure!(
        partial_len <= scratch.partial_capacity
            && shape.batch * shape.channels <= scratch.stats_capacity,
        "group norm scratch too small for {shape:?}"
    );
    let p = shape.precision;
    let dims = io.x.shape();
    let x = io.x.dense("group norm x", dims, p)?;
    ensure!(
        io.x.numel() == shape.numel(),
        "group norm: x {:?} is not {shape:?}",
        dims
    );
    let mut params = shape.params();
    let (y, out_numel) = match apply.resample {
        Resample::None => (io.y.dense("group norm y", dims, p)?, shape.numel()),
        mode => {
            ensure!(
                dims.len() == 4,
                "group norm: resampling needs NHWC x, got {dims:?}"
            );
            let (h, w) = (dims[1], dims[2]);
            let (oh, ow) = mode.out_hw(h, w)?;
            let out = [shape.batch, oh, ow, shape.channels];
            let n = out.iter().product::<usize>();
            ensure!(
                n < u32::MAX as usize,
                "group norm: {n} resampled elements overflow 32-bit indexing"
            );
            params.width = w as u32;
            params.out_h = oh as u32;
            params.out_w = ow as u32;
            params.resample = mode.code();
            (io.y.dense("group norm y", &out, p)?, n)
        }
    };
    let unused = ctx.placeholder();
    let (table, table_stride) = match apply.scale_shift {
        Some(t) => {
            ensure!(
                t.batch() == shape.batch && t.width() == 2 * shape.channels,
                "group norm: the scale-shift table is [{}, {}] per step, needs [{}, {}]",
                t.batch(),
                t.width(),
                shape.batch,
                2 * shape.channels
            );
            params.scale_shift = 1;
            (t.step_binding(), t.stride_bytes())
        }
        None => (unused.into(), 0),
    };
    let gamma = io
        .gamma
        .dense("group norm gamma", &[shape.channels], Precision::F32)?;
    let beta = io
        .beta
        .dense("group norm beta", &[shape.channels], Precision::F32)?;
    let uniform = ctx.uniform("group norm params", &params);
    let applied = ApplyCost {
        out_numel,
        taps: apply.resample.taps(),
        scale_shift: apply.scale_shift.is_some(),
    };
    let mut out = Vec::with_capacity(3);
    for stage in stages(shape, combine == Reduction::Subgroup, applied) {
        // Only the apply pass reads the table; the others bind it at offset 0 every step.
        let stride = if stage.entry.starts_with("gn_apply") {
            table_stride
        } else {
            0
        };
        out.push(stage_dispatch(
            ctx,
            shape,
            &stage,
            [
                (&uniform).into(),
                x,
                (&scratch.partials).into(),
                (&scratch.stats).into(),
                gamma,
                beta,
                y,
                table,
            ],
            stride,
        )?);
    }
    Ok(out)
}

/// One of the three dispatches: its entry point, workgroups, compulsory bytes and FLOPs.
pub(crate) struct Stage {
    entry: &'static str,
    workgroups: u32,
    bytes: u64,
    flops: u64,
}

/// What the apply pass computes, for its dispatch size and cost.
#[derive(Clone, Copy, Debug)]
struct ApplyCost {
    /// Elements of y.
    out_numel: usize,
    /// Input samples per output (1 without resampling).
    taps: u64,
    scale_shift: bool,
}

fn stages(shape: &GroupNormShape, subgroups: bool, apply: ApplyCost) -> [Stage; 3] {
    let partial_len = shape.batch * shape.num_chunks() * shape.channels;
    let numel = shape.numel();
    let elem = shape.precision.bytes() as u64;
    let n = numel as u64;
    let groups = (shape.batch * shape.groups) as u32;
    let (combine, combine_groups) = if subgroups {
        ("gn_combine_sg", groups)
    } else {
        ("gn_combine", groups.div_ceil(WORKGROUP))
    };
    let out_n = apply.out_numel as u64;
    // Per evaluated input: subtract, multiply-add, SiLU (~5); the scale-shift a multiply-add.
    let per_value = 8 + if apply.scale_shift { 2 } else { 0 };
    let table_bytes = if apply.scale_shift {
        (shape.batch * 2 * shape.channels * 4) as u64
    } else {
        0
    };
    let (entry, items, flops) = if apply.taps == 1 && out_n == n {
        ("gn_apply", numel.div_ceil(4), per_value * n)
    } else {
        // Every tap normalises its input again (cheaper than storing the full-size h) and
        // adds it with its weight.
        (
            "gn_apply_resample",
            apply.out_numel,
            (per_value + 2) * apply.taps * out_n,
        )
    };
    [
        Stage {
            entry: "gn_stats",
            workgroups: (partial_len as u32).div_ceil(WORKGROUP),
            bytes: n * elem + partial_len as u64 * 16,
            flops: 3 * n,
        },
        Stage {
            entry: combine,
            workgroups: combine_groups,
            bytes: partial_len as u64 * 16,
            flops: 8 * partial_len as u64,
        },
        Stage {
            entry,
            workgroups: (items as u32).div_ceil(WORKGROUP),
            bytes: (n + out_n) * elem + 16 * shape.channels as u64 + table_bytes,
            flops,
        },
    ]
}

/// The dispatch of `stage`, bound to (params, x, partials, stats, gamma, beta, y, table), the
/// table at `table_stride` bytes per step.
pub(crate) fn stage_dispatch(
    ctx: &GpuContext,
    shape: &GroupNormShape,
    stage: &Stage,
    buffers: [BufferSlice<'_>; 8],
    table_stride: u32,
) -> Result<Dispatch> {
    let kernel = ctx.kernel(&spec(stage.entry, shape.precision))?;
    let bind_group = kernel.bind_group(&ctx.device, &buffers)?;
    let tag = if shape.silu {
        "group_norm_silu"
    } else {
        "group_norm"
    };
    Ok(Dispatch {
        label: format!("{tag}::{}", stage.entry),
        kernel,
        bind_group,
        workgroups: grid_2d(
            stage.workgroups,
            ctx.limits.max_compute_workgroups_per_dimension,
        ),
        dynamic_strides: vec![table_stride],
        flops: stage.flops,
        bytes: stage.bytes,
    })
}
