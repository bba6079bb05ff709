//! The elementwise kernels of the plan (`concat_channels`, `affine`) against
//! the CPU reference on awkward shapes: element counts that are not multiples of the 64-wide
//! workgroup, batch > 1, outputs poisoned with NaN so an unwritten element fails.

mod common;

use ddim_wgpu::cpu::forward::to_tokens;
use ddim_wgpu::cpu::ops;
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::elementwise::{affine, concat_channels};
use ddim_wgpu::gpu::Precision;
use ddim_wgpu::Tensor;

fn random_nchw(shape: [usize; 4], seed: u64) -> Tensor {
    Tensor::new(shape.to_vec(), common::random(shape.iter().product(), seed)).unwrap()
}

/// NHWC `out[p] = cat(a[p], b[p])` is `cpu::ops::concat_channels` of the NCHW tensors.
#[test]
fn concat_channels_matches_cpu() {
    // (batch, c1, c2, h, w): 3·5·7 pixels × 9 channels = 945 outputs; one channel on one side.
    let cases = [(3, 4, 5, 5, 7), (2, 1, 6, 3, 3), (1, 13, 1, 1, 5)];
    common::for_each_backend(|backend, ctx| {
        for (i, &(n, c1, c2, h, w)) in cases.iter().enumerate() {
            let a = random_nchw([n, c1, h, w], 10 * i as u64);
            let b = random_nchw([n, c2, h, w], 10 * i as u64 + 1);
            let want = to_tokens(&ops::concat_channels(&a, &b)).data;
            let f32 = Precision::F32;
            let ab = ctx
                .tensor_from("a", &to_tokens(&a).data, &[n, h, w, c1], f32)
                .unwrap();
            let bb = ctx
                .tensor_from("b", &to_tokens(&b).data, &[n, h, w, c2], f32)
                .unwrap();
            let out = ctx.poisoned_tensor("out", &[n, h, w, c1 + c2], f32);
            let d = concat_channels(ctx, "concat", &ab, &bb, &out).unwrap();
            run_dispatches(ctx, &[d], 0).unwrap();
            let got = ctx.read_tensor(&out).unwrap();
            common::assert_close(
                &format!("concat {n}x({c1}+{c2})x{h}x{w} on {backend}"),
                &got,
                &want,
                common::KERNEL_TOL,
            );
        }
    });
}

/// `a · scale + shift`; (2, −1) is center_input_sample as `cpu::forward` applies it.
#[test]
fn affine_matches_cpu() {
    common::for_each_backend(|backend, ctx| {
        for (n, scale, shift) in [
            (1usize, 2.0f32, -1.0f32),
            (65, 2.0, -1.0),
            (3001, -0.37, 0.5),
        ] {
            let x = common::random(n, n as u64);
            let want: Vec<f32> = x.iter().map(|&v| v * scale + shift).collect();
            let xb = ctx.tensor_from("x", &x, &[n], Precision::F32).unwrap();
            let out = ctx.poisoned_tensor("out", &[n], Precision::F32);
            let d = affine(ctx, "affine", (scale, shift), &xb, &out).unwrap();
            run_dispatches(ctx, &[d], 0).unwrap();
            let got = ctx.read_tensor(&out).unwrap();
            common::assert_close(
                &format!("affine n={n} ({scale}, {shift}) on {backend}"),
                &got,
                &want,
                common::KERNEL_TOL,
            );
        }
    });
}
