//! conv2d as an implicit GEMM over NHWC (`shaders/conv2d.wgsl`), with the decoder's nearest 2×
//! upsample and skip concatenation folded into the loader and bias, per-(batch, channel) add,
//! residual add (resampled as it is read where a resnet pools or upsamples its identity path)
//! and a per-image divisor fused into the epilogue. The reference twin is `cpu::ops::conv2d`
//! (+ upsample, concat, add, `cpu::resample`).

use anyhow::{bail, ensure, Context, Result};

use super::resample::Resample;
use crate::gpu::kernel::{Binding, Dispatch, KernelSpec};
use crate::gpu::precision::{specialize, Precision};
use crate::gpu::tensor::{GpuTensor, StepTable};
use crate::gpu::GpuContext;
use crate::model::unet::Padding;
use crate::Tensor;

/// The shader: conv2d.wgsl plus the row kernels that tests/support/conv2d_rows.rs generates into
/// conv2d_rows.wgsl (WGSL declarations may come in any order, so appending is enough).
/// The residual read's filters (resample_taps.wgsl) are appended too.
pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/conv2d.wgsl"),
    "\n",
    include_str!("../../../shaders/conv2d_rows.wgsl"),
    "\n",
    include_str!("../../../shaders/resample_taps.wgsl"),
);

// `Params::flags` bits and the entry points' tile sizes. Each is the WGSL `const` of the same
// name, which tests/shader_contracts.rs checks, so neither side can change alone.
pub const HAS_CHAN_ADD: u32 = 1;
pub const HAS_RESIDUAL: u32 = 2;
pub const IMAGE_DIV: u32 = 4;
pub const REG_TM: u32 = 8;
pub const REG_TNV: u32 = 2;
pub const REG_WG: u32 = 64;
pub const ROW_WG: u32 = 64;
pub const ROWS8_TP: u32 = 8;
pub const ROWS16_TP: u32 = 16;
pub const T_BM: u32 = 64;
pub const T_BNV: u32 = 16;
pub const TL_BM: u32 = 128;

pub use crate::gpu::variants::ConvVariant as Variant;

impl Variant {
    /// The context's forced variant ([`crate::gpu::KernelChoice`]), else the device type's.
    pub fn for_context(ctx: &GpuContext) -> Self {
        ctx.kernels
            .conv
            .unwrap_or_else(|| Self::default_for(ctx.info.device_type))
    }

    /// The variant for a device type: Register on CPU implementations, Tiled on GPUs.
    pub fn default_for(device_type: wgpu::DeviceType) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu => Self::Register,
            _ => Self::Tiled,
        }
    }

    /// The entry point computing `shape`: the register variant has row kernels for 3×3 stride-1
    /// convolutions (most of a U-Net's FLOPs) that reuse input columns across neighbouring
    /// pixels, 16 pixels per invocation on rows of 16 or more, else 8.
    pub(crate) fn entry(self, shape: &ConvShape) -> Entry {
        let row_kernel = shape.kh == 3 && shape.kw == 3 && shape.stride == 1;
        match self {
            Self::Register if row_kernel && shape.out_hw().is_ok_and(|(_, w)| w >= 16) => {
                CONV_ROWS16
            }
            Self::Register if row_kernel => CONV_ROWS8,
            Self::Register => CONV_REG,
            Self::Tiled => CONV_TILED,
            Self::Tiled128 => CONV_TILED128,
        }
    }
}

/// An entry point of the shader and how its workgroups cover the GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: &'static str,
    /// vec4 output columns per workgroup (grid x).
    pub cols: u32,
    /// Work items are segments of this many pixels of one output row (the row kernels), or
    /// single output pixels when None.
    pub row_pixels: Option<u32>,
    /// Work items per workgroup (along grid y, then z).
    pub items_per_group: u32,
}

