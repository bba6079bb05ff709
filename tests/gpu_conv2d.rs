//! conv2d on the GPU (both variants, every backend) against `cpu::ops::conv2d` and its upsample,
//! concat and add twins (and `cpu::resample` for a residual resampled as it is read, a per-image
//! divisor), on awkward shapes, with NaN-poisoned outputs: rel L2 ≤ 1e-5.

mod common;

use ddim_wgpu::cpu::ops::{self, Padding};
use ddim_wgpu::cpu::resample as cpu_resample;
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::conv2d::{conv2d, ConvIo, ConvShape, ConvWeights, Variant};
use ddim_wgpu::gpu::kernels::resample::Resample;
use ddim_wgpu::gpu::{GpuContext, Precision, StepTable};
use ddim_wgpu::Tensor;

struct Case {
    name: &'static str,
    shape: ConvShape,
    chan_add: bool,
    residual: bool,
    /// The residual is stored at the size this filter takes to the output's, and resampled
    /// as the epilogue reads it.
    residual_resample: Resample,
    /// Divide by a per-image value from the step's `[B, 1]` table.
    image_div: bool,
    out_scale: f32,
    /// Read the per-channel add from this step of a 3-step table (checks dynamic offsets).
    step: u32,
}

fn shape(
    batch: usize,
    (src_h, src_w): (usize, usize),
    (c1, c2): (usize, usize),
    cout: usize,
    k: usize,
    stride: usize,
    pad: Padding,
) -> ConvShape {
    ConvShape {
        batch,
        src_h,
        src_w,
        c1,
        c2,
        cout,
        kh: k,
        kw: k,
        stride,
        pad,
        upsample: false,
    }
}

fn pad(top: usize, left: usize, bottom: usize, right: usize) -> Padding {
    Padding {
        top,
        left,
        bottom,
        right,
    }
}

fn plain(name: &'static str, shape: ConvShape) -> Case {
    Case {
        name,
        shape,
        chan_add: false,
        residual: false,
        residual_resample: Resample::None,
        image_div: false,
        out_scale: 1.0,
        step: 0,
    }
}

fn cases() -> Vec<Case> {
    let p1 = Padding::same(1);
    let p0 = Padding::same(0);
    vec![
        plain(
            "first conv: Cin 3, odd H W, batch 3",
            shape(3, (7, 9), (3, 0), 5, 3, 1, p1),
        ),
        plain("last conv: Cout 1", shape(2, (5, 6), (6, 0), 1, 3, 1, p1)),
        plain("1x1, Cout 3", shape(3, (5, 3), (6, 0), 3, 1, 1, p0)),
        plain(
            "downsample: stride 2, pad right/bottom only",
            shape(3, (9, 8), (5, 0), 7, 3, 2, pad(0, 0, 1, 1)),
        ),
        plain(
            "stride 2, symmetric pad, Cout > one tile",
            shape(1, (11, 13), (17, 0), 70, 3, 2, p1),
        ),
        plain(
            "nearest 2x upsample folded in",
            ConvShape {
                upsample: true,
                ..shape(2, (5, 3), (4, 0), 3, 3, 1, p1)
            },
        ),
        Case {
            name: "skip concat + time-embedding add (step 2 of a table)",
            shape: shape(3, (6, 7), (5, 3), 6, 3, 1, p1),
            chan_add: true,
            residual: false,
            residual_resample: Resample::None,
            image_div: false,
            out_scale: 1.0,
            step: 2,
        },
        Case {
            name: "1x1 shortcut over a concat + residual, scaled",
            shape: shape(2, (4, 5), (6, 2), 9, 1, 1, p0),
            chan_add: false,
            residual: true,
            residual_resample: Resample::None,
            image_div: false,
            out_scale: 0.5,
            step: 0,
        },
        plain(
            "wide rows (16-pixel row kernel), width not a multiple of 16",
            shape(2, (5, 21), (6, 0), 5, 3, 1, p1),
        ),
        Case {
            name: "upsampled to 18 wide, concatenated, chan add",
            shape: ConvShape {
                upsample: true,
                ..shape(2, (4, 9), (3, 2), 7, 3, 1, p1)
            },
            chan_add: true,
            residual: false,
            residual_resample: Resample::None,
            image_div: false,
            out_scale: 1.0,
            step: 0,
        },
        Case {
            name: "many pixels and channels, chan add + residual",
            shape: shape(3, (13, 11), (33, 0), 67, 3, 1, p1),
            chan_add: true,
            residual: true,
            residual_resample: Resample::None,
            image_div: false,
            out_scale: 1.0,
            step: 1,
        },
        Case {
            name: "down resnet conv2: identity residual avg-pooled from 9x10 (odd rows floor)",
            residual: true,
            residual_resample: Resample::AvgPool2,
            ..plain("", shape(2, (4, 5), (6, 0), 6, 3, 1, p1))
        },
        Case {
            name: "up resnet conv2: identity residual nearest-upsampled from 3x2, scaled",
            residual: true,
            residual_resample: Resample::Nearest2,
            out_scale: 0.7,
            ..plain("", shape(3, (6, 4), (5, 0), 5, 3, 1, p1))
        },
        Case {
            name: "1x1 with a FIR-down residual from 7x8",
            residual: true,
            residual_resample: Resample::FirDown2,
            ..plain("", shape(2, (3, 4), (3, 0), 4, 1, 1, p0))
        },
        Case {
            name: "1x1 with a FIR-up residual from 2x3",
            residual: true,
            residual_resample: Resample::FirUp2,
            ..plain("", shape(2, (4, 6), (5, 0), 3, 1, 1, p0))
        },
        Case {
            name: "skip model's conv_out: + skip, / sigma per image (step 2)",
            residual: true,
            image_div: true,
            step: 2,
            ..plain("", shape(3, (5, 7), (4, 0), 3, 3, 1, p1))
        },
    ]
}

