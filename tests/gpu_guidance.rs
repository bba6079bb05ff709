//! Classifier-free guidance fused into the GPU updates (shaders/guide.wgsl appended to
//! ddim_step, multistep, sigma_step and threshold; guide_std.wgsl for the rescale) against the
//! CPU twin (`Guided::combine`, then the scheduler's own step), through the GPU sampling loop
//! (`gpu::sampler::sample_guided`) with a stand-in network whose two halves differ (a per-pixel
//! channel mix with SiLU and a different bias per half, as a null label and a class would give),
//! on awkward shapes (3 images of 3×7×5), outputs poisoned, for DDIM at eta 1 with clipping and
//! with dynamic thresholding (v-prediction), DPM-Solver++(2M), Euler ancestral (noise every
//! step) and Heun (two evaluations per step, the next input written into both halves), PNDM
//! (its raw-output transfers) and the consistency sampler (its update writes the scaled next
//! input, copied into both halves), with and without the rescale. Whole guided U-Net runs against diffusers are in tests/guidance_torch.rs.

mod common;

use ddim_wgpu::cpu::ops;
use ddim_wgpu::gpu::kernel::Dispatch;
use ddim_wgpu::gpu::kernels::linear::{matmul_fixed, MatmulArgs, MatmulOptions};
use ddim_wgpu::gpu::plan::StepForward;
use ddim_wgpu::gpu::sampler::{sample_guided, RunUpdate};
use ddim_wgpu::gpu::GpuContext;
use ddim_wgpu::gpu::{GpuTensor, Precision};
use ddim_wgpu::rng::TorchRng;
use ddim_wgpu::sampling::{Guided, SampleSettings, SamplerKind, SamplerSteps};
use ddim_wgpu::schedule::{
    consistency_input, consistency_step, ddim_step, ddpm_step, inverse_step, multistep_step_noisy,
    scale_model_input, sigma_step, MultistepState, SchedulerConfig, SigmaState,
};
use ddim_wgpu::tensor::max_abs_diff;
use ddim_wgpu::Tensor;

const STEPS: usize = 6;
const SHAPE: (usize, usize, usize, usize) = (3, 3, 7, 5);

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

/// The stand-in network on one half: silu(x W^T + b) per NHWC pixel.
fn toy_cpu(x: &[f32], w: &Tensor, b: &[f32]) -> Vec<f32> {
    let (n, c, h, wd) = SHAPE;
    let pixels = Tensor::new(vec![n * h * wd, c], common::nchw_to_nhwc(x, n, c, h, wd)).unwrap();
    let y = ops::silu(&ops::linear(&pixels, w, Some(b)));
    common::nhwc_to_nchw(&y.data, n, c, h, wd)
}

/// The doubled batch's forward: the null half with `b_null`, the class half with `b_class`.
fn toy_gpu(ctx: &GpuContext, w: &[f32], b_null: &[f32], b_class: &[f32]) -> ToyForward {
    let (n, c, h, wd) = SHAPE;
    let pixels = n * h * wd;
    let f32 = Precision::F32;
    let input = ctx.poisoned_tensor("toy input", &[2 * pixels, c], f32);
    let output = ctx.poisoned_tensor("toy output", &[2 * pixels, c], f32);
    let wb = ctx.tensor_from("toy w", w, &[c, c], f32).unwrap();
    let wt = wb.transpose(0, 1).unwrap();
    let opts = MatmulOptions {
        silu_out: true,
        ..Default::default()
    };
    let mut dispatches = vec![];
    for (half, b) in [b_null, b_class].into_iter().enumerate() {
        let bb = ctx.tensor_from("toy b", b, &[c], f32).unwrap();
        let args = MatmulArgs {
            a: &input.narrow(0, half * pixels, pixels).unwrap(),
            b: &wt,
            bias: Some(&bb),
            residual: None,
            out: &output.narrow(0, half * pixels, pixels).unwrap(),
        };
        dispatches.push(matmul_fixed(ctx, &args, opts).unwrap());
    }
    ToyForward {
        input,
        output,
        dispatches,
    }
}

/// The CPU loop: the forward on both halves, `Guided::combine`, the scheduler's step (as
/// `cpu::sampler` runs it).
fn cpu_loop(
    cfg: &SchedulerConfig,
    steps: &SamplerSteps,
    g: &Guided,
    x_t: &[f32],
    noise: &[Option<Vec<f32>>],
    toy: (&Tensor, &[f32], &[f32]),
) -> Vec<f32> {
    let (n, c, h, wd) = SHAPE;
    let per = c * h * wd;
    let mut x = x_t.to_vec();
    let mut ms = MultistepState::default();
    let mut ss = SigmaState::default();
    for i in 0..steps.len() {
        let input = match steps {
            SamplerSteps::Sigma(t) => scale_model_input(t, i, &x).unwrap(),
            SamplerSteps::Consistency(t) => consistency_input(t, i, &x).unwrap(),
            _ => x.clone(),
        };
        let mut out = toy_cpu(&input, toy.0, toy.1);
        out.extend(toy_cpu(&input, toy.0, toy.2));
        let m = g.combine(&out, n, per).unwrap();
        let z = noise[i].as_deref();
        x = match steps {
            SamplerSteps::Ddim {
                steps,
                use_clipped_model_output,
                ..
            } => ddim_step(cfg, &steps[i], &m, &x, n, *use_clipped_model_output, z),
            SamplerSteps::Ddpm(s) => ddpm_step(cfg, &s[i], &m, &x, n, z),
            SamplerSteps::Inverse(s) => inverse_step(cfg, &s[i], &m, &x, n),
            SamplerSteps::Multistep(t) => multistep_step_noisy(t, i, &m, &x, z, n, &mut ms),
            SamplerSteps::Consistency(t) => consistency_step(t, i, &m, &x, z, n),
            SamplerSteps::Sigma(t) => sigma_step(t, i, &m, &x, n, z, &mut ss),
        }
        .unwrap()
        .prev_sample;
    }
    x
}