pub const CONV_REG: Entry = Entry {
    name: "conv_reg",
    cols: REG_TNV,
    row_pixels: None,
    items_per_group: REG_WG * REG_TM,
};
// The generated row kernels give each workgroup one vec4 column (`nv = wid.x`).
pub const CONV_ROWS8: Entry = Entry {
    name: "conv_rows8",
    cols: 1,
    row_pixels: Some(ROWS8_TP),
    items_per_group: ROW_WG,
};
pub const CONV_ROWS16: Entry = Entry {
    name: "conv_rows16",
    cols: 1,
    row_pixels: Some(ROWS16_TP),
    items_per_group: ROW_WG,
};
pub const CONV_TILED: Entry = Entry {
    name: "conv_tiled",
    cols: T_BNV,
    row_pixels: None,
    items_per_group: T_BM,
};
pub const CONV_TILED128: Entry = Entry {
    name: "conv_tiled128",
    cols: T_BNV,
    row_pixels: None,
    items_per_group: TL_BM,
};
/// Every entry point of the shader (tests/shader_contracts.rs checks the list is complete).
pub const ENTRIES: [Entry; 5] = [CONV_REG, CONV_ROWS8, CONV_ROWS16, CONV_TILED, CONV_TILED128];

impl Entry {
    /// Work items along M for `shape`: output pixels, or row segments for the row kernels.
    fn items(&self, shape: &ConvShape) -> u64 {
        match self.row_pixels {
            None => shape.m() as u64,
            Some(seg) => {
                let (oh, ow) = shape.out_hw().unwrap_or((0, 0));
                (shape.batch * oh) as u64 * (ow as u64).div_ceil(seg as u64)
            }
        }
    }
}

pub fn all_specs() -> Vec<KernelSpec> {
    ENTRIES.map(|e| spec(e.name)).to_vec()
}

pub fn spec(entry: &'static str) -> KernelSpec {
    spec_as(entry, Precision::F32)
}

/// The pipeline of `entry` with activations and weights stored as `precision`.
pub fn spec_as(entry: &'static str, precision: Precision) -> KernelSpec {
    let (shader, source) = specialize("conv2d", SOURCE, &[("act", precision)]);
    KernelSpec {
        shader,
        source,
        entry,
        bindings: vec![
            Binding::Uniform,
            Binding::StorageRead,        // x_a
            Binding::StorageRead,        // x_b
            Binding::StorageRead,        // weights, K-major
            Binding::StorageRead,        // bias (Cout padded to 4)
            Binding::StorageReadDynamic, // chan_add: one [B, Cout] slice per step
            Binding::StorageRead,        // residual
            Binding::StorageReadWrite,   // out
        ],
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub src_h: u32,
    pub src_w: u32,
    pub c1: u32,
    pub c2: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub cout: u32,
    pub cout_v: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    pub up_shift: u32,
    pub flags: u32,
    pub out_scale: f32,
    pub m_total: u32,
    pub m_groups_y: u32,
    pub res_h: u32,
    pub res_w: u32,
    pub res_mode: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// The geometry of one convolution. The input is `batch × src_h × src_w × (c1 + c2)` NHWC,
/// split over two buffers when `c2 > 0`, and upsampled 2× (nearest) first when `upsample`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub src_h: usize,
    pub src_w: usize,
    pub c1: usize,
    pub c2: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: Padding,
    pub upsample: bool,
}

impl ConvShape {
    /// The tuning key: everything about one image's shape that can change which variant is
    /// fastest (the batch is not part of it: see `gpu::choices`).
    pub fn key(&self, precision: Precision) -> String {
        let p = &self.pad;
        format!(
            "{}x{}x{}{} -> {} k{}x{} s{} pad {},{},{},{}{} {precision}",
            self.src_h,
            self.src_w,
            self.c1,
            if self.c2 > 0 {
                format!("+{}", self.c2)
            } else {
                String::new()
            },
            self.cout,
            self.kh,
            self.kw,
            self.stride,
            p.top,
            p.bottom,
            p.left,
            p.right,
            if self.upsample { " up2" } else { "" },
        )
    }

    pub fn cin(&self) -> usize {
        self.c1 + self.c2
    }

    /// Input size after the optional upsample.
    pub fn in_hw(&self) -> (usize, usize) {
        let f = if self.upsample { 2 } else { 1 };
        (self.src_h * f, self.src_w * f)
    }

    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let (h, w) = self.in_hw();
        let ph = h + self.pad.top + self.pad.bottom;
        let pw = w + self.pad.left + self.pad.right;
        ensure!(
            self.stride > 0 && ph >= self.kh && pw >= self.kw,
            "conv2d: kernel {}×{} stride {} does not fit the padded input {ph}×{pw}",
            self.kh,
            self.kw,
            self.stride
        );
        Ok((
            (ph - self.kh) / self.stride + 1,
            (pw - self.kw) / self.stride + 1,
        ))
    }

    /// Output pixels (the GEMM's M).
    pub fn m(&self) -> usize {
        let (oh, ow) = self.out_hw().unwrap_or((0, 0));
        self.batch * oh * ow
    }

    /// The GEMM's K.
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.cin()
    }

    pub fn out_len(&self) -> usize {
        self.m() * self.cout
    }

    pub fn flops(&self) -> u64 {
        2 * (self.m() * self.cout * self.k()) as u64
    }

    /// Compulsory traffic in f32: input, weights and output once (plus residual when present).
    pub fn bytes(&self, residual: bool) -> u64 {
        self.bytes_as(residual, Precision::F32)
    }

    /// Compulsory traffic with activations and weights stored as `p`.
    pub fn bytes_as(&self, residual: bool, p: Precision) -> u64 {
        let input = self.batch * self.src_h * self.src_w * self.cin();
        let weights = self.k() * self.cout;
        let out = self.out_len() * if residual { 2 } else { 1 };
        (p.bytes() * (input + weights + out)) as u64
    }
}

