//! ×2 resampling of NHWC activations (`shaders/resample.wgsl`): 2×2 average pooling, the
//! (1, 3, 3, 1) FIR down/up filters of the skip blocks and nearest ×2. The filters themselves
//! live in `shaders/resample_taps.wgsl`, which is appended to every shader that resamples while
//! it loads or stores: the group norm's apply pass (a resnet's h path after norm1 + SiLU) and
//! the conv epilogue's residual read (a resnet's identity path). This standalone kernel serves
//! what has no neighbour to join: the skip blocks' image path and the input of a 1×1 shortcut
//! conv. The reference twins are `cpu::resample::{avg_pool2x2, fir_down2, fir_up2}` and
//! `cpu::ops::upsample_nearest2x`.

use anyhow::{ensure, Result};

use crate::gpu::kernel::{grid_2d, Binding, Dispatch, KernelSpec};
use crate::gpu::precision::specialize;
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/resample.wgsl"),
    "\n",
    include_str!("../../../shaders/resample_taps.wgsl"),
);
const WORKGROUP: u32 = 64;

// The filters' codes: the WGSL `const`s of the same names in resample_taps.wgsl
// (tests/shader_contracts.rs checks).
pub const RS_NONE: u32 = 0;
pub const RS_AVG_POOL: u32 = 1;
pub const RS_FIR_DOWN: u32 = 2;
pub const RS_FIR_UP: u32 = 3;
pub const RS_NEAREST: u32 = 4;

/// A ×2 resampling of the spatial dimensions, per channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Resample {
    #[default]
    None,
    /// `F.avg_pool2d(x, 2)`: `ResnetBlock2D(down=True)`; odd sizes floor.
    AvgPool2,
    /// `upfirdn2d(x, (1,3,3,1), down=2, pad=(1,1))`: the skip blocks' `FirDownsample2D`.
    FirDown2,
    /// `upfirdn2d(x, (1,3,3,1)·4, up=2, pad=(2,1))`: the skip blocks' `FirUpsample2D`.
    FirUp2,
    /// Nearest ×2: `ResnetBlock2D(up=True)`.
    Nearest2,
}

impl Resample {
    /// The shader's code for this filter.
    pub const fn code(self) -> u32 {
        match self {
            Self::None => RS_NONE,
            Self::AvgPool2 => RS_AVG_POOL,
            Self::FirDown2 => RS_FIR_DOWN,
            Self::FirUp2 => RS_FIR_UP,
            Self::Nearest2 => RS_NEAREST,
        }
    }

    /// The output size of an `h × w` input (an error where nothing would be left).
    pub fn out_hw(self, h: usize, w: usize) -> Result<(usize, usize)> {
        let out = match self {
            Self::None => (h, w),
            Self::AvgPool2 | Self::FirDown2 => (h / 2, w / 2),
            Self::FirUp2 | Self::Nearest2 => (2 * h, 2 * w),
        };
        ensure!(
            out.0 > 0 && out.1 > 0,
            "{self:?} of a {h}×{w} input leaves nothing"
        );
        Ok(out)
    }

    /// Input samples each output reads (the 2-D taps).
    pub fn taps(self) -> u64 {
        match self {
            Self::None | Self::Nearest2 => 1,
            Self::AvgPool2 | Self::FirUp2 => 4,
            Self::FirDown2 => 16,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub mode: u32,
    pub row_groups: u32,
}

/// `out = mode(x)` for NHWC `x` `[B, H, W, C]` and `out` `[B, OH, OW, C]` of one precision.
pub fn resample(
    ctx: &GpuContext,
    label: &str,
    mode: Resample,
    x: &GpuTensor,
    out: &GpuTensor,
) -> Result<Dispatch> {
    ensure!(
        x.rank() == 4,
        "{label}: resampling needs NHWC, got {:?}",
        x.shape()
    );
    let [b, h, w, c] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let (oh, ow) = mode
        .out_hw(h, w)
        .map_err(|e| e.context(label.to_string()))?;
    let p = x.precision();
    let x_b = x.dense(label, &[b, h, w, c], p)?;
    let out_b = out.dense(label, &[b, oh, ow, c], p)?;
    let n = b * oh * ow * c;
    ensure!(
        n > 0 && n < u32::MAX as usize && x.numel() < u32::MAX as usize,
        "{label}: {n} outputs are empty or overflow 32-bit indexing"
    );
    let (shader, source) = specialize("resample", SOURCE, &[("act", p)]);
    let kernel = ctx.kernel(&KernelSpec {
        shader,
        source,
        entry: "resample",
        bindings: vec![
            Binding::Uniform,
            Binding::StorageRead,
            Binding::StorageReadWrite,
        ],
    })?;
    let grid = grid_2d(
        (n as u32).div_ceil(WORKGROUP),
        ctx.limits.max_compute_workgroups_per_dimension,
    );
    let params = Params {
        batch: b as u32,
        height: h as u32,
        width: w as u32,
        channels: c as u32,
        out_h: oh as u32,
        out_w: ow as u32,
        mode: mode.code(),
        row_groups: grid[0],
    };
    let uniform = ctx.uniform(&format!("{label} params"), &params);
    let bind_group = kernel.bind_group(&ctx.device, &[(&uniform).into(), x_b, out_b])?;
    Ok(Dispatch {
        label: label.to_string(),
        kernel,
        bind_group,
        workgroups: grid,
        dynamic_strides: vec![],
        // A multiply-add per tap.
        flops: 2 * mode.taps() * n as u64,
        bytes: (p.bytes() * (x.numel() + n)) as u64,
    })
}
