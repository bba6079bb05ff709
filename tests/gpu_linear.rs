//! The strided matmul kernel against `cpu::ops::linear` (+ `silu`, + residual), and a batched
//! strided product against a plain triple loop.

mod common;

use ddim_wgpu::cpu::ops;
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::linear::{matmul, Matmul, MatmulArgs, MatmulOptions, MatmulVariant};
use ddim_wgpu::gpu::{GpuTensor, Precision};
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
            let f32 = Precision::F32;
            let (rows, inp, out) = (case.rows, case.inp, case.out);
            let xb = ctx.tensor_from("x", &x, &[rows, inp], f32).unwrap();
            let wb = ctx.tensor_from("w", &w, &[out, inp], f32).unwrap();
            let bb = ctx.tensor_from("b", &b, &[out], f32).unwrap();
            let rb = ctx.tensor_from("r", &r, &[rows, out], f32).unwrap();
            let wt = wb.transpose(0, 1).unwrap();
            let opts = MatmulOptions {
                silu_in: case.silu_in,
                silu_out: case.silu_out,
                ..Default::default()
            };
            let yb = ctx.poisoned_tensor("y", &[rows, out], f32);
            let args = MatmulArgs {
                a: &xb,
                b: &wt,
                bias: case.bias.then_some(&bb),
                residual: case.residual.then_some(&rb),
                out: &yb,
            };
            let (op, _) = Matmul::of(&args, opts).unwrap();
            for variant in variants(&op) {
                let yb = ctx.poisoned_tensor("y", &[rows, out], f32);
                let args = MatmulArgs { out: &yb, ..args };
                let d = matmul(ctx, variant, &args, opts).expect("building");
                run_dispatches(ctx, &[d], 0).expect("running");
                let got = ctx.read_tensor(&yb).unwrap();
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
    common::for_each_backend(|backend, ctx| {
        let f32 = Precision::F32;
        let (ab, bb) = (ctx.upload("a", &a), ctx.upload("b", &b));
        let a_view = [outer, inner, m, k];
        let av = GpuTensor::strided(&ab, a_off, &a_view, &[m * inner * k, k, inner * k, 1], f32);
        let bv = GpuTensor::strided(
            &bb,
            0,
            &[outer, inner, k, n],
            &[inner * n * k, n * k, 1, k],
            f32,
        );
        let (av, bv) = (av.unwrap(), bv.unwrap());
        let opts = MatmulOptions {
            alpha,
            ..Default::default()
        };
        for variant in MatmulVariant::ALL {
            let cb = ctx.poisoned_tensor("c", &[outer, inner, m, n], f32);
            let args = MatmulArgs {
                a: &av,
                b: &bv,
                bias: None,
                residual: None,
                out: &cb,
            };
            let (op, _) = Matmul::of(&args, opts).unwrap();
            if !variants(&op).contains(&variant) {
                continue;
            }
            let d = matmul(ctx, variant, &args, opts).unwrap();
            run_dispatches(ctx, &[d], 0).unwrap();
            let got = ctx.read_tensor(&cb).unwrap();
            let what = format!("batched strided product {variant:?} on {backend}");
            common::assert_close(&what, &got, &want, common::KERNEL_TOL);
        }
    });
}

#[test]
fn undersized_buffers_and_mismatched_shapes_are_errors() {
    common::for_each_backend(|_, ctx| {
        let small = ctx.upload("small", &[0.0f32; 4]);
        let err = GpuTensor::new(&small, &[10, 10], Precision::F32)
            .expect_err("a 10x10 view of 16 bytes must fail");
        assert!(format!("{err:#}").contains("needs 400 bytes"), "{err:#}");
        let a = ctx.tensor("a", &[10, 7], Precision::F32);
        let b = ctx.tensor("b", &[10, 10], Precision::F32);
        let out = ctx.tensor("out", &[10, 10], Precision::F32);
        let args = MatmulArgs {
            a: &a,
            b: &b,
            bias: None,
            residual: None,
            out: &out,
        };
        let err = matmul(ctx, MatmulVariant::Strided, &args, MatmulOptions::default())
            .err()
            .expect("A [10, 7] · B [10, 10] must fail");
        assert!(format!("{err:#}").contains("does not give out"), "{err:#}");
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
    let ddim_wgpu::model::unet::TimeProj::Positional {
        dim,
        flip_sin_to_cos,
        freq_shift,
    } = te.proj
    else {
        panic!("the bundled model has a positional time embedding")
    };
    let sinus = ops::timestep_embedding(&flat, dim, flip_sin_to_cos, freq_shift);
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
                t.stride_bytes() % ctx.limits.min_storage_buffer_offset_alignment,
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
    common::for_each_backend(|backend, ctx| {
        let f32 = Precision::F32;
        let wb = ctx.tensor_from("w", &w, &[m, k], f32).unwrap();
        let xb = ctx.tensor_from("x", &x, &[images, n, k], f32).unwrap();
        let bb = ctx.tensor_from("bias", &bias, &[m], f32).unwrap();
        let xt = xb.transpose(1, 2).unwrap();
        let opts = MatmulOptions {
            bias_per_row: true,
            ..Default::default()
        };
        for variant in MatmulVariant::ALL {
            let out = ctx.poisoned_tensor("out", &[images, m, n], f32);
            let args = MatmulArgs {
                a: &wb,
                b: &xt,
                bias: Some(&bb),
                residual: None,
                out: &out,
            };
            let (op, _) = Matmul::of(&args, opts).unwrap();
            assert!(op.fits_k4());
            if !variants(&op).contains(&variant) {
                continue;
            }
            let d = matmul(ctx, variant, &args, opts).unwrap();
            run_dispatches(ctx, &[d], 0).unwrap();
            let got = ctx.read_tensor(&out).unwrap();
            common::assert_close(
                &format!("bias per row {variant:?} on {backend}"),
                &got,
                &want,
                common::KERNEL_TOL,
            );
        }
    });
}