/// The CPU reference output (NHWC) and the NHWC inputs the GPU reads.
struct Reference {
    x_a: Vec<f32>,
    x_b: Vec<f32>,
    chan_table: Vec<f32>,
    /// `[STEPS, B]` per-image divisors, in [0.5, 1.5].
    div_table: Vec<f32>,
    residual: Vec<f32>,
    /// The residual's stored `(height, width)`.
    residual_hw: (usize, usize),
    want: Vec<f32>,
}

const STEPS: usize = 3;

fn reference(case: &Case, weight: &Tensor, bias: &[f32], seed: u64) -> Reference {
    let s = &case.shape;
    let a = Tensor::new(
        vec![s.batch, s.c1, s.src_h, s.src_w],
        common::random(s.batch * s.c1 * s.src_h * s.src_w, seed),
    )
    .unwrap();
    let b = Tensor::new(
        vec![s.batch, s.c2, s.src_h, s.src_w],
        common::random(s.batch * s.c2 * s.src_h * s.src_w, seed + 1),
    )
    .unwrap();
    let mut x = if s.c2 > 0 {
        ops::concat_channels(&a, &b)
    } else {
        a.clone()
    };
    if s.upsample {
        x = ops::upsample_nearest2x(&x);
    }
    let mut y = ops::conv2d(&x, weight, Some(bias), s.stride, s.pad);
    let (n, c, oh, ow) = y.nchw();
    let chan_table = common::random(STEPS * n * c, seed + 2);
    if case.chan_add {
        let step = &chan_table[case.step as usize * n * c..][..n * c];
        for (i, v) in y.data.iter_mut().enumerate() {
            let (bi, ci) = (i / (c * oh * ow), (i / (oh * ow)) % c);
            *v += step[bi * c + ci];
        }
    }
    // A stored size the filter takes to (oh, ow); pooling drops an odd last row.
    let (rh, rw) = match case.residual_resample {
        Resample::None => (oh, ow),
        Resample::AvgPool2 => (2 * oh + 1, 2 * ow),
        Resample::FirDown2 => (2 * oh + 1, 2 * ow),
        Resample::FirUp2 | Resample::Nearest2 => (oh / 2, ow / 2),
    };
    let residual = Tensor::new(
        vec![n, c, rh, rw],
        common::random(n * c * rh * rw, seed + 3),
    )
    .unwrap();
    if case.residual {
        let r = match case.residual_resample {
            Resample::None => residual.clone(),
            Resample::AvgPool2 => cpu_resample::avg_pool2x2(&residual),
            Resample::FirDown2 => cpu_resample::fir_down2(&residual),
            Resample::FirUp2 => cpu_resample::fir_up2(&residual),
            Resample::Nearest2 => ops::upsample_nearest2x(&residual),
        };
        y = ops::add(&y, &r);
    }
    for v in &mut y.data {
        *v *= case.out_scale;
    }
    let div_table: Vec<f32> = common::random(STEPS * n, seed + 4)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    if case.image_div {
        let step = &div_table[case.step as usize * n..][..n];
        for (i, v) in y.data.iter_mut().enumerate() {
            *v /= step[i / (c * oh * ow)];
        }
    }
    Reference {
        x_a: common::nchw_to_nhwc(&a.data, s.batch, s.c1, s.src_h, s.src_w),
        x_b: common::nchw_to_nhwc(&b.data, s.batch, s.c2, s.src_h, s.src_w),
        chan_table,
        div_table,
        residual: common::nchw_to_nhwc(&residual.data, n, c, rh, rw),
        residual_hw: (rh, rw),
        want: common::nchw_to_nhwc(&y.data, n, c, oh, ow),
    }
}

