//! Criterion benchmarks of the GPU kernels at small sizes (conv2d, group norm, attention, DDIM
//! update), at the larger shapes the throughput reports of tests/ used to print (conv2d
//! 128→128 32×32 B8, group norm 128ch 32×32 B4, attention 128ch 16×16 B2, DDIM update
//! 16 × 3·32·32 with clipping and thresholding, the q/k/v-sized 1024×128→384 matmul, every
//! variant), and of one sampling step of the bundled MNIST model. Each iteration's time is the
//! GPU time from timestamp queries (one pass per dispatch) where the adapter has them, else host
//! wall-clock per dispatch (see `ddim_wgpu::gpu::profile`). The adapter follows `WGPU_BACKEND`;
//! without one the benchmarks are skipped with a message.
//!
//! `cargo bench --bench gpu_kernels`

// The benchmark module belongs to the `ddim` binary, not the library's API; this bench
// compiles its own copy to reuse the kernel cases.
#[allow(dead_code, unused_imports)]
#[path = "../src/bench/mod.rs"]
mod bench;

use std::time::Duration;

use bench::kernels::{self, KernelCase};
use criterion::{criterion_group, criterion_main, Criterion};
use ddim_wgpu::cpu::ops::Padding;
use ddim_wgpu::gpu::kernels::attention::AttentionShape;
use ddim_wgpu::gpu::kernels::conv2d::{ConvShape, Variant};
use ddim_wgpu::gpu::kernels::ddim_step::{ddim_update, DdimIo, DdimUpdateConfig, NoiseLayout};
use ddim_wgpu::gpu::kernels::group_norm::GroupNormShape;
use ddim_wgpu::gpu::kernels::linear::{matmul, Matmul, MatmulArgs, MatmulOptions, MatmulVariant};
use ddim_wgpu::gpu::plan::{PlanOptions, StepForward, UNetPlan};
use ddim_wgpu::gpu::profile::Profiler;
use ddim_wgpu::gpu::{AdapterChoice, Dispatch, GpuContext, Precision};
use ddim_wgpu::schedule::{PredictionType, X0Limit};

fn context() -> Option<GpuContext> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join("ddim-wgpu-xdg");
        let _ = std::fs::create_dir_all(&dir);
        std::env::set_var("XDG_RUNTIME_DIR", dir);
    }
    match GpuContext::new(&AdapterChoice::default()) {
        Ok(ctx) => {
            eprintln!("gpu_kernels on {}", ctx.describe());
            Some(ctx)
        }
        Err(e) => {
            eprintln!("gpu_kernels: no GPU adapter, skipped ({e:#})");
            None
        }
    }
}

/// Times `iters` runs of `dispatches` as GPU time (summed per-dispatch timestamps).
fn gpu_time(
    ctx: &GpuContext,
    profiler: &Profiler,
    dispatches: &[&Dispatch],
    iters: u64,
) -> Duration {
    let mut ns = 0.0;
    for _ in 0..iters {
        ns += profiler
            .time_each(ctx, dispatches, 0)
            .expect("timing dispatches")
            .iter()
            .sum::<f64>();
    }
    Duration::from_nanos(ns as u64)
}

fn bench_case(c: &mut Criterion, ctx: &GpuContext, profiler: &Profiler, case: &KernelCase) {
    let list: Vec<&Dispatch> = case.dispatches.iter().collect();
    c.bench_function(&case.name, |b| {
        b.iter_custom(|iters| gpu_time(ctx, profiler, &list, iters))
    });
}

fn small_conv() -> ConvShape {
    ConvShape {
        batch: 2,
        src_h: 16,
        src_w: 16,
        c1: 64,
        c2: 0,
        cout: 64,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: Padding::same(1),
        upsample: false,
    }
}

fn gpu_benches(c: &mut Criterion) {
    let Some(ctx) = context() else {
        return;
    };
    let profiler = Profiler::new(&ctx);
    eprintln!("timing: {}", profiler.source().describe());
    for v in Variant::ALL {
        let case = kernels::conv_case(
            &ctx,
            v,
            &format!("conv2d 3x3 64->64 16x16 B2 {v:?}"),
            &small_conv(),
        )
        .expect("conv case");
        bench_case(c, &ctx, &profiler, &case);
    }
    let gn = GroupNormShape {
        batch: 2,
        hw: 16 * 16,
        channels: 64,
        groups: 8,
        eps: 1e-5,
        silu: true,
        precision: Default::default(),
    };
    bench_case(
        c,
        &ctx,
        &profiler,
        &kernels::group_norm_case(&ctx, &gn).expect("group norm case"),
    );
    let attn = AttentionShape::simple(2, 16 * 16, 64, 1, 8, 1e-5);
    bench_case(
        c,
        &ctx,
        &profiler,
        &kernels::attention_case(&ctx, &attn).expect("attention case"),
    );
    bench_case(
        c,
        &ctx,
        &profiler,
        &kernels::ddim_update_case(&ctx, 2, 32 * 32).expect("ddim case"),
    );
    larger_shapes(c, &ctx, &profiler);
    one_step(c, &ctx, &profiler);
}

