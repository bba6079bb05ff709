//! The strided matmul kernel against `cpu::ops::linear` (+ `silu`, + residual), and a batched
//! strided product against a plain triple loop.

mod common;

use ddim_wgpu::cpu::ops;
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::linear::{
    matmul, matmul_with, Matmul, MatmulBuffers, MatmulVariant, Strides,
};
use ddim_wgpu::Tensor;

#[derive(Clone, Copy)]
struct Case {
    rows: usize,
    inp: usize,
    out: usize,
    bias: bool,
    residual: bool,
    silu_in: bool,
    silu_out: bool,
}

fn reference(case: &Case, x: &[f32], w: &[f32], b: &[f32], r: &[f32]) -> Vec<f32> {
    let mut xt = Tensor::new(vec![case.rows, case.inp], x.to_vec()).unwrap();
    if case.silu_in {
        xt = ops::silu(&xt);
    }
    let wt = Tensor::new(vec![case.out, case.inp], w.to_vec()).unwrap();
    let mut y = ops::linear(&xt, &wt, case.bias.then_some(b));
    if case.silu_out {
        y = ops::silu(&y);
    }
    if case.residual {
        for (v, r) in y.data.iter_mut().zip(r) {
            *v += r;
        }
    }
    y.data
}

/// Every variant that applies to `op` (the vec4 one needs k-contiguous, 4-aligned operands).
fn variants(op: &Matmul) -> Vec<MatmulVariant> {
    MatmulVariant::ALL
        .into_iter()
        .filter(|&v| v != MatmulVariant::K4 || op.fits_k4())
        .collect()
}

#[test]
fn linear_matches_cpu_reference() {
    let cases = [
        // Nothing a multiple of 4 or of the 64-wide tile.
        Case {
            rows: 7,
            inp: 13,
            out: 10,
            bias: true,
            residual: false,
            silu_in: false,
            silu_out: false,
        },
        // The time-embedding MLP: linear_1 then SiLU, linear_2; and a resnet's time_emb_proj(silu(emb)).
        Case {
            rows: 3,
            inp: 32,
            out: 128,
            bias: true,
            residual: false,
            silu_in: false,
            silu_out: true,
        },
        Case {
            rows: 3,
            inp: 128,
            out: 70,
            bias: true,
            residual: false,
            silu_in: true,
            silu_out: false,
        },
        // An attention output projection with the residual fused, rows spanning several tiles.
        Case {
            rows: 3 * 45,
            inp: 33,
            out: 33,
            bias: true,
            residual: true,
            silu_in: false,
            silu_out: false,
        },
        Case {
            rows: 130,
            inp: 5,
            out: 67,
            bias: false,
            residual: true,
            silu_in: true,
            silu_out: true,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let seed = 1000 + 10 * i as u64;
        let x: Vec<f32> = common::random(case.rows * case.inp, seed)
            .iter()
            .map(|v| 3.0 * v)
            .collect();
        let w = common::random(case.out * case.inp, seed + 1);
        let b = common::random(case.out, seed + 2);
        let r = common::random(case.rows * case.out, seed + 3);
        let want = reference(case, &x, &w, &b, &r);
        let label = format!(
            "linear {}x{}->{} bias {} res {} silu in {} out {}",
            case.rows, case.inp, case.out, case.bias, case.residual, case.silu_in, case.silu_out
        );
        common::for_each_backend(|backend, ctx| {
            let (xb, wb, bb, rb) = (
                ctx.upload("x", &x),
                ctx.upload("w", &w),
                ctx.upload("b", &b),
                ctx.upload("r", &r),
            );
            let yb = ctx.poisoned("y", want.len());
            let mut op = Matmul::linear(case.rows, case.inp, case.out);
            op.silu_in = case.silu_in;
            op.silu_out = case.silu_out;
            let bufs = MatmulBuffers {
                a: &xb,
                b: &wb,
                bias: case.bias.then_some(&bb),
                residual: case.residual.then_some(&rb),
                out: &yb,
            };
            for variant in variants(&op) {
                let yb = ctx.poisoned("y", want.len());
                let bufs = MatmulBuffers { out: &yb, ..bufs };
                let d = matmul_with(ctx, &op, &bufs, variant).expect("building");
                run_dispatches(ctx, &[d], 0).expect("running");
                let got = ctx.read_f32(&yb, want.len()).unwrap();
                let what = format!("{label} {variant:?} on {backend}");
                let rel = common::assert_close(&what, &got, &want, common::KERNEL_TOL);
                eprintln!("{what}: rel L2 {rel:.2e}");
            }
        });
    }
}

/// z = (outer, inner) batches with offsets and a transposed operand, as attention uses them.
#[test]
fn batched_strided_product_matches_loops() {
    let (outer, inner, m, n, k) = (3usize, 2usize, 37usize, 19usize, 11usize);
    // A: [outer][m][inner][k] (row stride inner·k); B read transposed from [outer][inner][n][k].
    let a_off = 5;
    let a = common::random(a_off + outer * m * inner * k, 1);
    let b = common::random(outer * inner * n * k, 2);
    let c_len = outer * inner * m * n;
    let mut want = vec![0.0f32; c_len];
    let alpha = 0.37f32;
    for zo in 0..outer {
        for zi in 0..inner {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0.0f64;
                    for kk in 0..k {
                        let av = a[a_off + zo * m * inner * k + i * inner * k + zi * k + kk];
                        let bv = b[((zo * inner + zi) * n + j) * k + kk];
                        acc += av as f64 * bv as f64;
                    }
                    want[((zo * inner + zi) * m + i) * n + j] = alpha * acc as f32;
                }
            }
        }
    }
    let op = Matmul {
        m,
        n,
        k,
        batch: outer * inner,
        inner_count: inner,
        a: Strides {
            offset: a_off,
            row: inner * k,
            col: 1,
            outer: m * inner * k,
            inner: k,
        },
        b: Strides {
            offset: 0,
            row: 1,
            col: k,
            outer: inner * n * k,
            inner: n * k,
        },
        c: Strides {
            offset: 0,
            row: n,
            col: 1,
            outer: inner * m * n,
            inner: m * n,
        },
        alpha,
        out_scale: 1.0,
        silu_in: false,
        silu_out: false,
        bias_per_row: false,
    };
    common::for_each_backend(|backend, ctx| {
        let (ab, bb) = (ctx.upload("a", &a), ctx.upload("b", &b));
        let cb = ctx.poisoned("c", c_len);
        let bufs = MatmulBuffers {
            a: &ab,
            b: &bb,
            bias: None,
            residual: None,
            out: &cb,
        };
        for variant in variants(&op) {
            let cb = ctx.poisoned("c", c_len);
            let bufs = MatmulBuffers { out: &cb, ..bufs };
            let d = matmul_with(ctx, &op, &bufs, variant).unwrap();
            run_dispatches(ctx, &[d], 0).unwrap();
            let got = ctx.read_f32(&cb, c_len).unwrap();
            let what = format!("batched strided product {variant:?} on {backend}");
            common::assert_close(&what, &got, &want, common::KERNEL_TOL);
        }
    });
}

