//! The fused σ-space update (Euler, Euler ancestral, Heun, LMS; `shaders/sigma_step.wgsl`) on
//! the GPU against the CPU step (`schedule::sigma_step`), every evaluation of whole tables,
//! teacher forced: before each evaluation the CPU gets the GPU's current sample and history
//! (earlier derivatives, Heun's saved sample), so each evaluation's arithmetic is checked on its
//! own. The history, x0 and model-input buffers are poisoned with NaN, so an element the kernel
//! forgets to write, or a slot it reads before writing, shows up. Besides the next sample, the
//! kernel writes the next evaluation's model input (x / sqrt(σ² + 1)), checked against the CPU's
//! `scale_model_input`.

mod common;

use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::sigma_step::{history_slots, ring_slots, sigma_update, SigmaIo};
use ddim_wgpu::gpu::{GpuContext, Precision};
use ddim_wgpu::schedule::{
    scale_model_input, sigma_step, SchedulerConfig, SigmaKeys, SigmaOptions, SigmaSampler,
    SigmaState, SigmaTable, SolverKeys,
};

const BATCH: usize = 3;
/// 3 × 7 × 5: not a multiple of the 256-wide workgroup; 315 elements in all.
const PER_SAMPLE: usize = 105;

struct Case {
    name: &'static str,
    sampler: SigmaSampler,
    config: &'static str,
    solver: SolverKeys,
    sigma: SigmaKeys,
    steps: usize,
}

fn table(c: &Case) -> SigmaTable {
    let cfg = SchedulerConfig::from_json_str(c.config).unwrap();
    let opts = SigmaOptions::resolve(c.sampler, &cfg, &c.solver, &c.sigma)
        .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
    SigmaTable::new(&cfg, &opts, c.steps).unwrap_or_else(|e| panic!("{}: {e:#}", c.name))
}

fn cases() -> Vec<Case> {
    let karras = SolverKeys {
        use_karras_sigmas: Some(true),
        ..Default::default()
    };
    let churn = SigmaKeys {
        s_churn: Some(3.0),
        s_tmin: Some(0.2),
        s_noise: Some(1.01),
        ..Default::default()
    };
    let case = |name, sampler, config, solver: &SolverKeys, sigma: &SigmaKeys, steps| Case {
        name,
        sampler,
        config,
        solver: solver.clone(),
        sigma: sigma.clone(),
        steps,
    };
    let none = SolverKeys::default();
    let plain = SigmaKeys::default();
    let eps = r#"{"prediction_type": "epsilon"}"#;
    let v = r#"{"prediction_type": "v_prediction", "timestep_spacing": "trailing"}"#;
    let sample = r#"{"prediction_type": "sample", "timestep_spacing": "linspace"}"#;
    let clip = r#"{"clip_sample": true, "clip_sample_range": 1.5}"#;
    use SigmaSampler::*;
    vec![
        case("euler eps", Euler, eps, &none, &plain, 8),
        case("euler v karras churn", Euler, v, &karras, &churn, 8),
        case("euler sample", Euler, sample, &none, &plain, 6),
        case("euler-ancestral eps", EulerAncestral, eps, &none, &plain, 7),
        case("euler-ancestral v", EulerAncestral, v, &none, &plain, 7),
        case("heun eps", Heun, eps, &none, &plain, 5),
        case("heun clip", Heun, clip, &none, &plain, 5),
        case("heun v karras", Heun, v, &karras, &plain, 4),
        case("lms eps", Lms, eps, &none, &plain, 9),
        case("lms sample karras", Lms, sample, &karras, &plain, 7),
        case("lms v", Lms, v, &none, &plain, 6),
    ]
}

/// Tolerance of a derivative d = (x − x0)/σ: at small σ, x and x0 nearly cancel, so one f32
/// rounding of x0 (which diffusers makes too) moves d by about ε32·κ relative,
/// κ = ‖x‖/(σ·‖d‖). Allowed: 10 such roundings, at least KERNEL_TOL.
fn deriv_tol(x: &[f32], d: &[f32], sigma: f64) -> f64 {
    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let kappa = norm(x) / (sigma * norm(d));
    common::KERNEL_TOL.max(10.0 * f32::EPSILON as f64 * kappa)
}

/// Worst rel L2 per output of one case.
#[derive(Default)]
struct Worst {
    sample: f64,
    x0: f64,
    model_in: f64,
}

