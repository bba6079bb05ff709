//! Elementwise helpers of the U-Net plan (`shaders/elementwise.wgsl`): skip concatenation for a
//! group norm's input and `a·x + b` (center_input_sample).

use anyhow::{ensure, Result};

use crate::gpu::kernel::{grid_2d, Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::precision::{specialize, Precision};
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;

pub const SOURCE: &str = include_str!("../../../shaders/elementwise.wgsl");
const WORKGROUP: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub c1: u32,
    pub c2: u32,
    pub scale: f32,
    pub shift: f32,
    pub row_groups: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// Storage types of a kernel's inputs (`a`, `b`) and of its output.
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
            Binding::StorageRead,      // a
            Binding::StorageRead,      // b
            Binding::StorageReadWrite, // out
        ],
    }
}

/// What an elementwise kernel reads (checked dense by the caller): `a` and optionally `b`.
struct Inputs<'a> {
    a: BufferSlice<'a>,
    b: Option<BufferSlice<'a>>,
}

fn build(
    ctx: &GpuContext,
    entry: &'static str,
    label: &str,
    mut params: Params,
    inputs: Inputs<'_>,
    out: BufferSlice<'_>,
    io: Io,
) -> Result<Dispatch> {
    let Inputs { a, b } = inputs;
    ensure!(params.n > 0, "{label}: empty");
    let kernel = ctx.kernel(&spec_as(entry, io))?;
    let groups = params.n.div_ceil(WORKGROUP);
    let grid = grid_2d(groups, ctx.limits.max_compute_workgroups_per_dimension);
    params.row_groups = grid[0];
    let uniform = ctx.uniform(&format!("{label} params"), &params);
    let unused = ctx.placeholder();
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[(&uniform).into(), a, b.unwrap_or(unused.into()), out],
    )?;
    let n = params.n as u64;
    Ok(Dispatch {
        label: label.to_string(),
        kernel,
        bind_group,
        workgroups: grid,
        dynamic_strides: vec![],
        flops: n,
        bytes: (io.input.bytes() + io.output.bytes()) as u64 * n,
    })
}

/// `out[p] = cat(a[p], b[p])` along the last (channel) dimension of NHWC tensors.
pub fn concat_channels(
    ctx: &GpuContext,
    label: &str,
    a: &GpuTensor,
    b: &GpuTensor,
    out: &GpuTensor,
) -> Result<Dispatch> {
    let shape = a.shape();
    ensure!(
        !shape.is_empty() && b.rank() == shape.len(),
        "{label}: cannot concatenate {:?} and {:?}",
        shape,
        b.shape()
    );
    let (c1, c2) = (shape[shape.len() - 1], b.shape()[shape.len() - 1]);
    let pixels = a.numel() / c1.max(1);
    let mut out_shape = shape.to_vec();
    *out_shape.last_mut().expect("rank ≥ 1") = c1 + c2;
    let mut b_shape = shape.to_vec();
    *b_shape.last_mut().expect("rank ≥ 1") = c2;
    let io = Io {
        input: a.precision(),
        output: out.precision(),
    };
    let params = Params {
        n: (pixels * (c1 + c2)) as u32,
        c1: c1 as u32,
        c2: c2 as u32,
        ..Default::default()
    };
    let inputs = Inputs {
        a: a.dense(label, shape, io.input)?,
        b: Some(b.dense(label, &b_shape, io.input)?),
    };
    let out = out.dense(label, &out_shape, io.output)?;
    build(ctx, "concat_channels", label, params, inputs, out, io)
}

/// `out = a · scale + shift` elementwise (also the conversion between storage types: `out`
/// may have another precision than `a`).
pub fn affine(
    ctx: &GpuContext,
    label: &str,
    (scale, shift): (f32, f32),
    a: &GpuTensor,
    out: &GpuTensor,
) -> Result<Dispatch> {
    let io = Io {
        input: a.precision(),
        output: out.precision(),
    };
    let params = Params {
        n: a.numel() as u32,
        scale,
        shift,
        ..Default::default()
    };
    let inputs = Inputs {
        a: a.dense(label, a.shape(), io.input)?,
        b: None,
    };
    let out = out.dense(label, a.shape(), io.output)?;
    build(ctx, "affine", label, params, inputs, out, io)
}
