//! The fused DDIM update on the GPU against the scheduler's CPU step (`schedule::ddim_step`),
//! for every prediction type, no limit / clipping / dynamic thresholding, eta 0 and 1,
//! use_clipped_model_output on and off, over a whole 10-step table encoded by step index.

mod common;

use ddim_wgpu::gpu::kernel::run_dispatches;
use ddim_wgpu::gpu::kernels::ddim_step::{ddim_update, DdimBuffers, DdimUpdateConfig, NoiseLayout};
use ddim_wgpu::gpu::GpuContext;
use ddim_wgpu::schedule::{ddim_step, ddim_table, PredictionType, SchedulerConfig, X0Limit};

const BATCH: usize = 3;
/// 3 × 7 × 5: not a multiple of the 256-wide workgroup; 315 elements in all.
const PER_SAMPLE: usize = 105;
const STEPS: usize = 10;

#[derive(Clone, Copy, Debug)]
enum Limit {
    None,
    Clip,
    Threshold,
}

fn config(pred: &str, limit: Limit) -> SchedulerConfig {
    let (clip, thr) = match limit {
        Limit::None => (false, false),
        Limit::Clip => (true, false),
        Limit::Threshold => (false, true),
    };
    SchedulerConfig::from_json_str(&format!(
        r#"{{"prediction_type": "{pred}", "clip_sample": {clip}, "clip_sample_range": 1.5,
            "thresholding": {thr}, "dynamic_thresholding_ratio": 0.93, "sample_max_value": 4.0}}"#
    ))
    .unwrap()
}

/// Runs every step of a 10-step table on the GPU, checking each against the CPU step applied
/// to the GPU's own input for that step. Returns the worst rel L2 seen.
fn run_case(
    ctx: &GpuContext,
    cfg: &SchedulerConfig,
    eta: f64,
    clipped: bool,
    layout: NoiseLayout,
    seed: u64,
) -> f64 {
    let numel = BATCH * PER_SAMPLE;
    let table = ddim_table(cfg, STEPS, eta).unwrap();
    let noise: Vec<f32> = common::random(numel * STEPS, seed)
        .iter()
        .map(|v| 1.7 * v)
        .collect();
    let start: Vec<f32> = common::random(numel, seed + 1)
        .iter()
        .map(|v| 2.5 * v)
        .collect();
    let outputs: Vec<Vec<f32>> = (0..STEPS)
        .map(|s| {
            common::random(numel, seed + 10 + s as u64)
                .iter()
                .map(|v| 1.5 * v)
                .collect()
        })
        .collect();
    let update = DdimUpdateConfig {
        batch: BATCH,
        per_sample: PER_SAMPLE,
        prediction: cfg.prediction_type,
        limit: X0Limit::from_config(cfg),
        use_clipped_model_output: clipped,
    };
    let sample = ctx.upload("sample", &start);
    let model_out = ctx.poisoned("model out", numel);
    let x0 = ctx.poisoned("x0", numel);
    let noise_buf = match layout {
        NoiseLayout::AllSteps => ctx.upload("noise", &noise),
        NoiseLayout::Rewritten => ctx.poisoned("noise", numel),
    };
    let bufs = DdimBuffers {
        model_out: &model_out,
        noise: (eta > 0.0).then_some(&noise_buf),
        sample: &sample,
        x0_out: Some(&x0),
    };
    let dispatches = ddim_update(ctx, &update, &table, layout, &bufs).expect("building");
    let mut current = start;
    let mut worst = 0.0f64;
    for (s, step) in table.iter().enumerate() {
        let z = &noise[s * numel..(s + 1) * numel];
        ctx.queue
            .write_buffer(&model_out, 0, bytemuck::cast_slice(&outputs[s]));
        if layout == NoiseLayout::Rewritten {
            ctx.queue
                .write_buffer(&noise_buf, 0, bytemuck::cast_slice(z));
        }
        run_dispatches(ctx, &dispatches, s as u32).expect("running");
        let got = ctx.read_many(&[(&sample, numel), (&x0, numel)]).unwrap();
        let want = ddim_step(
            cfg,
            step,
            &outputs[s],
            &current,
            BATCH,
            clipped,
            (eta > 0.0).then_some(z),
        )
        .unwrap();
        let what = format!(
            "{:?} {:?} eta {eta} clipped {clipped} {layout:?} step {s} (t = {})",
            cfg.prediction_type, update.limit, step.t
        );
        worst = worst.max(common::assert_close(
            &format!("{what}: prev_sample"),
            &got[0],
            &want.prev_sample,
            1e-5,
        ));
        worst = worst.max(common::assert_close(
            &format!("{what}: x0"),
            &got[1],
            &want.pred_original_sample,
            1e-5,
        ));
        current = got[0].clone();
    }
    worst
}

#[test]
fn ddim_update_matches_cpu_step_for_every_option() {
    let mut seed = 1;
    common::for_each_backend(|backend, ctx| {
        let mut worst = 0.0f64;
        let mut cases = 0;
        for pred in ["epsilon", "sample", "v_prediction"] {
            for limit in [Limit::None, Limit::Clip, Limit::Threshold] {
                let cfg = config(pred, limit);
                for eta in [0.0, 1.0] {
                    for clipped in [false, true] {
                        worst = worst.max(run_case(
                            ctx,
                            &cfg,
                            eta,
                            clipped,
                            NoiseLayout::AllSteps,
                            seed,
                        ));
                        seed += 100;
                        cases += 1;
                    }
                }
            }
        }
        eprintln!("ddim update on {backend}: {cases} configurations × {STEPS} steps, worst rel L2 {worst:.2e}");
    });
}

#[test]
fn ddim_update_with_noise_rewritten_per_step() {
    common::for_each_backend(|_, ctx| {
        let cfg = config("epsilon", Limit::Threshold);
        run_case(ctx, &cfg, 1.0, false, NoiseLayout::Rewritten, 77);
    });
}

/// Thresholding must be active in the test above, otherwise it checks nothing: with these
/// inputs some sample's quantile exceeds 1 at some step.
#[test]
fn thresholding_case_actually_thresholds() {
    let cfg = config("epsilon", Limit::Threshold);
    let table = ddim_table(&cfg, STEPS, 0.0).unwrap();
    let numel = BATCH * PER_SAMPLE;
    let x: Vec<f32> = common::random(numel, 2).iter().map(|v| 2.5 * v).collect();
    let m: Vec<f32> = common::random(numel, 11).iter().map(|v| 1.5 * v).collect();
    let limited = ddim_step(&cfg, &table[0], &m, &x, BATCH, false, None).unwrap();
    let unlimited = ddim_step(
        &config("epsilon", Limit::None),
        &table[0],
        &m,
        &x,
        BATCH,
        false,
        None,
    )
    .unwrap();
    let max = limited
        .pred_original_sample
        .iter()
        .fold(0.0f32, |a, v| a.max(v.abs()));
    assert!(max <= 1.0 + 1e-6, "thresholded x0 lies in [-1, 1]");
    assert!(
        unlimited.pred_original_sample.iter().any(|v| v.abs() > 4.0),
        "unthresholded x0 must exceed sample_max_value somewhere for the test to mean something"
    );
    assert_eq!(PredictionType::Epsilon, cfg.prediction_type);
}
