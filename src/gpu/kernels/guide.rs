//! Classifier-free guidance on the GPU, fused into the updates: `shaders/guide.wgsl` is appended
//! to every update shader (ddim_step, multistep, sigma_step) and to the threshold search, which
//! read `guided_model_out(i)` where they read the model output, so guidance costs no pass of its
//! own. With a rescale (φ > 0) one small per-image reduction runs before the update
//! (`shaders/guide_std.wgsl`: r = std(c)/std(g) per image). The CPU twin is
//! `sampling::Guided::combine`.

use anyhow::{ensure, Result};

use crate::gpu::kernel::{Binding, BufferSlice, Dispatch, KernelSpec};
use crate::gpu::precision::Precision;
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;
use crate::sampling::Guided;

/// Appended to the shaders that read a model output.
pub const SNIPPET: &str = include_str!("../../../shaders/guide.wgsl");
pub const STD_SOURCE: &str = include_str!("../../../shaders/guide_std.wgsl");

/// The `Guide` uniform of guide.wgsl and guide_std.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GuideParams {
    pub on: u32,
    pub numel: u32,
    pub per_sample: u32,
    pub rescale: u32,
    pub w: f32,
    pub phi: f32,
    pub keep: f32,
    pub _pad: u32,
}

/// One loop's guidance on the device: the uniform every update binds, the per-image ratio
/// buffer, and the ratio's reduction (when rescaling), to run before each update.
pub struct Guide {
    pub uniform: wgpu::Buffer,
    /// `batch` f32 when rescaling, else a 1-value placeholder (never read).
    pub ratio: GpuTensor,
    /// guide_std's dispatch, when rescaling.
    pub dispatch: Option<Dispatch>,
    /// Whether the model output is the doubled batch.
    pub on: bool,
}

impl Guide {
    /// Values the model output must hold for `numel` values of samples: twice as many when guided.
    pub fn model_values(&self, numel: usize) -> usize {
        if self.on {
            2 * numel
        } else {
            numel
        }
    }

    /// The uniform's binding.
    pub fn params(&self) -> BufferSlice<'_> {
        (&self.uniform).into()
    }
}

fn std_spec() -> KernelSpec {
    KernelSpec {
        shader: "guide_std",
        source: STD_SOURCE,
        entry: "guide_std",
        bindings: vec![
            Binding::Uniform,          // guide
            Binding::StorageRead,      // model output (doubled batch)
            Binding::StorageReadWrite, // per-image ratio
        ],
    }
}

/// The guidance of a loop over `batch` samples of `per_sample` values whose forward writes
/// `model_out` (2·batch images when `guided` is Some). Unguided: a uniform that turns it off.
pub fn guide(
    ctx: &GpuContext,
    guided: Option<&Guided>,
    batch: usize,
    per_sample: usize,
    model_out: &GpuTensor,
) -> Result<Guide> {
    let numel = batch * per_sample;
    ensure!(numel > 0, "guidance: empty sample");
    ensure!(
        2 * numel < u32::MAX as usize,
        "guidance: {numel} elements per half overflow 32-bit indexing"
    );
    let [w, phi, keep] = guided.map_or([1.0, 0.0, 1.0], Guided::factors);
    let rescale = guided.is_some_and(|g| g.rescale > 0.0);
    let params = GuideParams {
        on: guided.is_some() as u32,
        numel: numel as u32,
        per_sample: per_sample as u32,
        rescale: rescale as u32,
        w,
        phi,
        keep,
        _pad: 0,
    };
    let uniform = ctx.uniform("guidance", &params);
    let ratio = ctx.tensor(
        "guidance std ratio",
        &[if rescale { batch } else { 1 }],
        Precision::F32,
    );
    let dispatch = if rescale {
        let out = model_out.flat("guidance model output (doubled batch)", 2 * numel)?;
        let kernel = ctx.kernel(&std_spec())?;
        let bind_group =
            kernel.bind_group(&ctx.device, &[(&uniform).into(), out, ratio.binding()])?;
        Some(Dispatch {
            label: "guide::guide_std".into(),
            kernel,
            bind_group,
            workgroups: [batch as u32, 1, 1],
            dynamic_strides: vec![],
            flops: 10 * numel as u64,
            bytes: 16 * numel as u64,
        })
    } else {
        None
    };
    Ok(Guide {
        uniform,
        ratio,
        dispatch,
        on: guided.is_some(),
    })
}

/// `given`, or guidance turned off (kept in `slot`) for an update run without it.
pub fn given_or_off<'a>(
    ctx: &GpuContext,
    given: Option<&'a Guide>,
    slot: &'a mut Option<Guide>,
    batch: usize,
    per_sample: usize,
    model_out: &GpuTensor,
) -> Result<&'a Guide> {
    Ok(match given {
        Some(g) => g,
        None => slot.insert(guide(ctx, None, batch, per_sample, model_out)?),
    })
}