fn round4(n: usize) -> usize {
    n.next_multiple_of(4)
}

/// torch `[Cout, Cin, KH, KW]` → K-major `[KH][KW][Cin][Cout4]`, Cout zero-padded to a multiple
/// of 4 so every weight row is whole vec4s.
pub fn transpose_weight(weight: &Tensor) -> Result<Vec<f32>> {
    ensure!(
        weight.shape.len() == 4,
        "conv weight must be [Cout, Cin, KH, KW], got {:?}",
        weight.shape
    );
    let (cout, cin, kh, kw) = weight.nchw();
    let cout4 = round4(cout);
    let mut out = vec![0.0; kh * kw * cin * cout4];
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    let src = ((co * cin + ci) * kh + ky) * kw + kx;
                    let dst = ((ky * kw + kx) * cin + ci) * cout4 + co;
                    out[dst] = weight.data[src];
                }
            }
        }
    }
    Ok(out)
}

/// Weights and bias on the device, in the kernel's layout. The weights are stored as
/// `precision`, which is also what the convolution's activations must be; the bias stays f32.
pub struct ConvWeights {
    pub weight: wgpu::Buffer,
    pub bias: wgpu::Buffer,
    pub precision: Precision,
    pub cout: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
}

impl ConvWeights {
    pub fn upload(
        ctx: &GpuContext,
        label: &str,
        weight: &Tensor,
        bias: Option<&[f32]>,
    ) -> Result<Self> {
        Self::upload_as(ctx, label, weight, bias, Precision::F32)
    }

    /// Uploads with the weights stored as `precision`.
    pub fn upload_as(
        ctx: &GpuContext,
        label: &str,
        weight: &Tensor,
        bias: Option<&[f32]>,
        precision: Precision,
    ) -> Result<Self> {
        let w = transpose_weight(weight).with_context(|| format!("conv {label}"))?;
        let (cout, cin, kh, kw) = weight.nchw();
        let mut b = vec![0.0; round4(cout)];
        if let Some(bias) = bias {
            ensure!(
                bias.len() == cout,
                "conv {label}: bias has {} values for {cout} output channels",
                bias.len()
            );
            b[..cout].copy_from_slice(bias);
        }
        Ok(Self {
            weight: ctx.upload_as(&format!("{label}.weight"), &w, precision),
            bias: ctx.upload(&format!("{label}.bias"), &b),
            precision,
            cout,
            cin,
            kh,
            kw,
        })
    }
}

