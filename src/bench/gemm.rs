//! `ddim bench --gemm`: the best matrix-product rate our own kernels reach on an adapter, the
//! ceiling that convolutions and the whole forward are compared against. Every GEMM-capable
//! kernel is tried at a few sizes: the conv2d kernel as a 1×1 convolution (both variants) and
//! the matmul kernels of `linear.wgsl` (both versions).

use anyhow::{Context, Result};
use serde::Serialize;

use super::run::CpuTime;
use super::{gflops, Summary};
use ddim_wgpu::gpu::kernels::conv2d::{self, ConvIo, ConvShape, ConvWeights};
use ddim_wgpu::gpu::kernels::linear::{matmul, MatmulArgs, MatmulOptions, MatmulVariant};
use ddim_wgpu::gpu::profile::Profiler;
use ddim_wgpu::gpu::{Dispatch, GpuContext, GpuTensor, Precision};
use ddim_wgpu::model::unet::Padding;
use ddim_wgpu::Tensor;

/// out[M, N] = A[M, K] · B[K, N].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GemmSize {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl GemmSize {
    pub fn flops(&self) -> u64 {
        2 * (self.m * self.n * self.k) as u64
    }
}

/// The sizes `--gemm` tries: a square product, and the GEMM shapes of the cifar10 U-Net's 3×3
/// convolutions at batch 8 (32×32 with 128 channels; 16×16 with 256 channels).
pub fn default_sizes() -> Vec<GemmSize> {
    vec![
        GemmSize {
            m: 1024,
            n: 1024,
            k: 1024,
        },
        GemmSize {
            m: 8 * 32 * 32,
            n: 128,
            k: 9 * 128,
        },
        GemmSize {
            m: 8 * 16 * 16,
            n: 256,
            k: 9 * 256,
        },
    ]
}

/// A kernel able to compute a plain GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// `conv2d.wgsl` as a 1×1 convolution over a 1×M image with K input channels.
    Conv1x1(conv2d::Variant),
    /// `linear.wgsl` / `linear_k4.wgsl` with B in torch `[N, K]` layout.
    Matmul(MatmulVariant),
}

impl GemmKernel {
    pub const ALL: [GemmKernel; 4] = [
        GemmKernel::Conv1x1(conv2d::Variant::Register),
        GemmKernel::Conv1x1(conv2d::Variant::Tiled),
        GemmKernel::Matmul(MatmulVariant::Strided),
        GemmKernel::Matmul(MatmulVariant::K4),
    ];

    pub fn name(&self) -> String {
        match self {
            Self::Conv1x1(v) => format!("conv2d 1x1 ({v:?})"),
            Self::Matmul(v) => format!("matmul ({v:?})"),
        }
    }
}

/// One measured (kernel, size).
#[derive(Clone, Debug, Serialize)]
pub struct GemmRow {
    pub kernel: String,
    /// The compiled pipeline (`shader::entry`).
    pub pipeline: String,
    #[serde(flatten)]
    pub size: GemmSize,
    pub time_ms: Summary,
    /// From the median time.
    pub gflops: f64,
    /// GFLOP per process CPU-second over the timed runs (Linux): on a CPU adapter the driver's
    /// threads are ours, so this rate barely moves with the machine's load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflop_per_cpu_s: Option<f64>,
}

/// Device buffers and the dispatch of one GEMM; kept alive while timed.
pub struct GemmCase {
    pub dispatch: Dispatch,
    _buffers: Vec<GpuTensor>,
    _weights: Option<ConvWeights>,
}

fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Builds the dispatch computing a GEMM of `size` with `kernel`.
pub fn build(ctx: &GpuContext, kernel: GemmKernel, size: GemmSize) -> Result<GemmCase> {
    let GemmSize { m, n, k } = size;
    let f32 = Precision::F32;
    let a = ctx.tensor_from("gemm A", &pseudo_random(m * k, 1), &[1, 1, m, k], f32)?;
    let out = ctx.tensor("gemm out", &[1, 1, m, n], f32);
    match kernel {
        GemmKernel::Conv1x1(variant) => {
            let w = Tensor::new(vec![n, k, 1, 1], pseudo_random(n * k, 2))?;
            let weights = ConvWeights::upload(ctx, "gemm B", &w, None)?;
            let shape = ConvShape {
                batch: 1,
                src_h: 1,
                src_w: m,
                c1: k,
                c2: 0,
                cout: n,
                kh: 1,
                kw: 1,
                stride: 1,
                pad: Padding::same(0),
                upsample: false,
            };
            let io = ConvIo {
                x_a: &a,
                x_b: None,
                chan_add: None,
                residual: None,
                residual_resample: Default::default(),
                image_div: None,
                out: &out,
                out_scale: 1.0,
            };
            let dispatch = conv2d::conv2d(ctx, variant, "gemm", &shape, &weights, &io)?;
            Ok(GemmCase {
                dispatch,
                _buffers: vec![a, out],
                _weights: Some(weights),
            })
        }
        GemmKernel::Matmul(variant) => {
            // B = Wᵀ of a torch-layout [n, k] weight, as linear layers read it.
            let w = ctx.tensor_from("gemm B", &pseudo_random(n * k, 2), &[n, k], f32)?;
            let args = MatmulArgs {
                a: &a,
                b: &w.transpose(0, 1)?,
                bias: None,
                residual: None,
                out: &out,
            };
            let dispatch = matmul(ctx, variant, &args, MatmulOptions::default())?;
            Ok(GemmCase {
                dispatch,
                _buffers: vec![a, w, out],
                _weights: None,
            })
        }
    }
}

/// Times `kernel` at `size`: `warmup` untimed runs, then `iters` timed runs (one pass each).
pub fn measure(
    ctx: &GpuContext,
    profiler: &Profiler,
    kernel: GemmKernel,
    size: GemmSize,
    warmup: usize,
    iters: usize,
) -> Result<GemmRow> {
    let case =
        build(ctx, kernel, size).with_context(|| format!("{} at {size:?}", kernel.name()))?;
    if warmup > 0 {
        profiler.time_repeated(ctx, &case.dispatch, warmup, 0)?;
    }
    let cpu0 = CpuTime::now();
    let ns = profiler.time_repeated(ctx, &case.dispatch, iters.max(1), 0)?;
    let cpu = CpuTime::since(&cpu0);
    let summary = Summary::of(&ns).context("no timings")?;
    Ok(GemmRow {
        kernel: kernel.name(),
        pipeline: case.dispatch.kernel.label.clone(),
        size,
        time_ms: summary.scaled(1e-6),
        gflops: gflops(size.flops(), summary.median),
        gflop_per_cpu_s: cpu
            .filter(|&c| c > 0.0)
            .map(|c| (size.flops() * ns.len() as u64) as f64 * 1e-9 / c),
    })
}

/// The sweep's result: every row, and the best rate (`gemm_gflops`).
#[derive(Clone, Debug, Serialize)]
pub struct GemmSweep {
    pub gemm_gflops: f64,
    pub best: Option<GemmRow>,
    pub table: Vec<GemmRow>,
}

/// Measures every kernel at every size; `on_row` sees each row as it is measured.
pub fn sweep(
    ctx: &GpuContext,
    profiler: &Profiler,
    kernels: &[GemmKernel],
    sizes: &[GemmSize],
    warmup: usize,
    iters: usize,
    on_row: &mut dyn FnMut(&GemmRow),
) -> Result<GemmSweep> {
    let mut table = Vec::new();
    for &size in sizes {
        for &kernel in kernels {
            let row = measure(ctx, profiler, kernel, size, warmup, iters)?;
            on_row(&row);
            table.push(row);
        }
    }
    let best = table
        .iter()
        .max_by(|a, b| a.gflops.total_cmp(&b.gflops))
        .cloned();
    Ok(GemmSweep {
        gemm_gflops: best.as_ref().map_or(0.0, |b| b.gflops),
        best,
        table,
    })
}
