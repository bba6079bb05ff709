//! Elementwise helpers of the U-Net plan (`shaders/elementwise.wgsl`): skip concatenation for a
//! group norm's input, `a·x + b` (center_input_sample) and the scale-shift time embedding + SiLU.

use anyhow::{ensure, Result};

use crate::gpu::kernel::{grid_2d, Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::precision::{specialize, Precision};
use crate::gpu::GpuContext;

pub const SOURCE: &str = include_str!("../../../shaders/elementwise.wgsl");
const WORKGROUP: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub c1: u32,
    pub c2: u32,
    pub hw: u32,
    pub scale: f32,
    pub shift: f32,
    pub row_groups: u32,
    pub _pad: u32,
}

/// Storage types of a kernel's inputs (`a`, `b`) and of its output; the table is f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    pub input: Precision,
    pub output: Precision,
}

impl Io {
    pub const F32: Io = Io::same(Precision::F32);

    /// Inputs and output stored as `p`.
    pub const fn same(p: Precision) -> Self {
        Self {
            input: p,
            output: p,
        }
    }
}

pub fn spec(entry: &'static str) -> KernelSpec {
    spec_as(entry, Io::F32)
}

/// The pipeline of `entry` for the storage types `io`.
pub fn spec_as(entry: &'static str, io: Io) -> KernelSpec {
    let (shader, source) = specialize(
        "elementwise",
        SOURCE,
        &[("in_t", io.input), ("out_t", io.output)],
    );
    KernelSpec {
        shader,
        source,
        entry,
        bindings: vec![
            Binding::Uniform,
            Binding::StorageRead,        // a
            Binding::StorageRead,        // b
            Binding::StorageReadDynamic, // per-step table
            Binding::StorageReadWrite,   // out
        ],
    }
}

fn check(what: &str, buffer: &wgpu::Buffer, elements: usize, p: Precision) -> Result<()> {
    ensure!(
        buffer.size() >= (elements * p.bytes()) as u64,
        "{what}: buffer holds {} bytes, needs {}",
        buffer.size(),
        elements * p.bytes()
    );
    Ok(())
}

/// What an elementwise kernel reads: `a`, optionally `b`, and optionally one step's slice of a
/// per-step table (buffer, slice bytes, bytes per step).
struct Inputs<'a> {
    a: &'a wgpu::Buffer,
    b: Option<&'a wgpu::Buffer>,
    table: Option<(&'a wgpu::Buffer, u64, u32)>,
}

fn build(
    ctx: &GpuContext,
    entry: &'static str,
    label: &str,
    mut params: Params,
    inputs: Inputs<'_>,
    out: &wgpu::Buffer,
    io: Io,
) -> Result<Dispatch> {
    let Inputs { a, b, table } = inputs;
    ensure!(params.n > 0, "{label}: empty");
    check(label, out, params.n as usize, io.output)?;
    let kernel = ctx.kernel(&spec_as(entry, io))?;
    let groups = params.n.div_ceil(WORKGROUP);
    let grid = grid_2d(groups, ctx.limits.max_compute_workgroups_per_dimension);
    params.row_groups = grid[0];
    let uniform = ctx.uniform(&format!("{label} params"), &params);
    let unused = ctx.placeholder();
    let (tbuf, tsize, tstride) = table.unwrap_or((unused, unused.size(), 0));
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[
            (&uniform).into(),
            a.into(),
            b.unwrap_or(unused).into(),
            BufferSlice {
                buffer: tbuf,
                offset: 0,
                size: Some(tsize),
            },
            out.into(),
        ],
    )?;
    let n = params.n as u64;
    Ok(Dispatch {
        label: label.to_string(),
        kernel,
        bind_group,
        workgroups: grid,
        dynamic_strides: vec![tstride],
        flops: n,
        bytes: (io.input.bytes() + io.output.bytes()) as u64 * n,
    })
}

/// `out[p] = cat(a[p] (c1 channels), b[p] (c2 channels))` for `pixels` NHWC pixels.
#[allow(clippy::too_many_arguments)]
pub fn concat_channels(
    ctx: &GpuContext,
    label: &str,
    pixels: usize,
    (c1, c2): (usize, usize),
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
    io: Io,
) -> Result<Dispatch> {
    check(label, a, pixels * c1, io.input)?;
    check(label, b, pixels * c2, io.input)?;
    let params = Params {
        n: (pixels * (c1 + c2)) as u32,
        c1: c1 as u32,
        c2: c2 as u32,
        ..Default::default()
    };
    let inputs = Inputs {
        a,
        b: Some(b),
        table: None,
    };
    build(ctx, "concat_channels", label, params, inputs, out, io)
}

/// `out = a · scale + shift` over `n` values (also the conversion between storage types).
pub fn affine(
    ctx: &GpuContext,
    label: &str,
    n: usize,
    (scale, shift): (f32, f32),
    a: &wgpu::Buffer,
    out: &wgpu::Buffer,
    io: Io,
) -> Result<Dispatch> {
    check(label, a, n, io.input)?;
    let params = Params {
        n: n as u32,
        scale,
        shift,
        ..Default::default()
    };
    let inputs = Inputs {
        a,
        b: None,
        table: None,
    };
    build(ctx, "affine", label, params, inputs, out, io)
}

/// `out = silu(a · (1 + scale) + shift)` for NHWC `a` of `batch × hw × c`, with (scale, shift)
/// the step's `[batch, 2c]` block of `table` (`stride` bytes per step).
pub fn scale_shift_silu(
    ctx: &GpuContext,
    label: &str,
    (batch, hw, c): (usize, usize, usize),
    a: &wgpu::Buffer,
    (table, stride): (&wgpu::Buffer, u32),
    out: &wgpu::Buffer,
    io: Io,
) -> Result<Dispatch> {
    let n = batch * hw * c;
    check(label, a, n, io.input)?;
    check(label, table, batch * 2 * c, Precision::F32)?;
    let params = Params {
        n: n as u32,
        c1: c as u32,
        hw: hw as u32,
        ..Default::default()
    };
    let size = (batch * 2 * c * 4) as u64;
    build(
        ctx,
        "scale_shift_silu",
        label,
        params,
        Inputs {
            a,
            b: None,
            table: Some((table, size, stride)),
        },
        out,
        io,
    )
}