fn run_case(ctx: &GpuContext, variant: Variant, case: &Case, seed: u64) -> Vec<f32> {
    run_case_as(ctx, variant, case, seed, Precision::F32)
}

/// `case` with activations and weights stored as `p` (the CPU reference stays f32).
fn run_case_as(
    ctx: &GpuContext,
    variant: Variant,
    case: &Case,
    seed: u64,
    p: Precision,
) -> Vec<f32> {
    let s = &case.shape;
    let weight = Tensor::new(
        vec![s.cout, s.cin(), s.kh, s.kw],
        common::random(s.cout * s.cin() * s.kh * s.kw, seed + 10),
    )
    .unwrap();
    let bias = common::random(s.cout, seed + 11);
    let r = reference(case, &weight, &bias, seed);

    let weights = ConvWeights::upload_as(ctx, "w", &weight, Some(&bias), p).unwrap();
    let (b, h, w) = (s.batch, s.src_h, s.src_w);
    let x_a = ctx.tensor_from("x_a", &r.x_a, &[b, h, w, s.c1], p).unwrap();
    let x_b = ctx.tensor_from("x_b", &r.x_b, &[b, h, w, s.c2], p).unwrap();
    // One [B, Cout] block per step at an aligned stride, like the plan's per-step tables.
    let slice = s.batch * s.cout;
    let blocks: Vec<Vec<f32>> = r.chan_table.chunks(slice).map(<[f32]>::to_vec).collect();
    let chan = StepTable::aligned_from(ctx, "chan", &blocks[..STEPS], s.batch, s.cout).unwrap();
    let (oh, ow) = s.out_hw().unwrap();
    let out_dims = [b, oh, ow, s.cout];
    let (rh, rw) = r.residual_hw;
    let residual = ctx
        .tensor_from("residual", &r.residual, &[b, rh, rw, s.cout], p)
        .unwrap();
    let blocks: Vec<Vec<f32>> = r.div_table.chunks(b).map(<[f32]>::to_vec).collect();
    let div = StepTable::aligned_from(ctx, "div", &blocks, b, 1).unwrap();
    let out = ctx.poisoned_tensor("out", &out_dims, p);
    let io = ConvIo {
        x_a: &x_a,
        x_b: (s.c2 > 0).then_some(&x_b),
        chan_add: case.chan_add.then_some(&chan),
        residual: case.residual.then_some(&residual),
        residual_resample: case.residual_resample,
        image_div: case.image_div.then_some(&div),
        out: &out,
        out_scale: case.out_scale,
    };
    let d = conv2d(ctx, variant, case.name, s, &weights, &io).unwrap();
    run_dispatches(ctx, &[d], case.step).unwrap();
    let got = ctx.read_tensor(&out).unwrap();
    let tol = match p {
        Precision::F32 => common::KERNEL_TOL,
        Precision::F16 => common::F16_KERNEL_TOL,
    };
    common::assert_close(&format!("{} ({p})", case.name), &got, &r.want, tol);
    got
}

