//! The GPU sampling loop (`gpu::sampler::sample`) against a CPU loop over the scheduler's step,
//! 10 steps, eta 0 and eta 1 with identical noise: max abs difference ≤ `common::SAMPLE_MAX_ABS`.

mod common;

use ddim_wgpu::cpu::ops;
use ddim_wgpu::gpu::kernel::Dispatch;
use ddim_wgpu::gpu::kernels::ddim_step::ddim_rows;
use ddim_wgpu::gpu::kernels::linear::{matmul_fixed, MatmulArgs, MatmulOptions};
use ddim_wgpu::gpu::plan::StepForward;
use ddim_wgpu::gpu::sampler::{sample, DdimSpec, SampleSpec};
use ddim_wgpu::gpu::GpuContext;
use ddim_wgpu::gpu::{GpuTensor, Precision};
use ddim_wgpu::rng::TorchRng;
use ddim_wgpu::schedule::{ddim_step, ddim_table, SchedulerConfig, X0Limit};
use ddim_wgpu::tensor::max_abs_diff;
use ddim_wgpu::Tensor;

const STEPS: usize = 10;

/// A stand-in network for the loop mechanics: a per-pixel channel mix with SiLU,
/// `out = silu(x W^T + b)` over NHWC pixels (no time dependence).
struct ToyForward {
    input: GpuTensor,
    output: GpuTensor,
    dispatches: Vec<Dispatch>,
}

impl StepForward for ToyForward {
    fn input(&self) -> &GpuTensor {
        &self.input
    }
    fn output(&self) -> &GpuTensor {
        &self.output
    }
    fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }
}

fn toy_cpu(x: &Tensor, w: &Tensor, b: &[f32]) -> Tensor {
    let (n, c, h, wd) = x.nchw();
    let pixels = Tensor::new(
        vec![n * h * wd, c],
        common::nchw_to_nhwc(&x.data, n, c, h, wd),
    )
    .unwrap();
    let y = ops::silu(&ops::linear(&pixels, w, Some(b)));
    Tensor::new(
        vec![n, c, h, wd],
        common::nhwc_to_nchw(&y.data, n, c, h, wd),
    )
    .unwrap()
}

fn toy_gpu(ctx: &GpuContext, pixels: usize, c: usize, w: &[f32], b: &[f32]) -> ToyForward {
    let f32 = Precision::F32;
    let input = ctx.poisoned_tensor("toy input", &[pixels, c], f32);
    let output = ctx.poisoned_tensor("toy output", &[pixels, c], f32);
    let wb = ctx.tensor_from("toy w", w, &[c, c], f32).unwrap();
    let bb = ctx.tensor_from("toy b", b, &[c], f32).unwrap();
    let args = MatmulArgs {
        a: &input,
        b: &wb.transpose(0, 1).unwrap(),
        bias: Some(&bb),
        residual: None,
        out: &output,
    };
    let opts = MatmulOptions {
        silu_out: true,
        ..Default::default()
    };
    let d = matmul_fixed(ctx, &args, opts).unwrap();
    ToyForward {
        input,
        output,
        dispatches: vec![d],
    }
}