fn run_case(ctx: &GpuContext, c: &Case, seed: u64) -> Worst {
    let table = table(c);
    let numel = BATCH * PER_SAMPLE;
    let evals = table.steps.len();
    let start: Vec<f32> = common::random(numel, seed)
        .iter()
        .map(|v| 20.0 * v)
        .collect();
    // Model outputs large enough that Heun's clamp of x0 bites.
    let outputs: Vec<Vec<f32>> = (0..evals)
        .map(|s| {
            common::random(numel, seed + 1 + s as u64)
                .iter()
                .map(|v| 3.0 * v)
                .collect()
        })
        .collect();
    let noises: Vec<Vec<f32>> = (0..evals)
        .map(|s| common::random(numel, seed + 100 + s as u64))
        .collect();
    let sample = ctx
        .tensor_from("sample", &start, &[numel], Precision::F32)
        .unwrap();
    let model_out = ctx.poisoned_tensor("model out", &[numel], Precision::F32);
    let noise = ctx.poisoned_tensor("noise", &[numel], Precision::F32);
    let slots = history_slots(&table);
    let history =
        (slots > 0).then(|| ctx.poisoned_tensor("history", &[slots * numel], Precision::F32));
    let model_in = ctx.poisoned_tensor("model in", &[numel], Precision::F32);
    let x0 = ctx.poisoned_tensor("x0", &[numel], Precision::F32);
    let dispatch = sigma_update(
        ctx,
        &table,
        BATCH,
        PER_SAMPLE,
        &SigmaIo {
            model_out: &model_out,
            noise: Some(&noise),
            sample: &sample,
            history: history.as_ref(),
            model_in: &model_in,
            x0_out: Some(&x0),
            first_bad: None,
            guide: None,
        },
    )
    .expect("building");
    let ring = ring_slots(&table);
    let mut current = start;
    let mut kept: Option<Vec<f32>> = None;
    let mut worst = Worst::default();
    let mut clamped = 0usize;
    for s in 0..evals {
        let row = &table.steps[s];
        ctx.queue
            .write_buffer(model_out.buffer(), 0, bytemuck::cast_slice(&outputs[s]));
        if row.draws {
            ctx.queue
                .write_buffer(noise.buffer(), 0, bytemuck::cast_slice(&noises[s]));
        }
        run_dispatches(ctx, std::slice::from_ref(&dispatch), s as u32).expect("running");
        let mut reads = vec![
            (sample.buffer(), numel),
            (x0.buffer(), numel),
            (model_in.buffer(), numel),
        ];
        if let Some(h) = &history {
            reads.push((h.buffer(), slots * numel));
        }
        let got = ctx.read_many(&reads).unwrap();
        // Teacher forcing: the CPU continues from the GPU's earlier derivatives and saved sample.
        let mut state = SigmaState::default();
        if let Some(h) = &kept {
            let slot = |k: usize| h[k * numel..(k + 1) * numel].to_vec();
            if ring > 0 {
                state.derivatives = (1..ring)
                    .filter(|&a| a <= s)
                    .map(|a| slot((s - a) % ring))
                    .collect();
            }
            if row.from_saved {
                state.saved = Some(slot(ring));
            }
        }
        let z = row.draws.then_some(noises[s].as_slice());
        let want = sigma_step(&table, s, &outputs[s], &current, BATCH, z, &mut state).unwrap();
        let what = format!("{} eval {s} (t = {}, σ = {:.4})", c.name, row.t, row.sigma);
        let close = |name: &str, got: &[f32], want: &[f32]| {
            common::assert_close(&format!("{what}: {name}"), got, want, common::KERNEL_TOL)
        };
        worst.sample = worst
            .sample
            .max(close("sample", &got[0], &want.prev_sample));
        worst.x0 = worst
            .x0
            .max(close("x0", &got[1], &want.pred_original_sample));
        let next_in = if s + 1 < evals {
            scale_model_input(&table, s + 1, &want.prev_sample).unwrap()
        } else {
            want.prev_sample.clone()
        };
        worst.model_in = worst
            .model_in
            .max(close("next model input", &got[2], &next_in));
        if let Some(r) = table.options.clip {
            clamped += want
                .pred_original_sample
                .iter()
                .filter(|v| v.abs() as f64 == r)
                .count();
        }
        if ring > 0 {
            let h = &got[3];
            let d = &state.derivatives[0];
            common::assert_close(
                &format!("{what}: derivative in its ring slot"),
                &h[(s % ring) * numel..(s % ring + 1) * numel],
                d,
                deriv_tol(&current, d, row.deriv_sigma),
            );
        }
        if row.save_sample {
            let h = &got[3];
            close(
                "saved sample",
                &h[ring * numel..(ring + 1) * numel],
                state.saved.as_deref().unwrap(),
            );
        }
        current = got[0].clone();
        kept = got.get(3).cloned();
    }
    if table.options.clip.is_some() {
        assert!(clamped > 0, "{}: the clamp never bit", c.name);
    }
    worst
}