/// Every case with f16 activations and weights, both variants, where the device has SHADER_F16.
#[test]
fn conv2d_in_f16_matches_cpu_reference_on_awkward_shapes() {
    common::for_each_f16_backend(|backend, ctx| {
        for variant in Variant::ALL {
            for (i, case) in cases().iter().enumerate() {
                run_case_as(ctx, variant, case, 100 * i as u64, Precision::F16);
                eprintln!("{backend} {variant:?} f16: {} OK", case.name);
            }
        }
    });
}

#[test]
fn conv2d_matches_cpu_reference_on_awkward_shapes() {
    common::for_each_backend(|backend, ctx| {
        for variant in Variant::ALL {
            for (i, case) in cases().iter().enumerate() {
                run_case(ctx, variant, case, 100 * i as u64);
                eprintln!("{backend} {variant:?}: {} OK", case.name);
            }
        }
    });
}

#[test]
fn variants_agree_with_each_other() {
    common::for_each_backend(|_, ctx| {
        let case = &cases()[4];
        let reg = run_case(ctx, Variant::Register, case, 7);
        let tiled = run_case(ctx, Variant::Tiled, case, 7);
        common::assert_close("register vs tiled", &reg, &tiled, common::KERNEL_TOL);
    });
}

/// A resampled residual whose filter does not give the output's size, and a channel table
/// together with an image divisor (one binding), are refused before anything runs.
#[test]
fn epilogue_bad_input_is_refused() {
    common::for_each_backend(|backend, ctx| {
        let f32 = Precision::F32;
        let s = shape(2, (4, 5), (3, 0), 4, 3, 1, Padding::same(1));
        let weight = Tensor::new(vec![4, 3, 3, 3], common::random(108, 1)).unwrap();
        let weights = ConvWeights::upload(ctx, "w", &weight, None).unwrap();
        let x = ctx.tensor("x", &[2, 4, 5, 3], f32);
        let out = ctx.tensor("out", &[2, 4, 5, 4], f32);
        // avg-pool of 8×12 is 4×6, not the 4×5 output.
        let wide = ctx.tensor("residual", &[2, 8, 12, 4], f32);
        let table = StepTable::aligned_from(ctx, "t", &[vec![1.0; 8]], 2, 4).unwrap();
        let div = StepTable::aligned_from(ctx, "div", &[vec![1.0; 2]], 2, 1).unwrap();
        let io = |residual, chan_add, image_div| ConvIo {
            x_a: &x,
            x_b: None,
            chan_add,
            residual: Some(residual),
            residual_resample: Resample::AvgPool2,
            image_div,
            out: &out,
            out_scale: 1.0,
        };
        let Err(e) = conv2d(
            ctx,
            Variant::Register,
            "pool",
            &s,
            &weights,
            &io(&wide, None, None),
        ) else {
            panic!("{backend}: a residual of the wrong size was accepted");
        };
        assert!(
            format!("{e:#}").contains("is not the 4×5 output"),
            "{backend}: {e:#}"
        );
        let fits = ctx.tensor("residual", &[2, 9, 10, 4], f32);
        let both = io(&fits, Some(&table), Some(&div));
        let Err(e) = conv2d(ctx, Variant::Register, "both", &s, &weights, &both) else {
            panic!("{backend}: a channel table and a divisor were accepted together");
        };
        assert!(
            format!("{e:#}").contains("share one binding"),
            "{backend}: {e:#}"
        );
        // The same residual alone is accepted.
        conv2d(
            ctx,
            Variant::Register,
            "ok",
            &s,
            &weights,
            &io(&fits, None, None),
        )
        .unwrap();
    });
}