fn run_toy(eta: f64, cfg_json: &str) {
    let (n, c, h, wd) = (3usize, 3usize, 7usize, 5usize);
    let cfg = SchedulerConfig::from_json_str(cfg_json).unwrap();
    let table = ddim_table(&cfg, STEPS, eta).unwrap();
    let w = Tensor::new(
        vec![c, c],
        common::random(c * c, 1).iter().map(|v| 0.8 * v).collect(),
    )
    .unwrap();
    let b = common::random(c, 2);
    // torch-compatible noise: x_T first, then one tensor per step when eta > 0 (pipeline order).
    let mut rng = TorchRng::new(1234);
    let numel = n * c * h * wd;
    let x_t = Tensor::new(vec![n, c, h, wd], rng.randn(numel).unwrap()).unwrap();
    let noise: Vec<Vec<f32>> = (0..STEPS)
        .map(|_| {
            if eta > 0.0 {
                rng.randn(numel).unwrap()
            } else {
                vec![]
            }
        })
        .collect();
    // CPU reference loop.
    let mut x = x_t.clone();
    for (s, st) in table.iter().enumerate() {
        let m = toy_cpu(&x, &w, &b);
        let z = (st.sigma > 0.0).then_some(noise[s].as_slice());
        x.data = ddim_step(&cfg, st, &m.data, &x.data, n, false, z)
            .unwrap()
            .prev_sample;
    }
    common::for_each_backend(|backend, ctx| {
        let fwd = toy_gpu(ctx, n * h * wd, c, &w.data, &b);
        let spec = SampleSpec::Ddim(DdimSpec {
            steps: &ddim_rows(&table),
            prediction: cfg.prediction_type,
            limit: X0Limit::from_config(&cfg),
            use_clipped_model_output: false,
        });
        let mut calls = vec![];
        let mut done = 0;
        let got = sample(
            ctx,
            &fwd,
            &spec,
            &x_t,
            &mut |s| {
                calls.push(s);
                Ok(Some(noise[s].clone()))
            },
            &mut |s, total| {
                assert_eq!(total, STEPS);
                done = s;
            },
        )
        .unwrap();
        assert_eq!(done, STEPS, "progress reported every step");
        if eta > 0.0 {
            assert_eq!(
                calls,
                (0..STEPS).collect::<Vec<_>>(),
                "noise requested once per step, in order"
            );
        } else {
            assert!(calls.is_empty(), "eta 0 draws no noise");
        }
        let (max_abs, at) = max_abs_diff(&got.data, &x.data);
        eprintln!("toy sample eta {eta} on {backend}: max abs {max_abs:.2e}");
        assert!(
            max_abs <= common::SAMPLE_MAX_ABS,
            "eta {eta} on {backend}: max abs {max_abs:.3e} at {at}"
        );
        common::assert_close(
            &format!("toy sample eta {eta} on {backend}"),
            &got.data,
            &x.data,
            common::KERNEL_TOL,
        );
    });
}

#[test]
fn toy_loop_matches_cpu_eta0_and_eta1() {
    let cfg = r#"{"clip_sample": true}"#;
    run_toy(0.0, cfg);
    run_toy(1.0, cfg);
}

#[test]
fn toy_loop_with_thresholding_and_v_prediction() {
    run_toy(
        1.0,
        r#"{"prediction_type": "v_prediction", "thresholding": true, "sample_max_value": 2.0}"#,
    );
}

