//! `y = a·x + b`: the smallest end-to-end kernel, used by `tests/gpu_smoke.rs` and as a template.

use anyhow::Result;

use crate::gpu::kernel::{grid_2d, Binding, Dispatch, KernelSpec};
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;

pub const SOURCE: &str = include_str!("../../../shaders/smoke.wgsl");
const WORKGROUP: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub a: f32,
    pub _pad: [u32; 2],
}

pub fn spec() -> KernelSpec {
    KernelSpec {
        shader: "smoke",
        source: SOURCE,
        entry: "axpy",
        bindings: vec![
            Binding::Uniform,
            Binding::StorageRead,
            Binding::StorageRead,
            Binding::StorageReadWrite,
        ],
    }
}

/// A dispatch computing `y = a·x + b` over f32 tensors of one shape.
pub fn axpy(
    ctx: &GpuContext,
    a: f32,
    x: &GpuTensor,
    b: &GpuTensor,
    y: &GpuTensor,
) -> Result<Dispatch> {
    let numel = x.numel();
    let n = numel as u32;
    let (x, b, y) = (
        x.flat("axpy x", numel)?,
        b.flat("axpy b", numel)?,
        y.flat("axpy y", numel)?,
    );
    let kernel = ctx.kernel(&spec())?;
    let params = ctx.uniform("smoke params", &Params { n, a, _pad: [0; 2] });
    let bind_group = kernel.bind_group(&ctx.device, &[(&params).into(), x, b, y])?;
    let groups = n.div_ceil(WORKGROUP);
    Ok(Dispatch {
        label: "smoke axpy".into(),
        kernel,
        bind_group,
        workgroups: grid_2d(groups, ctx.limits.max_compute_workgroups_per_dimension),
        dynamic_strides: vec![],
        flops: 2 * n as u64,
        bytes: 12 * n as u64,
    })
}
