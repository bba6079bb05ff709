//! The ×2 resampling kernel (`kernels::resample`: avg-pool 2×2, FIR (1,3,3,1) down and up,
//! nearest) against `cpu::resample` / `cpu::ops::upsample_nearest2x` on awkward shapes: odd
//! sizes (pooling floors, FIR borders attenuate), one-pixel rows, batch > 1, channel counts and
//! element counts that are not multiples of the 64-wide workgroup, outputs poisoned with NaN.

mod common;

use ddim_wgpu::cpu::forward::to_tokens;
use ddim_wgpu::cpu::{ops, resample as cpu};
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::resample::{resample, Resample};
use ddim_wgpu::gpu::Precision;
use ddim_wgpu::Tensor;

/// A CPU reference filter.
type Reference = fn(&Tensor) -> Tensor;

/// Every filter with its CPU twin.
const MODES: [(Resample, Reference); 4] = [
    (Resample::AvgPool2, cpu::avg_pool2x2),
    (Resample::FirDown2, cpu::fir_down2),
    (Resample::FirUp2, cpu::fir_up2),
    (Resample::Nearest2, ops::upsample_nearest2x),
];

/// (batch, channels, height, width).
const SHAPES: [(usize, usize, usize, usize); 4] =
    [(3, 5, 7, 9), (2, 3, 6, 4), (1, 13, 2, 3), (2, 1, 5, 2)];

#[test]
fn resample_matches_cpu() {
    common::for_each_backend(|backend, ctx| {
        for (mode, reference) in MODES {
            for (i, &(n, c, h, w)) in SHAPES.iter().enumerate() {
                let x =
                    Tensor::new(vec![n, c, h, w], common::random(n * c * h * w, i as u64)).unwrap();
                let want = reference(&x);
                let (oh, ow) = (want.shape[2], want.shape[3]);
                let f32 = Precision::F32;
                let xb = ctx
                    .tensor_from("x", &to_tokens(&x).data, &[n, h, w, c], f32)
                    .unwrap();
                let out = ctx.poisoned_tensor("out", &[n, oh, ow, c], f32);
                let d = resample(ctx, "resample", mode, &xb, &out).unwrap();
                run_dispatches(ctx, &[d], 0).unwrap();
                let got = ctx.read_tensor(&out).unwrap();
                let err = common::assert_close(
                    &format!("{mode:?} {n}x{c}x{h}x{w} on {backend}"),
                    &got,
                    &to_tokens(&want).data,
                    common::KERNEL_TOL,
                );
                eprintln!("{mode:?} {n}x{c}x{h}x{w} on {backend}: rel L2 {err:.2e}");
            }
        }
    });
}

/// Half-precision storage (f32 arithmetic) against the reference on the same f16 inputs.
#[test]
fn resample_f16_matches_cpu() {
    let (n, c, h, w) = (2, 7, 5, 6);
    let x: Vec<f32> = common::random(n * c * h * w, 9)
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    let x = Tensor::new(vec![n, c, h, w], x).unwrap();
    common::for_each_f16_backend(|backend, ctx| {
        for (mode, reference) in MODES {
            let want = reference(&x);
            let (oh, ow) = (want.shape[2], want.shape[3]);
            let f16 = Precision::F16;
            let xb = ctx
                .tensor_from("x", &to_tokens(&x).data, &[n, h, w, c], f16)
                .unwrap();
            let out = ctx.poisoned_tensor("out", &[n, oh, ow, c], f16);
            let d = resample(ctx, "resample f16", mode, &xb, &out).unwrap();
            run_dispatches(ctx, &[d], 0).unwrap();
            let got = ctx.read_tensor(&out).unwrap();
            common::assert_close(
                &format!("{mode:?} f16 on {backend}"),
                &got,
                &to_tokens(&want).data,
                common::F16_KERNEL_TOL,
            );
        }
    });
}

/// Shapes that cannot be resampled are refused with the reason, before anything runs.
#[test]
fn bad_shapes_are_refused() {
    common::for_each_backend(|backend, ctx| {
        let f32 = Precision::F32;
        // A one-row image pools to nothing.
        let x = ctx.tensor("x", &[1, 1, 4, 3], f32);
        let out = ctx.tensor("out", &[1, 1, 2, 3], f32);
        let Err(e) = resample(ctx, "pool", Resample::AvgPool2, &x, &out) else {
            panic!("{backend}: pooling a one-row image was accepted");
        };
        assert!(
            format!("{e:#}").contains("leaves nothing"),
            "{backend}: {e:#}"
        );
        // An output of the wrong size.
        let x = ctx.tensor("x", &[2, 5, 5, 3], f32);
        let out = ctx.tensor("out", &[2, 3, 3, 3], f32);
        let Err(e) = resample(ctx, "fir", Resample::FirDown2, &x, &out) else {
            panic!("{backend}: a wrong output size was accepted");
        };
        assert!(format!("{e:#}").contains("fir"), "{backend}: {e:#}");
        // Not NHWC.
        let x = ctx.tensor("x", &[10, 3], f32);
        let Err(e) = resample(ctx, "flat", Resample::FirUp2, &x, &out) else {
            panic!("{backend}: a rank-2 input was accepted");
        };
        assert!(format!("{e:#}").contains("NHWC"), "{backend}: {e:#}");
    });
}
