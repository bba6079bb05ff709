//! Kernel micro-benchmarks at fixed shapes: a convolution, group norm, attention block and DDIM
//! update built from random data, timed dispatch by dispatch. Also lists the distinct
//! convolution shapes of a U-Net so each can be timed as the forward would run it.

use anyhow::{Context, Result};
use serde::Serialize;

use super::report::KernelRow;
use super::{gbps, gflops, Summary};
use ddim_wgpu::gpu::choices::Choices;
use ddim_wgpu::gpu::kernels::attention::{
    attention_block, AttentionParamsHost, AttentionScratch, AttentionShape, AttentionWeights,
};
use ddim_wgpu::gpu::kernels::conv2d::{self, ConvIo, ConvShape, ConvWeights};
use ddim_wgpu::gpu::kernels::ddim_step::{
    ddim_update, DdimIo, DdimUpdateConfig, NoiseLayout, UpdateRow,
};
use ddim_wgpu::gpu::kernels::group_norm::{
    group_norm, GroupNormIo, GroupNormScratch, GroupNormShape,
};
use ddim_wgpu::gpu::profile::Profiler;
use ddim_wgpu::gpu::{Dispatch, GpuContext, Precision};
use ddim_wgpu::model::unet::Op;
use ddim_wgpu::model::unet::Padding;
use ddim_wgpu::model::UNet;
use ddim_wgpu::schedule::{PredictionType, X0Limit};
use ddim_wgpu::Tensor;

/// The dispatches of one operation, ready to time; the buffers live as long as the bind groups.
pub struct KernelCase {
    pub name: String,
    pub dispatches: Vec<Dispatch>,
}

