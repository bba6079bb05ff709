//! Group normalisation of NHWC activations with an optional fused SiLU (`shaders/group_norm.wgsl`).
//!
//! Three dispatches: per-(chunk, channel) partial statistics, Chan's combination per group, and
//! the elementwise apply. The reference twin is `cpu::ops::group_norm` (+ `cpu::ops::silu`).

use anyhow::{ensure, Result};

use crate::gpu::kernel::{grid_2d, Binding, Dispatch, KernelSpec};
use crate::gpu::precision::{specialize, Precision};
use crate::gpu::{candidates, GpuContext};

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

    fn num_chunks(&self) -> usize {
        self.hw.div_ceil(CHUNK_PIXELS as usize)
    }

    fn params(&self) -> Params {
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

/// The three dispatches computing `y = silu?(group_norm(x) · gamma + beta)`.
/// `x` and `y` must be different buffers; `gamma`/`beta` hold `channels` f32. The statistics
/// are combined per group by one serial invocation, or by a workgroup of subgroups where the
/// context uses them ([`GpuContext::uses_subgroups`]) and tuning does not find the serial one
/// faster.
pub fn group_norm(
    ctx: &GpuContext,
    shape: &GroupNormShape,
    scratch: &GroupNormScratch,
    x: &wgpu::Buffer,
    gamma: &wgpu::Buffer,
    beta: &wgpu::Buffer,
    y: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    shape.validate()?;
    let params = shape.params();
    let partial_len = shape.batch * shape.num_chunks() * shape.channels;
    // gn_combine writes one coefficient vec4 per (batch, channel), not per group.
    ensure!(
        partial_len <= scratch.partial_capacity
            && shape.batch * shape.channels <= scratch.stats_capacity,
        "group norm scratch too small for {shape:?}"
    );
    let numel = shape.numel();
    let elem = shape.precision.bytes();
    ensure!(
        x.size() >= (numel * elem) as u64 && y.size() >= (numel * elem) as u64,
        "group norm: x or y holds fewer than {numel} {}",
        shape.precision
    );
    ensure!(
        gamma.size() >= (shape.channels * 4) as u64 && beta.size() >= (shape.channels * 4) as u64,
        "group norm: gamma or beta holds fewer than {} f32",
        shape.channels
    );
    let uniform = ctx.uniform("group norm params", &params);
    let subgroups = combine_with_subgroups(ctx, shape)?;
    let mut out = Vec::with_capacity(3);
    for stage in stages(shape, subgroups) {
        out.push(stage_dispatch(
            ctx,
            shape,
            &stage,
            [
                &uniform,
                x,
                &scratch.partials,
                &scratch.stats,
                gamma,
                beta,
                y,
            ],
        )?);
    }
    Ok(out)
}

/// One of the three dispatches: its entry point, workgroups, compulsory bytes and FLOPs.
struct Stage {
    entry: &'static str,
    workgroups: u32,
    bytes: u64,
    flops: u64,
}

fn stages(shape: &GroupNormShape, subgroups: bool) -> [Stage; 3] {
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
fn stage_dispatch(
    ctx: &GpuContext,
    shape: &GroupNormShape,
    stage: &Stage,
    buffers: [&wgpu::Buffer; 7],
) -> Result<Dispatch> {
    let kernel = ctx.kernel(&spec(stage.entry, shape.precision))?;
    let entries: Vec<_> = buffers.iter().map(|b| (*b).into()).collect();
    let bind_group = kernel.bind_group(&ctx.device, &entries)?;
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

/// Whether the statistics are combined by subgroups: only where the context uses them, and
/// then the faster of the two combines for this shape when tuning ([`crate::gpu::tune`]).
fn combine_with_subgroups(ctx: &GpuContext, shape: &GroupNormShape) -> Result<bool> {
    if !ctx.uses_subgroups() {
        return Ok(false);
    }
    let key = format!(
        "b{} hw{} c{} g{} {}",
        shape.batch, shape.hw, shape.channels, shape.groups, shape.precision
    );
    let candidates = [("subgroup", true), ("serial", false)];
    ctx.tuner.choose(
        "group_norm_combine",
        &key,
        &candidates,
        true,
        |subgroups, best| {
            // Only the combine differs; time it alone, on scratch buffers.
            let partial_len = shape.batch * shape.num_chunks() * shape.channels;
            let scratch = |label: &str, bytes: usize| candidates::scratch(ctx, label, bytes as u64);
            let uniform = ctx.uniform("tune group norm params", &shape.params());
            let x = scratch("tune gn x", shape.numel() * shape.precision.bytes());
            let y = scratch("tune gn y", shape.numel() * shape.precision.bytes());
            let partials = scratch("tune gn partials", partial_len * 16);
            let stats = scratch("tune gn stats", shape.batch * shape.channels * 16);
            let affine = scratch("tune gn gamma", shape.channels * 4);
            let [_, combine, _] = stages(shape, subgroups);
            let d = stage_dispatch(
                ctx,
                shape,
                &combine,
                [&uniform, &x, &partials, &stats, &affine, &affine, &y],
            )?;
            candidates::time_dispatch(ctx, &d, candidates::runs_for(ctx), best)
        },
    )
}
