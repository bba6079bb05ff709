//! Group normalisation of NHWC activations with an optional fused SiLU (`shaders/group_norm.wgsl`).
//!
//! Three dispatches: per-(chunk, channel) partial statistics, Chan's combination per group, and
//! the elementwise apply. The reference twin is `cpu::ops::group_norm` (+ `cpu::ops::silu`).

use anyhow::{ensure, Result};

use crate::gpu::kernel::{grid_2d, Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::precision::{specialize, Precision};
use crate::gpu::tensor::GpuTensor;
use crate::gpu::variants::Reduction;
use crate::gpu::GpuContext;

pub const SOURCE: &str = include_str!("../../../shaders/group_norm.wgsl");
/// With the subgroup combine appended (compiled only on devices with `SUBGROUP`).
pub const SOURCE_SUBGROUP: &str = concat!(
    include_str!("../../../shaders/group_norm.wgsl"),
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
            Binding::Uniform,          // params
            Binding::StorageRead,      // x
            Binding::StorageReadWrite, // partials
            Binding::StorageReadWrite, // per-(batch, channel) coefficients
            Binding::StorageRead,      // gamma
            Binding::StorageRead,      // beta
            Binding::StorageReadWrite, // y
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

/// The three dispatches computing `y = silu?(group_norm(x) · gamma + beta)` with the statistics
/// combined as `combine`. `x` and `y` must be different tensors.
pub fn group_norm(
    ctx: &GpuContext,
    shape: &GroupNormShape,
    combine: Reduction,
    scratch: &GroupNormScratch,
    io: &GroupNormIo<'_>,
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
    let y = io.y.dense("group norm y", dims, p)?;
    ensure!(
        io.x.numel() == shape.numel(),
        "group norm: x {:?} is not {shape:?}",
        dims
    );
    let gamma = io
        .gamma
        .dense("group norm gamma", &[shape.channels], Precision::F32)?;
    let beta = io
        .beta
        .dense("group norm beta", &[shape.channels], Precision::F32)?;
    let uniform = ctx.uniform("group norm params", &shape.params());
    let mut out = Vec::with_capacity(3);
    for stage in stages(shape, combine == Reduction::Subgroup) {
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
            ],
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

pub(crate) fn stages(shape: &GroupNormShape, subgroups: bool) -> [Stage; 3] {
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
            entry: "gn_apply",
            workgroups: (numel.div_ceil(4) as u32).div_ceil(WORKGROUP),
            bytes: 2 * n * elem + 16 * shape.channels as u64,
            flops: 8 * n,
        },
    ]
}

/// The dispatch of `stage`, bound to (params, x, partials, stats, gamma, beta, y).
pub(crate) fn stage_dispatch(
    ctx: &GpuContext,
    shape: &GroupNormShape,
    stage: &Stage,
    buffers: [BufferSlice<'_>; 7],
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
        dynamic_strides: vec![],
        flops: stage.flops,
        bytes: stage.bytes,
    })
}
