//! Group norm (+ fused SiLU) on the GPU against `cpu::ops::group_norm` (+ `silu`), NHWC vs NCHW.

mod common;

use std::time::Instant;

use ddim_wgpu::cpu::ops;
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::group_norm::{group_norm, GroupNormScratch, GroupNormShape};
use ddim_wgpu::Tensor;

struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    groups: usize,
    silu: bool,
}

fn check(case: &Case, seed: u64) {
    let Case {
        n,
        c,
        h,
        w,
        groups,
        silu,
    } = *case;
    // A large common offset makes a naive E[x²] − E[x]² variance fail; the two-pass/Chan path must not.
    let x: Vec<f32> = common::random(n * c * h * w, seed)
        .iter()
        .map(|v| 3.0 * v + 20.0)
        .collect();
    let gamma: Vec<f32> = common::random(c, seed + 1)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let beta = common::random(c, seed + 2);
    let eps = 1e-6;
    let xt = Tensor::new(vec![n, c, h, w], x.clone()).unwrap();
    let mut want = ops::group_norm(&xt, groups, &gamma, &beta, eps);
    if silu {
        want = ops::silu(&want);
    }
    let want = common::nchw_to_nhwc(&want.data, n, c, h, w);
    let x_nhwc = common::nchw_to_nhwc(&x, n, c, h, w);
    let shape = GroupNormShape {
        batch: n,
        hw: h * w,
        channels: c,
        groups,
        eps,
        silu,
    };
    let label = format!("group norm {n}x{c}x{h}x{w} groups {groups} silu {silu}");
    common::for_each_backend(|backend, ctx| {
        let xb = ctx.upload("x", &x_nhwc);
        let gb = ctx.upload("gamma", &gamma);
        let bb = ctx.upload("beta", &beta);
        let yb = ctx.poisoned("y", x.len());
        let scratch = GroupNormScratch::new(ctx, &[shape]);
        let d = group_norm(ctx, &shape, &scratch, &xb, &gb, &bb, &yb).expect("building");
        run_dispatches(ctx, &d, 0).expect("running");
        let got = ctx.read_f32(&yb, x.len()).expect("reading back");
        let rel = common::assert_close(&format!("{label} on {backend}"), &got, &want, 1e-5);
        let (max_abs, _) = ddim_wgpu::tensor::max_abs_diff(&got, &want);
        eprintln!("{label} on {backend}: rel L2 {rel:.2e}, max abs {max_abs:.2e}");
    });
}

#[test]
fn group_norm_awkward_shapes() {
    let cases = [
        // groups > 1, odd H and W, batch 3, 3 channels per group (not a multiple of 4).
        Case {
            n: 3,
            c: 12,
            h: 5,
            w: 7,
            groups: 4,
            silu: false,
        },
        Case {
            n: 3,
            c: 12,
            h: 5,
            w: 7,
            groups: 4,
            silu: true,
        },
        // One channel per group, a single pixel.
        Case {
            n: 2,
            c: 6,
            h: 1,
            w: 1,
            groups: 6,
            silu: true,
        },
        // One group over odd channels; spatial large enough for many stats chunks (33·31 px).
        Case {
            n: 3,
            c: 5,
            h: 33,
            w: 31,
            groups: 1,
            silu: true,
        },
        // The model's usual configuration: 32 groups.
        Case {
            n: 2,
            c: 64,
            h: 9,
            w: 9,
            groups: 32,
            silu: true,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        check(case, 100 + 10 * i as u64);
    }
}

/// Prints the effective bandwidth of the three passes at a U-Net-like shape (not an assertion).
#[test]
fn group_norm_throughput_report() {
    let (n, hw, c, groups) = (4usize, 32 * 32, 128usize, 32usize);
    let x = common::random(n * hw * c, 7);
    common::for_each_backend(|backend, ctx| {
        let shape = GroupNormShape {
            batch: n,
            hw,
            channels: c,
            groups,
            eps: 1e-6,
            silu: true,
        };
        let xb = ctx.upload("x", &x);
        let gb = ctx.upload("gamma", &vec![1.0f32; c]);
        let bb = ctx.upload("beta", &vec![0.0f32; c]);
        let yb = ctx.poisoned("y", x.len());
        let scratch = GroupNormScratch::new(ctx, &[shape]);
        let d = group_norm(ctx, &shape, &scratch, &xb, &gb, &bb, &yb).unwrap();
        run_dispatches(ctx, &d, 0).unwrap();
        ctx.wait_idle().unwrap();
        let reps = 5;
        let t0 = Instant::now();
        for _ in 0..reps {
            run_dispatches(ctx, &d, 0).unwrap();
        }
        ctx.wait_idle().unwrap();
        let secs = t0.elapsed().as_secs_f64() / reps as f64;
        for one in &d {
            let t0 = Instant::now();
            for _ in 0..reps {
                run_dispatches(ctx, std::slice::from_ref(one), 0).unwrap();
            }
            ctx.wait_idle().unwrap();
            let s = t0.elapsed().as_secs_f64() / reps as f64;
            eprintln!("  {}: {:.3} ms", one.label, s * 1e3);
        }
        // Compulsory traffic: read x twice (stats, apply) and write y once.
        let gbs = (3 * x.len() * 4) as f64 / secs / 1e9;
        eprintln!(
            "group norm+silu {n}x{c}x32x32 on {backend}: {:.3} ms, {gbs:.2} GB/s",
            secs * 1e3
        );
    });
}