/// The real loop: fixture U-Nets compiled into GPU plans, 10 DDIM steps, eta 0 and 1 with the
/// same torch-stream noise as the CPU reference (both through `Pipeline::sample_with`).
/// 3 images in chunks of 2, so two plans (batch 2 and 1) are built and the noise is sliced per chunk.
#[test]
fn unet_sample_matches_cpu_reference() {
    use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest, TrajectoryFrames};
    use ddim_wgpu::sampling::{Progress, SampleSettings, SamplerKind};
    use std::sync::{Arc, Mutex};

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet");
    for (fixture, sampler, eta) in [
        ("cifar_like_flat", SamplerKind::Ddim, 0.0),
        ("cifar_like_flat", SamplerKind::Ddim, 1.0),
        ("attn_heads_pipeline", SamplerKind::Ddim, 1.0),
        ("bf16_scale_shift_flat", SamplerKind::Ddim, 0.0),
        ("uneven_heads_flat", SamplerKind::Ddim, 1.0),
        ("no_mid_pipeline", SamplerKind::Ddpm, 1.0),
    ] {
        let pipe = Pipeline::load(&root.join(fixture)).unwrap();
        let mut request = SampleRequest {
            settings: SampleSettings {
                sampler,
                steps: STEPS,
                eta,
                ..Default::default()
            },
            noise: Noise::Seed { seed: 7, num: 3 },
            batch: Some(2),
            // The predicted x0 after steps 2, 5, 8 and 9, as `--save-trajectory` keeps it.
            trajectory: TrajectoryFrames::Every(3),
            ..Default::default()
        };
        let want = pipe.sample_with(&Device::Cpu, &request).unwrap();
        let (want, want_traj) = (want.images, want.trajectory.unwrap());
        assert_eq!(want_traj.steps, [2, 5, 8, 9]);
        common::for_each_backend(|backend, _| {
            let last = Arc::new(Mutex::new((0, 0)));
            let seen = last.clone();
            request.progress = Some(Progress::new(move |d, t| *seen.lock().unwrap() = (d, t)));
            let device = common::device(backend).unwrap();
            let got = pipe.sample_with(&device, &request).unwrap();
            assert_eq!(got.batch, 2);
            let (got, traj) = (got.images, got.trajectory.unwrap());
            assert_eq!(traj.frames.len(), 4);
            for (k, (g, w)) in traj.frames.iter().zip(&want_traj.frames).enumerate() {
                assert_eq!(
                    g.shape,
                    [3, pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w]
                );
                let (max_abs, at) = max_abs_diff(&g.data, &w.data);
                assert!(
                    max_abs <= common::SAMPLE_MAX_ABS,
                    "{fixture} {sampler:?} eta {eta} on {backend}: predicted x0 of step {} differs by {max_abs:.3e} at {at}",
                    want_traj.steps[k]
                );
            }
            // The x0 predictions move: frames differ from each other (a stale buffer would not).
            assert!(max_abs_diff(&traj.frames[0].data, &traj.frames[3].data).0 > 1e-3);
            assert_eq!(
                *last.lock().unwrap(),
                (2 * STEPS, 2 * STEPS),
                "progress counts every model evaluation"
            );
            let (max_abs, at) = max_abs_diff(&got.data, &want.data);
            let rel = ddim_wgpu::tensor::rel_l2(&got.data, &want.data);
            eprintln!("{fixture} {sampler:?} eta {eta} on {backend}: max abs {max_abs:.2e}, rel L2 {rel:.2e}");
            assert!(
                max_abs <= common::SAMPLE_MAX_ABS,
                "{fixture} {sampler:?} eta {eta} on {backend}: max abs {max_abs:.3e} at {at} ({} vs {})",
                got.data[at],
                want.data[at]
            );
        });
    }
}

/// Noise-free runs from given samples: DDIM inversion (x0 → x_T) then DDIM eta 0 back, on the
/// GPU against the CPU reference (`Pipeline::invert` / `decode`), 3 images in chunks of 2.
#[test]
fn unet_inversion_and_reconstruction_match_cpu_reference() {
    use ddim_wgpu::pipeline::{Device, LatentRequest, Pipeline};

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet/attn_heads_pipeline");
    let pipe = Pipeline::load(&dir).unwrap();
    let (c, h, w) = (pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w);
    let x0 = Tensor::new(vec![3, c, h, w], common::random(3 * c * h * w, 42)).unwrap();
    let request = LatentRequest {
        steps: STEPS,
        batch: Some(2),
        progress: None,
        labels: None,
        guidance: Default::default(),
    };
    let latent = pipe.invert(&Device::Cpu, &x0, &request).unwrap();
    let back = pipe.decode(&Device::Cpu, &latent, &request).unwrap();
    common::for_each_backend(|backend, _| {
        let device = common::device(backend).unwrap();
        let got_latent = pipe.invert(&device, &x0, &request).unwrap();
        let (m, _) = max_abs_diff(&got_latent.data, &latent.data);
        eprintln!("inversion on {backend}: max abs {m:.2e}");
        assert!(
            m <= common::SAMPLE_MAX_ABS,
            "inversion on {backend}: max abs {m:.3e}"
        );
        let got_back = pipe.decode(&device, &latent, &request).unwrap();
        let (m, _) = max_abs_diff(&got_back.data, &back.data);
        eprintln!("reconstruction on {backend}: max abs {m:.2e}");
        assert!(
            m <= common::SAMPLE_MAX_ABS,
            "reconstruction on {backend}: max abs {m:.3e}"
        );
    });
}