/// What one convolution reads and writes: NHWC activations stored as the weights' precision
/// ([`ConvWeights::precision`]), the `chan_add` table in f32.
pub struct ConvIo<'a> {
    /// `[B, src_h, src_w, c1]`.
    pub x_a: &'a GpuTensor,
    /// `[B, src_h, src_w, c2]` (the skip connection), when `c2 > 0`.
    pub x_b: Option<&'a GpuTensor>,
    /// A per-step `[B, Cout]` table added per (batch, channel) (a resnet's time projection).
    pub chan_add: Option<&'a StepTable>,
    /// `[B, out_h, out_w, Cout]`, added before `out_scale`; or, with `residual_resample`, what
    /// that filter turns into `[B, out_h, out_w, Cout]` (a resnet's identity path x = Dn(x) or
    /// U(x), read through the filter rather than stored resampled).
    pub residual: Option<&'a GpuTensor>,
    /// How the residual is resampled as it is read ([`Resample::None`] normally).
    pub residual_resample: Resample,
    /// A per-step `[B, 1]` table: the sum is divided by image b's value after `out_scale` (a
    /// fourier skip model's `out / σ`). Excludes `chan_add` (they share a binding).
    pub image_div: Option<&'a StepTable>,
    /// `[B, out_h, out_w, Cout]`.
    pub out: &'a GpuTensor,
    /// Multiplies the sum (diffusers' 1 / output_scale_factor); 1 normally.
    pub out_scale: f32,
}