impl KernelCase {
    pub fn flops(&self) -> u64 {
        self.dispatches.iter().map(|d| d.flops).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.dispatches.iter().map(|d| d.bytes).sum()
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// The convolution benchmarked against burn on lavapipe: 3×3, 128 → 128 channels, 32×32,
/// batch 8, padding 1 (burn 0.22's WGSL conv2d reached 6.3 GFLOP/s here).
pub fn burn_conv_shape() -> ConvShape {
    ConvShape {
        batch: 8,
        src_h: 32,
        src_w: 32,
        c1: 128,
        c2: 0,
        cout: 128,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: Padding::same(1),
        upsample: false,
    }
}

/// One convolution of `shape` with random input and weights.
pub fn conv_case(
    ctx: &GpuContext,
    variant: conv2d::Variant,
    name: &str,
    shape: &ConvShape,
) -> Result<KernelCase> {
    let (b, h, w) = (shape.batch, shape.src_h, shape.src_w);
    let input = |label: &str, c: usize, seed| {
        ctx.tensor_from(
            label,
            &pseudo_random(b * h * w * c, seed),
            &[b, h, w, c],
            Precision::F32,
        )
    };
    let x_a = input("bench conv x_a", shape.c1, 1)?;
    let x_b = match shape.c2 {
        0 => None,
        c2 => Some(input("bench conv x_b", c2, 2)?),
    };
    let w = Tensor::new(
        vec![shape.cout, shape.cin(), shape.kh, shape.kw],
        pseudo_random(shape.cout * shape.k(), 3),
    )?;
    let bias = pseudo_random(shape.cout, 4);
    let weights = ConvWeights::upload(ctx, name, &w, Some(&bias))?;
    let (oh, ow) = shape.out_hw()?;
    let out = ctx.tensor("bench conv out", &[b, oh, ow, shape.cout], Precision::F32);
    let io = ConvIo {
        x_a: &x_a,
        x_b: x_b.as_ref(),
        chan_add: None,
        residual: None,
        residual_resample: Default::default(),
        image_div: None,
        out: &out,
        out_scale: 1.0,
    };
    let d = conv2d::conv2d(ctx, variant, name, shape, &weights, &io)?;
    Ok(KernelCase {
        name: name.to_string(),
        dispatches: vec![d],
    })
}

/// Group norm (+ SiLU when `shape.silu`) with random input.
pub fn group_norm_case(ctx: &GpuContext, shape: &GroupNormShape) -> Result<KernelCase> {
    let n = shape.numel();
    let dims = [shape.batch, shape.hw, shape.channels];
    let f32 = Precision::F32;
    let x = ctx.tensor_from("bench gn x", &pseudo_random(n, 5), &dims, f32)?;
    let c = [shape.channels];
    let gamma = ctx.tensor_from("bench gn gamma", &vec![1.0f32; c[0]], &c, f32)?;
    let beta = ctx.tensor_from("bench gn beta", &vec![0.0f32; c[0]], &c, f32)?;
    let y = ctx.tensor("bench gn y", &dims, f32);
    let scratch = GroupNormScratch::new(ctx, &[*shape]);
    let io = GroupNormIo {
        x: &x,
        gamma: &gamma,
        beta: &beta,
        y: &y,
    };
    let combine = Choices::fixed(ctx).group_norm(shape);
    let dispatches = group_norm(ctx, shape, combine, &scratch, &io)?;
    Ok(KernelCase {
        name: format!(
            "group_norm{} B{} {}px {}ch",
            if shape.silu { "+silu" } else { "" },
            shape.batch,
            shape.hw,
            shape.channels
        ),
        dispatches,
    })
}

/// A whole attention block with random weights.
pub fn attention_case(ctx: &GpuContext, shape: &AttentionShape) -> Result<KernelCase> {
    let (c, d) = (shape.channels, shape.inner());
    let dims = [shape.batch, shape.tokens, c];
    let x = ctx.tensor_from(
        "bench attention x",
        &pseudo_random(shape.batch * shape.tokens * c, 6),
        &dims,
        Precision::F32,
    )?;
    let out = ctx.tensor("bench attention out", &dims, Precision::F32);
    let norm_len = if shape.norm.is_some() { c } else { 0 };
    let scale = 1.0 / (c as f32).sqrt();
    let wq: Vec<f32> = pseudo_random(d * c, 7).iter().map(|v| v * scale).collect();
    let wk: Vec<f32> = pseudo_random(d * c, 8).iter().map(|v| v * scale).collect();
    let wv: Vec<f32> = pseudo_random(d * c, 9).iter().map(|v| v * scale).collect();
    let wo: Vec<f32> = pseudo_random(c * d, 10).iter().map(|v| v * scale).collect();
    let ones = vec![1.0f32; norm_len];
    let zeros = vec![0.0f32; norm_len];
    let (bd, bc) = (vec![0.0f32; d], vec![0.0f32; c]);
    let host = AttentionParamsHost {
        gamma: &ones,
        beta: &zeros,
        wq: &wq,
        bq: &bd,
        wk: &wk,
        bk: &bd,
        wv: &wv,
        bv: &bd,
        wo: &wo,
        bo: &bc,
    };
    let weights = AttentionWeights::upload(ctx, shape, &host)?;
    let scratch = AttentionScratch::new(ctx, shape);
    let choices = Choices::fixed(ctx);
    let dispatches = attention_block(ctx, shape, &weights, &scratch, &choices, (&x, &out), None)?;
    Ok(KernelCase {
        name: format!(
            "attention B{} {} tokens {}ch {} head(s)",
            shape.batch, shape.tokens, c, shape.heads
        ),
        dispatches,
    })
}

/// One DDIM update (eta 0, clipping at 1) of `batch` samples of `per_sample` values.
pub fn ddim_update_case(ctx: &GpuContext, batch: usize, per_sample: usize) -> Result<KernelCase> {
    let n = batch * per_sample;
    let f32 = Precision::F32;
    let model_out = ctx.tensor_from("bench ddim eps", &pseudo_random(n, 11), &[n], f32)?;
    let sample = ctx.tensor_from("bench ddim sample", &pseudo_random(n, 12), &[n], f32)?;
    let row = UpdateRow {
        sqrt_alpha_prod_t: 0.5,
        sqrt_one_minus_alpha_prod_t: 0.75f64.sqrt(),
        x0_coef: 0.9,
        eps_coef: 0.3,
        sample_coef: 0.0,
        sigma: 0.0,
    };
    let cfg = DdimUpdateConfig {
        batch,
        per_sample,
        prediction: PredictionType::Epsilon,
        limit: X0Limit::Clip(1.0),
        use_clipped_model_output: false,
    };
    let bufs = DdimIo {
        model_out: &model_out,
        noise: None,
        sample: &sample,
        x0_out: None,
        first_bad: None,
        guide: None,
    };
    let dispatches = ddim_update(ctx, &cfg, &[row], NoiseLayout::Rewritten, &bufs)?;
    Ok(KernelCase {
        name: format!("ddim_update B{batch} x{per_sample}"),
        dispatches,
    })
}

/// A convolution of the U-Net as the forward runs it, with the number of times it occurs.
#[derive(Clone, Debug)]
pub struct ModelConv {
    /// The first layer (diffusers module path) with this shape.
    pub layer: String,
    pub shape: ConvShape,
    pub count: usize,
}

fn conv_shape(
    batch: usize,
    src: (usize, usize),
    c1: usize,
    c2: usize,
    c: &ddim_wgpu::model::unet::Conv2d,
    upsample: bool,
) -> ConvShape {
    ConvShape {
        batch,
        src_h: src.0,
        src_w: src.1,
        c1,
        c2,
        cout: c.out_channels,
        kh: c.kernel,
        kw: c.kernel,
        stride: c.stride,
        pad: c.padding,
        upsample,
    }
}

/// Every distinct convolution of `unet` at `batch`, in first-use order, with the decoder's
/// upsample and skip concatenation folded into the loader as the conv2d kernel supports.
pub fn model_convs(unet: &UNet, batch: usize) -> Vec<ModelConv> {
    let mut out: Vec<ModelConv> = Vec::new();
    let mut add = |layer: &str, shape: ConvShape| match out.iter_mut().find(|m| m.shape == shape) {
        Some(m) => m.count += 1,
        None => out.push(ModelConv {
            layer: layer.to_string(),
            shape,
            count: 1,
        }),
    };
    // A concat or an upsample is folded into the next convolution(s).
    let mut concat: Option<(usize, usize)> = None;
    let mut upsample_from: Option<(usize, usize)> = None;
    for l in &unet.layers {
        let hw = (l.input.h, l.input.w);
        match &l.op {
            Op::ConcatSkip { .. } => {
                let skip = l.output.c - l.input.c;
                concat = Some((l.input.c, skip));
            }
            Op::UpsampleNearest2x => upsample_from = Some(hw),
            Op::Conv(c) => {
                let (src, up) = match upsample_from.take() {
                    Some(src) => (src, true),
                    None => (hw, false),
                };
                add(&l.name, conv_shape(batch, src, c.in_channels, 0, c, up));
            }
            Op::Resnet(r) => {
                let (c1, c2) = concat.take().unwrap_or((r.in_channels, 0));
                add(
                    &format!("{}.conv1", l.name),
                    conv_shape(batch, hw, c1, c2, &r.conv1, false),
                );
                add(
                    &format!("{}.conv2", l.name),
                    conv_shape(
                        batch,
                        (l.output.h, l.output.w),
                        r.out_channels,
                        0,
                        &r.conv2,
                        false,
                    ),
                );
                if let Some(s) = &r.shortcut {
                    add(
                        &format!("{}.shortcut", l.name),
                        conv_shape(batch, hw, c1, c2, s, false),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// Timings of one case: per dispatch (median over iterations) and for the whole case.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub name: String,
    /// Sum of the dispatches' medians, milliseconds.
    pub time_ms: f64,
    pub flops: u64,
    pub bytes: u64,
    pub gflops: f64,
    pub gbps: f64,
    /// Spread of the whole case's time over iterations, milliseconds.
    pub spread_ms: Summary,
    /// GFLOP per process CPU-second over the timed runs (see `GemmRow::gflop_per_cpu_s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflop_per_cpu_s: Option<f64>,
    pub dispatches: Vec<KernelRow>,
}

/// Times `case`: `warmup` untimed runs, then `iters` runs of its dispatches, one pass each.
pub fn measure(
    ctx: &GpuContext,
    profiler: &Profiler,
    case: &KernelCase,
    warmup: usize,
    iters: usize,
) -> Result<CaseResult> {
    let list: Vec<&Dispatch> = case.dispatches.iter().collect();
    for _ in 0..warmup {
        profiler.time_each(ctx, &list, 0)?;
    }
    let mut runs = Vec::with_capacity(iters);
    let cpu0 = super::run::CpuTime::now();
    for _ in 0..iters.max(1) {
        runs.push(profiler.time_each(ctx, &list, 0)?);
    }
    let cpu = super::run::CpuTime::since(&cpu0);
    let medians = super::report::median_per_dispatch(&runs);
    let totals: Vec<f64> = runs.iter().map(|r| r.iter().sum()).collect();
    let spread = Summary::of(&totals).context("no timings")?;
    let described: Vec<(String, String, u64, u64)> = case
        .dispatches
        .iter()
        .map(|d| (d.label.clone(), d.kernel.label.clone(), d.flops, d.bytes))
        .collect();
    let (rows, _) = super::report::kernel_rows(&described, &medians);
    let ns: f64 = medians.iter().sum();
    Ok(CaseResult {
        name: case.name.clone(),
        time_ms: ns / 1e6,
        flops: case.flops(),
        bytes: case.bytes(),
        gflops: gflops(case.flops(), ns),
        gbps: gbps(case.bytes(), ns),
        spread_ms: spread.scaled(1e-6),
        gflop_per_cpu_s: cpu
            .filter(|&c| c > 0.0)
            .map(|c| (case.flops() * runs.len() as u64) as f64 * 1e-9 / c),
        dispatches: rows,
    })
}
