//! Group norm (+ fused SiLU) on the GPU against `cpu::ops::group_norm` (+ `silu`), NHWC vs NCHW;
//! and the apply pass's extras: the scale-shift time conditioning (norm → ·(1 + s) + t → SiLU,
//! as `cpu::forward::resnet`) and the ×2 resampling of the result (`cpu::resample`).

mod common;

use ddim_wgpu::cpu::{ops, resample as cpu_resample};
use ddim_wgpu::gpu::choices::Choices;
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::group_norm::{
    group_norm, group_norm_with, Apply, GroupNormIo, GroupNormScratch, GroupNormShape,
};
use ddim_wgpu::gpu::kernels::resample::Resample;
use ddim_wgpu::gpu::{GpuContext, Precision, StepTable};
use ddim_wgpu::Tensor;

struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    groups: usize,
    silu: bool,
}

/// Inputs and expected output of one case: NHWC x, gamma, beta, NHWC reference, shape.
struct Prepared {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    want: Vec<f32>,
    shape: GroupNormShape,
}

fn prepare(case: &Case, seed: u64) -> Prepared {
    prepare_as(case, seed, Precision::F32)
}

/// As [`prepare`], with x rounded to `precision` before the reference sees it: a normalisation
/// divides by the spread, so the inputs' own rounding (0.008 at 20 in f16) would otherwise
/// dominate what is measured, which is the kernel's error.
fn prepare_as(case: &Case, seed: u64, precision: Precision) -> Prepared {
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
        .map(|v| match precision {
            Precision::F32 => v,
            Precision::F16 => half::f16::from_f32(v).to_f32(),
        })
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
    Prepared {
        x: common::nchw_to_nhwc(&x, n, c, h, w),
        gamma,
        beta,
        want: common::nchw_to_nhwc(&want.data, n, c, h, w),
        shape: GroupNormShape {
            batch: n,
            hw: h * w,
            channels: c,
            groups,
            eps,
            silu,
            precision,
        },
    }
}

/// Runs `p` with `scratch`: the output, or the error building the dispatches.
fn run(ctx: &GpuContext, p: &Prepared, scratch: &GroupNormScratch) -> anyhow::Result<Vec<f32>> {
    let e = p.shape.precision;
    let s = &p.shape;
    let dims = [s.batch, s.hw, s.channels];
    let c = [s.channels];
    let xb = ctx.tensor_from("x", &p.x, &dims, e)?;
    let gb = ctx.tensor_from("gamma", &p.gamma, &c, Precision::F32)?;
    let bb = ctx.tensor_from("beta", &p.beta, &c, Precision::F32)?;
    let yb = ctx.poisoned_tensor("y", &dims, e);
    let io = GroupNormIo {
        x: &xb,
        gamma: &gb,
        beta: &bb,
        y: &yb,
    };
    // The context's rule: the subgroup combine where it uses subgroups, else the serial one.
    let combine = Choices::fixed(ctx).group_norm(s);
    let d = group_norm(ctx, s, combine, scratch, &io)?;
    run_dispatches(ctx, &d, 0).expect("running");
    Ok(ctx.read_tensor(&yb).expect("reading back"))
}

fn check(case: &Case, seed: u64) {
    let p = prepare(case, seed);
    let Case { n, c, h, w, .. } = *case;
    let label = format!(
        "group norm {n}x{c}x{h}x{w} groups {} silu {}",
        case.groups, case.silu
    );
    common::for_each_reduction_path(|path, ctx| {
        let scratch = GroupNormScratch::new(ctx, &[p.shape]);
        let got = run(ctx, &p, &scratch).expect("building");
        common::assert_close(
            &format!("{label} on {path}"),
            &got,
            &p.want,
            common::KERNEL_TOL,
        );
    });
}