fn run(name: &str, cfg_json: &str, settings: SampleSettings) {
    let (n, c, h, wd) = SHAPE;
    let numel = n * c * h * wd;
    let cfg = SchedulerConfig::from_json_str(cfg_json).unwrap();
    let steps = SamplerSteps::new(&cfg, &settings).unwrap();
    let w = Tensor::new(
        vec![c, c],
        common::random(c * c, 1).iter().map(|v| 0.8 * v).collect(),
    )
    .unwrap();
    let b_null = common::random(c, 2);
    let b_class = common::random(c, 3);
    let mut rng = TorchRng::new(29);
    // x_T × init_noise_sigma, as `sampling::run` hands it to either device.
    let scale = steps.init_noise_sigma() as f32;
    let x_t: Vec<f32> = rng
        .randn(numel)
        .unwrap()
        .iter()
        .map(|v| v * scale)
        .collect();
    let noise: Vec<Option<Vec<f32>>> = (0..steps.len())
        .map(|i| steps.draws_noise(i).then(|| rng.randn(numel).unwrap()))
        .collect();
    for rescale in [0.0, 0.7] {
        let g = Guided {
            scale: 2.5,
            rescale,
            null: 0,
        };
        let want = cpu_loop(&cfg, &steps, &g, &x_t, &noise, (&w, &b_null, &b_class));
        common::for_each_backend(|backend, ctx| {
            let fwd = toy_gpu(ctx, &w.data, &b_null, &b_class);
            let update = RunUpdate::new(&cfg, &steps);
            let x = Tensor::new(vec![n, c, h, wd], x_t.clone()).unwrap();
            let (got, _) = sample_guided(
                ctx,
                &fwd,
                &update.spec(),
                Some(&g),
                &x,
                &mut |s| Ok(noise[s].clone()),
                &[],
                &mut |_, _| {},
            )
            .unwrap_or_else(|e| panic!("{name} rescale {rescale} on {backend:?}: {e:#}"));
            let (max_abs, at) = max_abs_diff(&got.data, &want);
            eprintln!("guided {name} rescale {rescale} on {backend:?}: max abs {max_abs:.2e}");
            assert!(
                max_abs <= common::SAMPLE_MAX_ABS,
                "guided {name} rescale {rescale} on {backend:?}: max abs {max_abs:.3e} at {at}"
            );
        });
    }
}

const DDPM_CONFIG: &str = r#"{"num_train_timesteps": 1000, "beta_schedule": "linear",
    "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": true}"#;

#[test]
fn guided_ddim_eta1_with_clipping() {
    let settings = SampleSettings {
        steps: STEPS,
        eta: 1.0,
        ..Default::default()
    };
    run("ddim eta 1", DDPM_CONFIG, settings);
}

#[test]
fn guided_ddim_with_dynamic_thresholding_and_v_prediction() {
    let cfg = r#"{"num_train_timesteps": 1000, "beta_schedule": "linear",
        "prediction_type": "v_prediction", "thresholding": true, "sample_max_value": 1.5,
        "dynamic_thresholding_ratio": 0.9}"#;
    let settings = SampleSettings {
        steps: STEPS,
        ..Default::default()
    };
    run("ddim v thresholded", cfg, settings);
}

#[test]
fn guided_dpm_solver_plus_plus() {
    let settings = SampleSettings {
        sampler: SamplerKind::DpmSolverPlusPlus,
        steps: STEPS,
        ..Default::default()
    };
    run("dpm-solver++", DDPM_CONFIG, settings);
}

#[test]
fn guided_euler_ancestral_and_heun() {
    for sampler in [SamplerKind::EulerAncestral, SamplerKind::Heun] {
        let settings = SampleSettings {
            sampler,
            steps: STEPS,
            ..Default::default()
        };
        run(sampler.as_str(), DDPM_CONFIG, settings);
    }
}

#[test]
fn guided_pndm_and_consistency() {
    for sampler in [SamplerKind::Pndm, SamplerKind::Consistency] {
        let settings = SampleSettings {
            sampler,
            steps: if sampler == SamplerKind::Pndm {
                STEPS
            } else {
                3
            },
            ..Default::default()
        };
        run(sampler.as_str(), DDPM_CONFIG, settings);
    }
}