/// Builds the dispatch computing `io.out` for `shape` with `weights`.
pub fn conv2d(
    ctx: &GpuContext,
    variant: Variant,
    label: &str,
    shape: &ConvShape,
    weights: &ConvWeights,
    io: &ConvIo<'_>,
) -> Result<Dispatch> {
    let (oh, ow) = shape.out_hw()?;
    ensure!(
        weights.cout == shape.cout
            && weights.cin == shape.cin()
            && weights.kh == shape.kh
            && weights.kw == shape.kw,
        "conv2d {label}: weights [{}, {}, {}, {}] do not match shape {shape:?}",
        weights.cout,
        weights.cin,
        weights.kh,
        weights.kw
    );
    ensure!(
        shape.cin() > 0 && shape.cout > 0,
        "conv2d {label}: empty channels"
    );
    ensure!(
        (shape.c2 > 0) == io.x_b.is_some(),
        "conv2d {label}: c2 = {} but x_b {}",
        shape.c2,
        if io.x_b.is_some() { "given" } else { "missing" }
    );
    let (b, h, w, act) = (shape.batch, shape.src_h, shape.src_w, weights.precision);
    let x_a = io.x_a.dense("conv2d x_a", &[b, h, w, shape.c1], act)?;
    let x_b = match io.x_b {
        Some(t) => Some(t.dense("conv2d x_b", &[b, h, w, shape.c2], act)?),
        None => None,
    };
    let out_shape = [b, oh, ow, shape.cout];
    let out = io.out.dense("conv2d out", &out_shape, act)?;
    let (res_h, res_w) = match (io.residual, io.residual_resample) {
        (_, Resample::None) => (oh, ow),
        (Some(t), mode) => {
            ensure!(
                t.rank() == 4,
                "conv2d {label}: the residual {:?} is not NHWC",
                t.shape()
            );
            let (rh, rw) = (t.shape()[1], t.shape()[2]);
            ensure!(
                mode.out_hw(rh, rw)? == (oh, ow),
                "conv2d {label}: {mode:?} of a {rh}×{rw} residual is not the {oh}×{ow} output"
            );
            (rh, rw)
        }
        (None, mode) => bail!("conv2d {label}: {mode:?} of a residual that is not there"),
    };
    let residual = match io.residual {
        Some(t) => Some(t.dense("conv2d residual", &[b, res_h, res_w, shape.cout], act)?),
        None => None,
    };
    ensure!(
        io.chan_add.is_none() || io.image_div.is_none(),
        "conv2d {label}: a channel table and an image divisor share one binding"
    );
    let src_pixels = b * h * w;
    let largest = (src_pixels * shape.cin())
        .max(shape.out_len())
        .max(b * res_h * res_w * shape.cout)
        .max(shape.k() * round4(shape.cout));
    ensure!(
        ((largest * 4) as u64) <= ctx.max_binding_bytes() && largest < u32::MAX as usize,
        "conv2d {label}: a {largest}-element binding exceeds the adapter's limit \
         ({} bytes); split the batch",
        ctx.max_binding_bytes()
    );

    let entry = variant.entry(shape);
    let cout_v = round4(shape.cout) / 4;
    let m = shape.m();
    let m_groups = entry.items(shape).div_ceil(entry.items_per_group as u64) as u32;
    let max_dim = ctx.limits.max_compute_workgroups_per_dimension;
    let (gy, gz) = if m_groups <= max_dim {
        (m_groups.max(1), 1)
    } else {
        (max_dim, m_groups.div_ceil(max_dim))
    };
    let mut flags = 0;
    if io.chan_add.is_some() {
        flags |= HAS_CHAN_ADD;
    }
    if io.residual.is_some() {
        flags |= HAS_RESIDUAL;
    }
    if io.image_div.is_some() {
        flags |= IMAGE_DIV;
    }
    let params = Params {
        batch: shape.batch as u32,
        src_h: shape.src_h as u32,
        src_w: shape.src_w as u32,
        c1: shape.c1 as u32,
        c2: shape.c2 as u32,
        out_h: oh as u32,
        out_w: ow as u32,
        cout: shape.cout as u32,
        cout_v: cout_v as u32,
        kh: shape.kh as u32,
        kw: shape.kw as u32,
        stride: shape.stride as u32,
        pad_top: shape.pad.top as u32,
        pad_left: shape.pad.left as u32,
        up_shift: shape.upsample as u32,
        flags,
        out_scale: io.out_scale,
        m_total: m as u32,
        m_groups_y: gy,
        res_h: res_h as u32,
        res_w: res_w as u32,
        res_mode: io.residual_resample.code(),
        _pad0: 0,
        _pad1: 0,
    };

    let kernel = ctx.kernel(&spec_as(entry.name, act))?;
    let uniform = ctx.uniform(&format!("{label} params"), &params);
    // Unused inputs still need a binding; a tiny buffer that is never read stands in.
    let unused = ctx.placeholder();
    let (chan, chan_stride) = match (io.chan_add, io.image_div) {
        (Some(t), _) => {
            ensure!(
                t.batch() == b && t.width() == shape.cout,
                "conv2d {label}: chan_add table is [{}, {}] per step, needs [{b}, {}]",
                t.batch(),
                t.width(),
                shape.cout
            );
            (t.step_binding(), t.stride_bytes())
        }
        (None, Some(t)) => {
            ensure!(
                t.batch() == b && t.width() == 1,
                "conv2d {label}: the image divisor table is [{}, {}] per step, needs [{b}, 1]",
                t.batch(),
                t.width()
            );
            (t.step_binding(), t.stride_bytes())
        }
        (None, None) => (unused.into(), 0),
    };
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[
            (&uniform).into(),
            x_a,
            x_b.unwrap_or(unused.into()),
            (&weights.weight).into(),
            (&weights.bias).into(),
            chan,
            residual.unwrap_or(unused.into()),
            out,
        ],
    )?;
    Ok(Dispatch {
        label: label.to_string(),
        kernel,
        bind_group,
        workgroups: [(cout_v as u32).div_ceil(entry.cols), gy, gz],
        dynamic_strides: vec![chan_stride],
        // A resampled residual costs a multiply-add per tap, and is read at its stored size.
        flops: shape.flops()
            + match (io.residual, io.residual_resample) {
                (Some(_), Resample::None) | (None, _) => 0,
                (Some(_), mode) => 2 * mode.taps() * shape.out_len() as u64,
            },
        bytes: shape.bytes_as(false, act)
            + (act.bytes() * io.residual.map_or(0, |_| b * res_h * res_w * shape.cout)) as u64,
    })
}