/// The shapes of the former `*_throughput_*` tests.
fn larger_shapes(c: &mut Criterion, ctx: &GpuContext, profiler: &Profiler) {
    let conv = kernels::burn_conv_shape();
    for v in Variant::ALL {
        let name = format!("conv2d 3x3 128->128 32x32 B8 {v:?}");
        let case = kernels::conv_case(ctx, v, &name, &conv).expect("conv case");
        bench_case(c, ctx, profiler, &case);
    }
    let gn = GroupNormShape {
        batch: 4,
        hw: 32 * 32,
        channels: 128,
        groups: 32,
        eps: 1e-6,
        silu: true,
        precision: Default::default(),
    };
    let case = kernels::group_norm_case(ctx, &gn).expect("group norm case");
    bench_case(c, ctx, profiler, &case);
    let attn = AttentionShape::simple(2, 16 * 16, 128, 1, 32, 1e-6);
    let case = kernels::attention_case(ctx, &attn).expect("attention case");
    bench_case(c, ctx, profiler, &case);
    for limit in [
        X0Limit::Clip(1.5),
        X0Limit::Threshold {
            ratio: 0.93,
            max_value: 4.0,
        },
    ] {
        bench_case(
            c,
            ctx,
            profiler,
            &ddim_with_noise(ctx, 16, 3 * 32 * 32, limit),
        );
    }
    bench_matmul(c, ctx, profiler, 1024, 128, 384);
}

/// One DDIM update (eta > 0: noise read) of `batch` × `per_sample` values under `limit`.
fn ddim_with_noise(
    ctx: &GpuContext,
    batch: usize,
    per_sample: usize,
    limit: X0Limit,
) -> KernelCase {
    let n = batch * per_sample;
    let values = |seed: u64| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    };
    let tensor = |label: &str, seed| {
        ctx.tensor_from(label, &values(seed), &[n], Precision::F32)
            .expect("upload")
    };
    let model_out = tensor("bench ddim eps", 1);
    let sample = tensor("bench ddim sample", 2);
    let noise = tensor("bench ddim noise", 3);
    let row = ddim_wgpu::gpu::kernels::ddim_step::UpdateRow {
        sqrt_alpha_prod_t: 0.5,
        sqrt_one_minus_alpha_prod_t: 0.75f64.sqrt(),
        x0_coef: 0.9,
        eps_coef: 0.3,
        sample_coef: 0.0,
        sigma: 0.1,
    };
    let dispatches = ddim_update(
        ctx,
        &DdimUpdateConfig {
            batch,
            per_sample,
            prediction: PredictionType::Epsilon,
            limit,
            use_clipped_model_output: false,
        },
        &[row],
        NoiseLayout::Rewritten,
        &DdimIo {
            model_out: &model_out,
            noise: Some(&noise),
            sample: &sample,
            x0_out: None,
            first_bad: None,
            guide: None,
        },
    )
    .expect("DDIM update");
    KernelCase {
        name: format!("ddim_update B{batch} x{per_sample} noise {limit:?}"),
        dispatches,
    }
}

/// `y = x Wᵀ` of `rows × inp → out` with every applicable matmul variant.
fn bench_matmul(
    c: &mut Criterion,
    ctx: &GpuContext,
    profiler: &Profiler,
    rows: usize,
    inp: usize,
    out: usize,
) {
    let f32 = Precision::F32;
    let x = ctx
        .tensor_from(
            "bench matmul x",
            &vec![0.5f32; rows * inp],
            &[rows, inp],
            f32,
        )
        .expect("x");
    let w = ctx
        .tensor_from(
            "bench matmul w",
            &vec![0.25f32; out * inp],
            &[out, inp],
            f32,
        )
        .expect("w");
    let y = ctx.tensor("bench matmul y", &[rows, out], f32);
    let wt = w.transpose(0, 1).expect("Wᵀ");
    let args = MatmulArgs {
        a: &x,
        b: &wt,
        bias: None,
        residual: None,
        out: &y,
    };
    let (op, _): (Matmul, _) = Matmul::of(&args, MatmulOptions::default()).expect("op");
    for variant in MatmulVariant::ALL {
        if variant == MatmulVariant::K4 && !op.fits_k4() {
            continue;
        }
        let d = matmul(ctx, variant, &args, MatmulOptions::default()).expect("matmul");
        let case = KernelCase {
            name: format!("linear {rows}x{inp}->{out} {variant:?}"),
            dispatches: vec![d],
        };
        bench_case(c, ctx, profiler, &case);
    }
}

/// One DDIM step of the bundled model at batch 1: the plan's forward and the fused update.
fn one_step(c: &mut Criterion, ctx: &GpuContext, profiler: &Profiler) {
    let pipe = ddim_wgpu::bundled::pipeline().expect("bundled model");
    let plan = UNetPlan::new(
        ctx,
        &pipe.unet,
        &pipe.gpu_weights(ctx).expect("uploading the weights"),
        &[vec![500.0]],
        PlanOptions::default(),
    )
    .expect("compiling the plan");
    let numel = pipe.unet.output.numel();
    let sample = ctx.tensor("bench sample", &[numel], Precision::F32);
    let row = ddim_wgpu::gpu::kernels::ddim_step::UpdateRow {
        sqrt_alpha_prod_t: 0.5,
        sqrt_one_minus_alpha_prod_t: 0.75f64.sqrt(),
        x0_coef: 0.9,
        eps_coef: 0.3,
        sample_coef: 0.0,
        sigma: 0.0,
    };
    let update = ddim_update(
        ctx,
        &DdimUpdateConfig {
            batch: 1,
            per_sample: numel,
            prediction: PredictionType::Epsilon,
            limit: X0Limit::Clip(1.0),
            use_clipped_model_output: false,
        },
        &[row],
        NoiseLayout::Rewritten,
        &DdimIo {
            model_out: plan.output(),
            noise: None,
            sample: &sample,
            x0_out: None,
            first_bad: None,
            guide: None,
        },
    )
    .expect("DDIM update");
    let list: Vec<&Dispatch> = plan.dispatches().iter().chain(&update).collect();
    c.bench_function("one DDIM step, bundled MNIST model, B1", |b| {
        b.iter_custom(|iters| gpu_time(ctx, profiler, &list, iters))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = gpu_benches
}
criterion_main!(benches);