#[test]
fn mismatched_buffers_are_errors() {
    common::for_each_backend(|_, ctx| {
        let small = ctx.upload("small", &[0.0f32; 4]);
        let out = ctx.poisoned("out", 100);
        let op = Matmul::linear(10, 10, 10);
        let bufs = MatmulBuffers {
            a: &small,
            b: &small,
            bias: None,
            residual: None,
            out: &out,
        };
        let err = matmul(ctx, &op, &bufs)
            .err()
            .expect("undersized A must fail");
        assert!(format!("{err:#}").contains("A holds"), "{err:#}");
    });
}

/// The precomputed time-embedding MLP and every resnet's `time_emb_proj(silu(emb))` for all
/// (step, image) rows against the CPU ops, on a random-weight MNIST-size model.
#[test]
fn time_embedding_tables_match_cpu() {
    use ddim_wgpu::gpu::kernels::time_embedding::{time_embedding, time_projection};
    use ddim_wgpu::model::unet::Op;
    use ddim_wgpu::model::{UNet, UNet2DConfig, Weights};

    let config = UNet2DConfig::mnist_like();
    let unet = UNet::new(&config, 32, 32).unwrap();
    let weights = Weights::random(&config, 5).unwrap();
    // 4 steps × batch 3, per-image timesteps including 0 and 999.
    let timesteps: Vec<Vec<f32>> = vec![
        vec![999.0, 998.0, 500.0],
        vec![749.0, 1.0, 0.0],
        vec![499.0, 250.0, 17.0],
        vec![0.0, 999.0, 333.0],
    ];
    let te = &unet.time;
    let flat: Vec<f32> = timesteps.concat();
    let lin = |t: &Tensor, l: &ddim_wgpu::model::unet::Linear| {
        let w = weights.get(&l.weight).unwrap();
        ops::linear(t, w, Some(weights.slice(&l.bias).unwrap()))
    };
    let sinus = ops::timestep_embedding(&flat, te.proj_dim, te.flip_sin_to_cos, te.freq_shift);
    let emb = lin(&ops::silu(&lin(&sinus, &te.linear_1)), &te.linear_2);
    let resnets: Vec<_> = unet
        .layers
        .iter()
        .filter_map(|l| match &l.op {
            Op::Resnet(r) => Some(r.time_emb_proj.clone()),
            _ => None,
        })
        .collect();
    assert!(resnets.len() > 3);
    common::for_each_backend(|backend, ctx| {
        let uploaded = ddim_wgpu::gpu::GpuWeights::upload(ctx, &unet, &weights).unwrap();
        let (mut dispatches, table) = time_embedding(ctx, te, &uploaded, &timesteps).unwrap();
        let mut projections = vec![];
        for p in &resnets {
            let (d, t) = time_projection(ctx, p, &uploaded, &table).unwrap();
            dispatches.push(d);
            projections.push(t);
        }
        run_dispatches(ctx, &dispatches, 0).unwrap();
        let got_emb: Vec<f32> = table.read(ctx).unwrap().concat();
        common::assert_close(
            &format!("time embedding on {backend}"),
            &got_emb,
            &emb.data,
            common::KERNEL_TOL,
        );
        let silu_emb = ops::silu(&emb);
        let mut worst = 0.0f64;
        for (p, t) in resnets.iter().zip(&projections) {
            let want = lin(&silu_emb, p);
            let got: Vec<f32> = t.read(ctx).unwrap().concat();
            worst = worst.max(common::assert_close(
                &format!("{} on {backend}", p.weight),
                &got,
                &want.data,
                common::KERNEL_TOL,
            ));
            assert_eq!(
                t.stride_bytes % ctx.limits.min_storage_buffer_offset_alignment,
                0
            );
        }
        eprintln!(
            "time embedding + {} projections on {backend}: worst rel L2 {worst:.2e}",
            resnets.len()
        );
    });
}