/// Wrong noise (length, or missing where sigma > 0) and a non-NCHW start are errors, not panics.
#[test]
fn bad_noise_and_shapes_are_errors() {
    let cfg = SchedulerConfig::from_json_str("{}").unwrap();
    let table = ddim_table(&cfg, 3, 1.0).unwrap();
    let rows = ddim_rows(&table);
    let (n, c, h, wd) = (2usize, 3usize, 4usize, 5usize);
    let w = common::random(c * c, 1);
    let b = common::random(c, 2);
    let x_t = Tensor::new(vec![n, c, h, wd], common::random(n * c * h * wd, 3)).unwrap();
    common::for_each_backend(|backend, ctx| {
        let fwd = toy_gpu(ctx, n * h * wd, c, &w, &b);
        let spec = SampleSpec::Ddim(DdimSpec {
            steps: &rows,
            prediction: cfg.prediction_type,
            limit: X0Limit::from_config(&cfg),
            use_clipped_model_output: false,
        });
        let noop = &mut |_: usize, _: usize| {};
        let err = sample(
            ctx,
            &fwd,
            &spec,
            &x_t,
            &mut |_| Ok(Some(vec![0.0; 7])),
            noop,
        )
        .expect_err("short noise must fail");
        assert!(
            format!("{err:#}").contains("noise for step 0"),
            "{backend}: {err:#}"
        );
        let err = sample(ctx, &fwd, &spec, &x_t, &mut |_| Ok(None), noop)
            .expect_err("missing noise with sigma > 0 must fail");
        assert!(format!("{err:#}").contains("sigma"), "{backend}: {err:#}");
        let flat = Tensor::new(vec![x_t.numel()], x_t.data.clone()).unwrap();
        let err = sample(ctx, &fwd, &spec, &flat, &mut |_| Ok(None), noop).expect_err("1-D start");
        assert!(format!("{err:#}").contains("NCHW"), "{backend}: {err:#}");
    });
}

/// Class-conditional models sampled on the GPU against the CPU reference, a label per seed: the
/// consistency-model-like fixture (class table, resnet resampling, scale-shift) and a
/// `timestep`-type class embedding, 3 images in chunks of 2 (the batch-2 plan runs two chunks
/// with different labels, so its tables are recomputed per chunk). The Fourier skip models take
/// σ > 0 and DDIM ends at t = 0, so they are checked by tests/gpu_forward.rs.
#[test]
fn class_conditional_models_sample_as_on_the_cpu() {
    use ddim_wgpu::model::ClassLabels;
    use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
    use ddim_wgpu::sampling::SampleSettings;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet");
    for (fixture, labels) in [
        ("cd_imagenet64_like", ClassLabels::Indices(vec![2, 9, 4])),
        ("class_timestep", ClassLabels::Indices(vec![1, 0, 3])),
    ] {
        let pipe = Pipeline::load(&root.join(fixture)).unwrap();
        let request = SampleRequest {
            settings: SampleSettings {
                steps: 3,
                eta: 1.0,
                ..Default::default()
            },
            noise: Noise::Seeds(vec![11, 12, 13]),
            batch: Some(2),
            labels: Some(labels),
            ..Default::default()
        };
        let want = pipe.sample(&Device::Cpu, &request).unwrap();
        common::for_each_backend(|backend, _| {
            let device = common::device(backend).unwrap();
            let got = pipe
                .sample(&device, &request)
                .unwrap_or_else(|e| panic!("{fixture} on {backend}: {e:#}"));
            let (max_abs, at) = max_abs_diff(&got.data, &want.data);
            eprintln!("{fixture} on {backend}: max abs {max_abs:.2e}");
            assert!(
                max_abs <= common::SAMPLE_MAX_ABS,
                "{fixture} on {backend}: max abs {max_abs:.3e} at {at}"
            );
        });
    }
}