/// `case` with x and y in f16 (statistics f32) on both reduction paths, where the device has
/// SHADER_F16, against the reference on the same f16-rounded inputs.
fn check_f16(case: &Case, seed: u64) {
    let p = prepare_as(case, seed, Precision::F16);
    common::for_each_reduction_path(|path, ctx| {
        if !ctx.features.contains(wgpu::Features::SHADER_F16) {
            return;
        }
        let scratch = GroupNormScratch::new(ctx, &[p.shape]);
        let got = run(ctx, &p, &scratch).expect("building");
        let label = format!("group norm f16 {}x{} on {path}", case.n, case.c);
        common::assert_close(&label, &got, &p.want, common::F16_KERNEL_TOL);
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
        check_f16(case, 100 + 10 * i as u64);
    }
}

/// A scratch shared by several norms (as the plan shares one) must hold `batch · channels`
/// coefficients for each. Sized for a norm of many pixels and few channels, it holds enough
/// partial sums and `batch · groups` entries for the second shape but not its `batch ·
/// channels` coefficients: the norm must be refused, not run on a scratch the shader writes
/// past; a scratch sized for both gives the CPU result.
#[test]
fn scratch_too_small_for_the_coefficients_is_refused() {
    let few_channels = prepare(
        &Case {
            n: 1,
            c: 8,
            h: 32,
            w: 32,
            groups: 8,
            silu: false,
        },
        1,
    );
    // 2·32 = 64 coefficients, but 2·4 = 8 groups and 64 partials fit the scratch above (8, 256).
    let p = prepare(
        &Case {
            n: 2,
            c: 32,
            h: 3,
            w: 3,
            groups: 4,
            silu: true,
        },
        2,
    );
    common::for_each_backend(|backend, ctx| {
        let small = GroupNormScratch::new(ctx, &[few_channels.shape]);
        match run(ctx, &p, &small) {
            Err(e) => assert!(format!("{e:#}").contains("scratch too small"), "{e:#}"),
            Ok(got) => {
                common::assert_close(
                    &format!("undersized scratch on {backend}"),
                    &got,
                    &p.want,
                    common::KERNEL_TOL,
                );
                panic!("{backend}: an undersized scratch was accepted");
            }
        }
        let shared = GroupNormScratch::new(ctx, &[few_channels.shape, p.shape]);
        for q in [&few_channels, &p] {
            let got = run(ctx, q, &shared).expect("building");
            common::assert_close(
                &format!("{:?} with a shared scratch on {backend}", q.shape),
                &got,
                &q.want,
                common::KERNEL_TOL,
            );
        }
    });
}

/// The apply pass with the scale-shift and/or a resampling of its output, on both reduction
/// paths, in f32 and (where the device has it) f16 storage. The table has two steps and step 1
/// is used, through the dynamic offset.
#[test]
fn apply_pass_scale_shift_and_resampling_match_cpu() {
    // (batch, channels, h, w, groups, scale_shift, resample): odd sizes, batch > 1, outputs
    // not a multiple of the 256-wide workgroup.
    let cases = [
        (3, 12, 5, 7, 4, true, Resample::None),
        (2, 6, 7, 5, 3, false, Resample::AvgPool2),
        (2, 6, 7, 5, 3, false, Resample::FirDown2),
        (2, 6, 5, 3, 2, false, Resample::FirUp2),
        (3, 5, 3, 4, 1, false, Resample::Nearest2),
        (2, 8, 6, 6, 4, true, Resample::FirDown2),
    ];
    for (i, &(n, c, h, w, groups, scale_shift, mode)) in cases.iter().enumerate() {
        for precision in [Precision::F32, Precision::F16] {
            check_apply(
                (n, c, h, w, groups),
                scale_shift,
                mode,
                precision,
                300 + i as u64,
            );
        }
    }
}

fn check_apply(
    (n, c, h, w, groups): (usize, usize, usize, usize, usize),
    scale_shift: bool,
    mode: Resample,
    precision: Precision,
    seed: u64,
) {
    let round = |v: f32| match precision {
        Precision::F32 => v,
        Precision::F16 => half::f16::from_f32(v).to_f32(),
    };
    let x: Vec<f32> = common::random(n * c * h * w, seed)
        .iter()
        .map(|v| round(2.0 * v + 5.0))
        .collect();
    let gamma: Vec<f32> = common::random(c, seed + 1)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let beta = common::random(c, seed + 2);
    let steps: Vec<Vec<f32>> = (0..2)
        .map(|s| common::random(n * 2 * c, seed + 3 + s))
        .collect();
    let eps = 1e-5;
    let xt = Tensor::new(vec![n, c, h, w], x.clone()).unwrap();
    let mut want = ops::group_norm(&xt, groups, &gamma, &beta, eps);
    if scale_shift {
        let t = &steps[1];
        for bi in 0..n {
            for ch in 0..c {
                let (s, b) = (t[bi * 2 * c + ch], t[bi * 2 * c + c + ch]);
                for v in &mut want.data[(bi * c + ch) * h * w..][..h * w] {
                    *v = *v * (1.0 + s) + b;
                }
            }
        }
    }
    want = ops::silu(&want);
    want = match mode {
        Resample::None => want,
        Resample::AvgPool2 => cpu_resample::avg_pool2x2(&want),
        Resample::FirDown2 => cpu_resample::fir_down2(&want),
        Resample::FirUp2 => cpu_resample::fir_up2(&want),
        Resample::Nearest2 => ops::upsample_nearest2x(&want),
    };
    let (oh, ow) = (want.shape[2], want.shape[3]);
    let want = common::nchw_to_nhwc(&want.data, n, c, oh, ow);
    let shape = GroupNormShape {
        batch: n,
        hw: h * w,
        channels: c,
        groups,
        eps,
        silu: true,
        precision,
    };
    let label =
        format!("group norm {n}x{c}x{h}x{w} scale_shift {scale_shift} {mode:?} {precision}");
    common::for_each_reduction_path(|path, ctx| {
        if precision == Precision::F16 && !ctx.features.contains(wgpu::Features::SHADER_F16) {
            return;
        }
        let xb = ctx
            .tensor_from(
                "x",
                &common::nchw_to_nhwc(&x, n, c, h, w),
                &[n, h, w, c],
                precision,
            )
            .unwrap();
        let gb = ctx
            .tensor_from("gamma", &gamma, &[c], Precision::F32)
            .unwrap();
        let bb = ctx
            .tensor_from("beta", &beta, &[c], Precision::F32)
            .unwrap();
        let yb = ctx.poisoned_tensor("y", &[n, oh, ow, c], precision);
        let table = StepTable::aligned_from(ctx, "scale-shift", &steps, n, 2 * c).unwrap();
        let io = GroupNormIo {
            x: &xb,
            gamma: &gb,
            beta: &bb,
            y: &yb,
        };
        let apply = Apply {
            scale_shift: scale_shift.then_some(&table),
            resample: mode,
        };
        let scratch = GroupNormScratch::new(ctx, &[shape]);
        let combine = Choices::fixed(ctx).group_norm(&shape);
        let d = group_norm_with(ctx, &shape, combine, &scratch, &io, apply).unwrap();
        run_dispatches(ctx, &d, 1).unwrap();
        let got = ctx.read_tensor(&yb).unwrap();
        let tol = match precision {
            Precision::F32 => common::KERNEL_TOL,
            Precision::F16 => common::F16_KERNEL_TOL,
        };
        let err = common::assert_close(&format!("{label} on {path}"), &got, &want, tol);
        eprintln!("{label} on {path}: rel L2 {err:.2e}");
    });
}

/// A scale-shift table of the wrong width and a resampling that leaves nothing are refused.
#[test]
fn apply_pass_bad_input_is_refused() {
    let (n, c, h, w) = (2, 4, 1, 3);
    let shape = GroupNormShape {
        batch: n,
        hw: h * w,
        channels: c,
        groups: 2,
        eps: 1e-5,
        silu: true,
        precision: Precision::F32,
    };
    common::for_each_backend(|backend, ctx| {
        let f32 = Precision::F32;
        let x = ctx.tensor("x", &[n, h, w, c], f32);
        let g = ctx.tensor("gamma", &[c], f32);
        let y = ctx.tensor("y", &[n, h, w, c], f32);
        let io = GroupNormIo {
            x: &x,
            gamma: &g,
            beta: &g,
            y: &y,
        };
        let scratch = GroupNormScratch::new(ctx, &[shape]);
        let combine = Choices::fixed(ctx).group_norm(&shape);
        let narrow = StepTable::aligned_from(ctx, "t", &[vec![0.0; n * c]], n, c).unwrap();
        let apply = Apply {
            scale_shift: Some(&narrow),
            ..Apply::default()
        };
        let Err(e) = group_norm_with(ctx, &shape, combine, &scratch, &io, apply) else {
            panic!("{backend}: accepted");
        };
        assert!(
            format!("{e:#}").contains("scale-shift table"),
            "{backend}: {e:#}"
        );
        let apply = Apply {
            resample: Resample::AvgPool2,
            ..Apply::default()
        };
        let Err(e) = group_norm_with(ctx, &shape, combine, &scratch, &io, apply) else {
            panic!("{backend}: accepted");
        };
        assert!(
            format!("{e:#}").contains("leaves nothing"),
            "{backend}: {e:#}"
        );
    });
}