/// A bias indexed by output row (as the attention's transposed V projection uses it), over a
/// batch of images: out[z][m][n] = Σ_k W[m][k] X[z][n][k] + bias[m], every variant.
#[test]
fn bias_per_row_matches_loops() {
    let (images, m, n, k) = (3usize, 10usize, 21usize, 12usize);
    let w = common::random(m * k, 11);
    let x = common::random(images * n * k, 12);
    let bias = common::random(m, 13);
    let mut want = vec![0.0f32; images * m * n];
    for z in 0..images {
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|kk| w[i * k + kk] as f64 * x[(z * n + j) * k + kk] as f64)
                    .sum();
                want[(z * m + i) * n + j] = dot as f32 + bias[i];
            }
        }
    }
    let op = Matmul {
        m,
        n,
        k,
        batch: images,
        inner_count: 1,
        a: Strides {
            offset: 0,
            row: k,
            col: 1,
            outer: 0,
            inner: 0,
        },
        b: Strides {
            offset: 0,
            row: 1,
            col: k,
            outer: n * k,
            inner: 0,
        },
        c: Strides {
            offset: 0,
            row: n,
            col: 1,
            outer: m * n,
            inner: 0,
        },
        alpha: 1.0,
        out_scale: 1.0,
        silu_in: false,
        silu_out: false,
        bias_per_row: true,
    };
    assert!(op.fits_k4());
    common::for_each_backend(|backend, ctx| {
        let (wb, xb, bb) = (
            ctx.upload("w", &w),
            ctx.upload("x", &x),
            ctx.upload("bias", &bias),
        );
        for variant in variants(&op) {
            let out = ctx.poisoned("out", want.len());
            let bufs = MatmulBuffers {
                a: &wb,
                b: &xb,
                bias: Some(&bb),
                residual: None,
                out: &out,
            };
            let d = matmul_with(ctx, &op, &bufs, variant).unwrap();
            run_dispatches(ctx, &[d], 0).unwrap();
            let got = ctx.read_f32(&out, want.len()).unwrap();
            common::assert_close(
                &format!("bias per row {variant:?} on {backend}"),
                &got,
                &want,
                common::KERNEL_TOL,
            );
        }
    });
}
