//! Elementwise helpers of the U-Net plan (`shaders/elementwise.wgsl`): skip concatenation for a
//! group norm's input, `a·x + b` (center_input_sample) and the scale-shift time embedding + SiLU.

use anyhow::{ensure, Result};

use crate::gpu::kernel::{grid_2d, Binding, BufferSlice, Dispatch, KernelSpec};
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

pub fn spec(entry: &'static str) -> KernelSpec {
    KernelSpec {
        shader: "elementwise",
        source: SOURCE,
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

fn check(what: &str, buffer: &wgpu::Buffer, elements: usize) -> Result<()> {
    ensure!(
        buffer.size() >= (elements * 4) as u64,
        "{what}: buffer holds {} bytes, needs {}",
        buffer.size(),
        elements * 4
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
) -> Result<Dispatch> {
    let Inputs { a, b, table } = inputs;
    ensure!(params.n > 0, "{label}: empty");
    check(label, out, params.n as usize)?;
    let kernel = ctx.kernel(&spec(entry))?;
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
        bytes: 8 * n,
    })
}

/// `out[p] = cat(a[p] (c1 channels), b[p] (c2 channels))` for `pixels` NHWC pixels.
pub fn concat_channels(
    ctx: &GpuContext,
    label: &str,
    pixels: usize,
    (c1, c2): (usize, usize),
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Dispatch> {
    check(label, a, pixels * c1)?;
    check(label, b, pixels * c2)?;
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
    build(ctx, "concat_channels", label, params, inputs, out)
}

/// `out = a · scale + shift` over `n` values.
pub fn affine(
    ctx: &GpuContext,
    label: &str,
    n: usize,
    (scale, shift): (f32, f32),
    a: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Dispatch> {
    check(label, a, n)?;
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
    build(ctx, "affine", label, params, inputs, out)
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
) -> Result<Dispatch> {
    let n = batch * hw * c;
    check(label, a, n)?;
    check(label, table, batch * 2 * c)?;
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
    )
}
