//! The fused consistency-model update on the GPU against the CPU step
//! (`schedule::consistency_step`, and `consistency_input` for the next model input it writes),
//! every step of whole runs, teacher forced: each step starts from the CPU's sample. Outputs
//! (model input, x0, noise where unused) are poisoned with NaN, so an element the kernel
//! forgets to write shows up. Batch 3 × 105 values: not a multiple of the 256-wide workgroup.

mod common;

use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::consistency::{consistency_update, step_rows, ConsistencyIo};
use ddim_wgpu::gpu::{GpuContext, Precision};
use ddim_wgpu::schedule::{consistency_input, consistency_step, ConsistencyTable, SchedulerConfig};

const BATCH: usize = 3;
const PER_SAMPLE: usize = 105;

struct Case {
    name: &'static str,
    config: &'static str,
    steps: usize,
    indices: Option<Vec<usize>>,
}

fn run_case(ctx: &GpuContext, c: &Case, seed: u64) -> (f64, f64, f64) {
    let cfg = SchedulerConfig::from_json_str(c.config).unwrap();
    let table = ConsistencyTable::new(&cfg, c.steps, c.indices.as_deref())
        .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
    let numel = BATCH * PER_SAMPLE;
    // x_T × σ_max, as the pipeline starts; model outputs of the size a U-Net gives.
    let start: Vec<f32> = common::random(numel, seed)
        .iter()
        .map(|v| v * table.init_noise_sigma() as f32)
        .collect();
    let sample = ctx
        .tensor_from("sample", &start, &[numel], Precision::F32)
        .unwrap();
    let model_out = ctx.poisoned_tensor("model out", &[numel], Precision::F32);
    let model_in = ctx.poisoned_tensor("model in", &[numel], Precision::F32);
    let x0 = ctx.poisoned_tensor("x0", &[numel], Precision::F32);
    let noise = table
        .draws_noise
        .then(|| ctx.poisoned_tensor("noise", &[numel], Precision::F32));
    let dispatch = consistency_update(
        ctx,
        &table,
        numel,
        &ConsistencyIo {
            model_out: &model_out,
            sample: &sample,
            model_in: &model_in,
            noise: noise.as_ref(),
            x0_out: Some(&x0),
            first_bad: None,
            guide: None,
        },
    )
    .unwrap();
    let mut current = start;
    let mut worst = (0.0f64, 0.0f64, 0.0f64);
    for s in 0..table.steps.len() {
        let m: Vec<f32> = common::random(numel, seed + 1 + s as u64)
            .iter()
            .map(|v| 3.0 * v)
            .collect();
        ctx.queue
            .write_buffer(model_out.buffer(), 0, bytemuck::cast_slice(&m));
        let z = noise.as_ref().map(|buf| {
            let z = common::random(numel, seed + 7919 + s as u64);
            ctx.queue
                .write_buffer(buf.buffer(), 0, bytemuck::cast_slice(&z));
            z
        });
        // Teacher forcing: the GPU steps from the CPU's sample.
        ctx.queue
            .write_buffer(sample.buffer(), 0, bytemuck::cast_slice(&current));
        run_dispatches(ctx, std::slice::from_ref(&dispatch), s as u32).unwrap();
        let got = ctx
            .read_many(&[
                (sample.buffer(), numel),
                (model_in.buffer(), numel),
                (x0.buffer(), numel),
            ])
            .unwrap();
        let want = consistency_step(&table, s, &m, &current, z.as_deref(), BATCH).unwrap();
        let what = format!("{} step {s} (t = {})", c.name, table.steps[s].t);
        let close = |name: &str, got: &[f32], want: &[f32]| {
            common::assert_close(&format!("{what}: {name}"), got, want, common::KERNEL_TOL)
        };
        worst.0 = worst.0.max(close("sample", &got[0], &want.prev_sample));
        worst.2 = worst
            .2
            .max(close("x0", &got[2], &want.pred_original_sample));
        let next_in = match table.steps.get(s + 1) {
            Some(_) => consistency_input(&table, s + 1, &want.prev_sample).unwrap(),
            None => want.prev_sample.clone(),
        };
        worst.1 = worst.1.max(close("next model input", &got[1], &next_in));
        current = want.prev_sample;
    }
    worst
}

#[test]
fn consistency_update_matches_the_cpu_step() {
    let cases = [
        Case {
            name: "one step",
            config: "{}",
            steps: 1,
            indices: None,
        },
        Case {
            name: "3 steps",
            config: "{}",
            steps: 3,
            indices: None,
        },
        Case {
            name: "timesteps 22,0",
            config: "{}",
            steps: 1,
            indices: Some(vec![22, 0]),
        },
        Case {
            name: "T 151, timesteps 140,62,5, no clip",
            config: r#"{"num_train_timesteps": 151, "clip_denoised": false}"#,
            steps: 1,
            indices: Some(vec![140, 62, 5]),
        },
        Case {
            name: "5 steps, other sigmas",
            config: r#"{"sigma_min": 0.01, "sigma_max": 40.0, "sigma_data": 0.7,
                        "s_noise": 0.8, "rho": 5.0}"#,
            steps: 5,
            indices: None,
        },
    ];
    let ran = common::for_each_backend(|backend, ctx| {
        for (k, c) in cases.iter().enumerate() {
            let w = run_case(ctx, c, 100 * k as u64 + 3);
            eprintln!(
                "[consistency] {backend} {}: worst rel L2 sample {:.2e}, model input {:.2e}, x0 {:.2e}",
                c.name, w.0, w.1, w.2
            );
        }
    });
    common::assert_some_ran(ran);
}

/// The rows carry the next step's input divisor (1 after the last) and no noise in a one-step run.
#[test]
fn rows_carry_the_next_input_scale() {
    let cfg = SchedulerConfig::default();
    let t = ConsistencyTable::new(&cfg, 1, Some(&[22, 0])).unwrap();
    let rows = step_rows(&t);
    assert_eq!(rows[0].in_div, t.steps[1].in_div);
    assert_eq!(rows[1].in_div, 1.0);
    assert!(rows[0].noise > 0.0);
    let one = ConsistencyTable::new(&cfg, 1, None).unwrap();
    assert_eq!(step_rows(&one)[0].noise, 0.0);
}
