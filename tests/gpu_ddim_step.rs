//! The fused DDIM update on the GPU against the scheduler's CPU step (`schedule::ddim_step`),
//! for every prediction type, no limit / clipping / dynamic thresholding, eta 0 and 1,
//! use_clipped_model_output on and off, over a whole 10-step table encoded by step index.

mod common;

use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::ddim_step::{
    ddim_rows, ddim_update, ddpm_rows, DdimIo, DdimUpdateConfig, NoiseLayout,
};
use ddim_wgpu::gpu::GpuContext;
use ddim_wgpu::gpu::Precision;
use ddim_wgpu::schedule::{
    ddim_step, ddim_table, ddpm_step, ddpm_table, DdpmVariance, PredictionType, SchedulerConfig,
    X0Limit,
};

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

/// Which sampler's step is checked.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Ddim { eta: f64, clipped: bool },
    Ddpm(DdpmVariance),
}

/// Runs every step of a 10-step table on the GPU, checking each against the CPU step applied
/// to the GPU's own input for that step. Returns the worst rel L2 seen.
fn run_case(
    ctx: &GpuContext,
    cfg: &SchedulerConfig,
    kind: Kind,
    layout: NoiseLayout,
    seed: u64,
) -> f64 {
    let numel = BATCH * PER_SAMPLE;
    let (rows, clipped) = match kind {
        Kind::Ddim { eta, clipped } => (ddim_rows(&ddim_table(cfg, STEPS, eta).unwrap()), clipped),
        Kind::Ddpm(v) => (ddpm_rows(&ddpm_table(cfg, STEPS, v).unwrap()), false),
    };
    let noisy = rows.iter().any(|r| r.sigma > 0.0);
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
    let sample = ctx
        .tensor_from("sample", &start, &[start.len()], Precision::F32)
        .unwrap();
    let model_out = ctx.poisoned_tensor("model out", &[numel], Precision::F32);
    let x0 = ctx.poisoned_tensor("x0", &[numel], Precision::F32);
    let noise_buf = match layout {
        NoiseLayout::AllSteps => ctx
            .tensor_from("noise", &noise, &[noise.len()], Precision::F32)
            .unwrap(),
        NoiseLayout::Rewritten => ctx.poisoned_tensor("noise", &[numel], Precision::F32),
    };
    let bufs = DdimIo {
        model_out: &model_out,
        noise: noisy.then_some(&noise_buf),
        sample: &sample,
        x0_out: Some(&x0),
        first_bad: None,
        guide: None,
    };
    let dispatches = ddim_update(ctx, &update, &rows, layout, &bufs).expect("building");
    let mut current = start;
    let mut worst = 0.0f64;
    for s in 0..STEPS {
        let z = &noise[s * numel..(s + 1) * numel];
        ctx.queue
            .write_buffer(model_out.buffer(), 0, bytemuck::cast_slice(&outputs[s]));
        if layout == NoiseLayout::Rewritten {
            ctx.queue
                .write_buffer(noise_buf.buffer(), 0, bytemuck::cast_slice(z));
        }
        run_dispatches(ctx, &dispatches, s as u32).expect("running");
        let got = ctx
            .read_many(&[(sample.buffer(), numel), (x0.buffer(), numel)])
            .unwrap();
        let (want, t) = match kind {
            Kind::Ddim { eta, clipped } => {
                let st = ddim_table(cfg, STEPS, eta).unwrap()[s];
                let z = (eta > 0.0).then_some(z);
                (
                    ddim_step(cfg, &st, &outputs[s], &current, BATCH, clipped, z).unwrap(),
                    st.t,
                )
            }
            Kind::Ddpm(v) => {
                let st = ddpm_table(cfg, STEPS, v).unwrap()[s];
                let z = (st.sigma > 0.0).then_some(z);
                (
                    ddpm_step(cfg, &st, &outputs[s], &current, BATCH, z).unwrap(),
                    st.t,
                )
            }
        };
        let what = format!(
            "{:?} {:?} {kind:?} {layout:?} step {s} (t = {t})",
            cfg.prediction_type, update.limit
        );
        worst = worst.max(common::assert_close(
            &format!("{what}: prev_sample"),
            &got[0],
            &want.prev_sample,
            common::KERNEL_TOL,
        ));
        worst = worst.max(common::assert_close(
            &format!("{what}: x0"),
            &got[1],
            &want.pred_original_sample,
            common::KERNEL_TOL,
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
                        let kind = Kind::Ddim { eta, clipped };
                        worst = worst.max(run_case(ctx, &cfg, kind, NoiseLayout::AllSteps, seed));
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
        let kind = Kind::Ddim {
            eta: 1.0,
            clipped: false,
        };
        run_case(ctx, &cfg, kind, NoiseLayout::Rewritten, 77);
    });
}

/// The same kernel with DDPM coefficients (x_prev = c0·x0 + c1·x + σ·z) against `ddpm_step`.
#[test]
fn ddpm_update_matches_cpu_step() {
    let mut seed = 5000;
    common::for_each_backend(|backend, ctx| {
        let mut worst = 0.0f64;
        for pred in ["epsilon", "sample", "v_prediction"] {
            for limit in [Limit::None, Limit::Clip, Limit::Threshold] {
                let cfg = config(pred, limit);
                for v in [
                    DdpmVariance::FixedSmall,
                    DdpmVariance::FixedLarge,
                    DdpmVariance::FixedSmallLog,
                ] {
                    worst = worst.max(run_case(
                        ctx,
                        &cfg,
                        Kind::Ddpm(v),
                        NoiseLayout::AllSteps,
                        seed,
                    ));
                    seed += 100;
                }
            }
        }
        eprintln!("ddpm update on {backend}: worst rel L2 {worst:.2e}");
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

/// The order statistics themselves: with sample prediction x0 is the model output exactly, so
/// the GPU's thresholded x0 must equal the CPU's when the quantile lies strictly inside
/// (1, sample_max_value). Many elements per invocation, ties, and values sharing their high
/// bits (every radix round decides something).
#[test]
fn dynamic_threshold_order_statistics_are_exact() {
    let (batch, per_sample) = (3usize, 1000usize);
    let numel = batch * per_sample;
    let cfg = SchedulerConfig::from_json_str(
        r#"{"prediction_type": "sample", "thresholding": true,
            "dynamic_thresholding_ratio": 0.9, "sample_max_value": 4.0}"#,
    )
    .unwrap();
    let mut m: Vec<f32> = common::random(numel, 9)
        .iter()
        .map(|u| (1.0 + 2.5 * u.abs()) * u.signum())
        .collect();
    // Ties, and values equal in their top 24 bits, below the 90th percentile (ties at the
    // percentile itself would make neighbouring order statistics equal and hide off-by-one
    // ranks; the random values there differ in their low digits, so every radix round counts).
    for i in (0..numel).step_by(7) {
        m[i] = 2.0;
    }
    for i in (3..numel).step_by(11) {
        m[i] = -f32::from_bits(2.2f32.to_bits() + (i % 5) as u32);
    }
    let rows = ddim_rows(&ddim_table(&cfg, 4, 0.0).unwrap());
    let st = ddim_table(&cfg, 4, 0.0).unwrap()[1];
    let x = common::random(numel, 10);
    let want = ddim_step(&cfg, &st, &m, &x, batch, false, None).unwrap();
    let peak = want
        .pred_original_sample
        .iter()
        .fold(0.0f32, |a, v| a.max(v.abs()));
    assert!(
        (peak - 1.0).abs() < 1e-6,
        "x0 is divided by s, so its peak is 1"
    );
    common::for_each_backend(|backend, ctx| {
        let update = DdimUpdateConfig {
            batch,
            per_sample,
            prediction: cfg.prediction_type,
            limit: X0Limit::from_config(&cfg),
            use_clipped_model_output: false,
        };
        let sample = ctx
            .tensor_from("sample", &x, &[x.len()], Precision::F32)
            .unwrap();
        let model_out = ctx
            .tensor_from("model out", &m, &[m.len()], Precision::F32)
            .unwrap();
        let x0 = ctx.poisoned_tensor("x0", &[numel], Precision::F32);
        let bufs = DdimIo {
            model_out: &model_out,
            noise: None,
            sample: &sample,
            x0_out: Some(&x0),
            first_bad: None,
            guide: None,
        };
        let d = ddim_update(ctx, &update, &rows, NoiseLayout::AllSteps, &bufs).unwrap();
        run_dispatches(ctx, &d, 1).unwrap();
        let got = ctx.read_f32(x0.buffer(), numel).unwrap();
        common::assert_close(
            &format!("thresholded x0 on {backend}"),
            &got,
            &want.pred_original_sample,
            1e-6,
        );
    });
}