#[test]
fn sigma_updates_match_the_cpu_step_on_awkward_shapes() {
    let cases = cases();
    let ran = common::for_each_backend(|backend, ctx| {
        for (k, c) in cases.iter().enumerate() {
            let w = run_case(ctx, c, 1000 * k as u64 + 7);
            eprintln!(
                "[sigma] {backend} {}: worst rel L2 sample {:.2e}, x0 {:.2e}, model input {:.2e}",
                c.name, w.sample, w.x0, w.model_in
            );
        }
    });
    common::assert_some_ran(ran);
}

/// Whole runs on the tiny pipeline model, GPU against the CPU reference: max abs of the final
/// samples and the recorded x0 frames (|x| ≤ ~3 here). Measured: see the printout.
const RUN_MAX_ABS: f64 = 1e-4;

/// Whole runs of the four samplers through `Pipeline::sample_with` on the tiny model (its config
/// clips, so Heun clamps x0): 3 images in chunks of 2 (two plans), x0 recorded every 3rd
/// evaluation, so Heun's paired command buffers record frames at both evaluations of a pair. Euler churns
/// (noise drawn at every evaluation) and Euler ancestral draws every evaluation.
#[test]
fn tiny_model_sigma_runs_match_cpu_reference() {
    use ddim_wgpu::pipeline::{Device, Noise, SampleRequest, TrajectoryFrames};
    use ddim_wgpu::sampling::{SampleSettings, SamplerKind};
    use ddim_wgpu::tensor::max_abs_diff;

    let pipe = common::tiny_pipeline();
    let runs = [
        (
            SamplerKind::Euler,
            SigmaKeys {
                s_churn: Some(1.0),
                ..Default::default()
            },
        ),
        (SamplerKind::EulerAncestral, SigmaKeys::default()),
        (SamplerKind::Heun, SigmaKeys::default()),
        (SamplerKind::Lms, SigmaKeys::default()),
    ];
    let mut worst = 0.0f64;
    for (sampler, sigma) in runs {
        let request = SampleRequest {
            settings: SampleSettings {
                sampler,
                steps: 5,
                sigma,
                ..Default::default()
            },
            noise: Noise::Seed { seed: 11, num: 3 },
            batch: Some(2),
            trajectory: TrajectoryFrames::Every(3),
            ..Default::default()
        };
        let want = pipe.sample_with(&Device::Cpu, &request).unwrap();
        let (want, want_traj) = (want.images, want.trajectory.unwrap());
        common::for_each_backend(|backend, _| {
            let device = common::device(backend).unwrap();
            let got = pipe.sample_with(&device, &request).unwrap();
            let (got, traj) = (got.images, got.trajectory.unwrap());
            assert_eq!(traj.steps, want_traj.steps);
            let mut frames = 0.0f64;
            for (k, (g, w)) in traj.frames.iter().zip(&want_traj.frames).enumerate() {
                let (m, at) = max_abs_diff(&g.data, &w.data);
                assert!(
                    m <= RUN_MAX_ABS,
                    "{sampler} on {backend}: x0 of evaluation {} differs by {m:.3e} at {at}",
                    want_traj.steps[k]
                );
                frames = frames.max(m);
            }
            let (m, at) = max_abs_diff(&got.data, &want.data);
            eprintln!(
                "[sigma run] {sampler} on {backend}: final max abs {m:.2e}, x0 frames {frames:.2e}"
            );
            assert!(
                m <= RUN_MAX_ABS,
                "{sampler} on {backend}: max abs {m:.3e} at {at}"
            );
            worst = worst.max(m).max(frames);
        });
    }
    eprintln!("[sigma run] worst max abs, samples and frames: {worst:.2e}");
}
