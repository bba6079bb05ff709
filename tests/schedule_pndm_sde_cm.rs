//! PNDM, DPM-Solver's SDE variants and the consistency sampler against diffusers 0.42, through
//! `tests/fixtures/scheduler/pndm_sde_cm.json` (`tools/export_pndm_sde_cm_fixtures.py`; its
//! docstring says how each number is made).
//!
//! - timesteps: equal (PNDM, DPM: integers; consistency: f64 within 1e-12 relative);
//! - σ: within 1 ulp of diffusers' f32;
//! - every step teacher-forced (diffusers' sample, model output and noise in; the history built
//!   from diffusers' earlier inputs): within `SOLVER_STEP_REL` rel L2 of diffusers' float64 step
//!   rounded to f32, the single-step tolerance of the DPM-Solver++ tests (`tests/schedule.rs`);
//! - whole f32 loops with diffusers' dummy model and the recorded noise: final sums within
//!   `FREE_SUM_REL`.

use std::path::PathBuf;

mod common;

use ddim_wgpu::sampling::{SampleSettings, SamplerKind, SamplerSteps};
use ddim_wgpu::schedule::{
    consistency_input, consistency_step, multistep_step_noisy, ConsistencyTable, MultistepState,
    SchedulerConfig, SolverFamily, SolverKeys, SolverOptions,
};
use serde_json::Value;

/// The DPM-Solver++ tests' single-step tolerance (tests/schedule.rs), rel L2.
const SOLVER_STEP_REL: f64 = 1e-6;

/// Steps whose σ (this, the next or the two before) is 1 ulp from diffusers': torch's f32 sqrt
/// of the σ table is not correctly rounded everywhere (t = 400 of the default schedule: torch
/// 2.0410873889923096, the correctly rounded 2.0410871505737305, which we use). In the ε-form
/// SDE solver the sample term (×α_t/α_s ≈ 1.4) and the output terms nearly cancel, so that ulp
/// moves the step by up to 1.5e-6 (measured, sde_order2 step 6).
const SIGMA_ULP_STEP_REL: f64 = 3e-6;

fn load() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scheduler/pndm_sde_cm.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn tensor(v: &Value) -> Vec<f32> {
    common::fixture_f32(v)
}

fn ulps(a: f32, b: f32) -> u32 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i32::MIN.wrapping_sub(i) as i64
        } else {
            i as i64
        }
    };
    (key(a) - key(b)).unsigned_abs() as u32
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    if num == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}

fn cfg_of(case: &Value) -> SchedulerConfig {
    SchedulerConfig::from_json(&case["config"]).unwrap_or_else(|e| panic!("{case}: {e:#}"))
}

fn name(case: &Value) -> &str {
    case["name"].as_str().unwrap()
}

fn kind(case: &Value) -> &str {
    case["kind"].as_str().unwrap()
}

/// The case's run, as `SamplerSteps` builds it from the config (the sampler its class names).
fn steps_of(case: &Value) -> SamplerSteps {
    let cfg = cfg_of(case);
    let sampler = SamplerKind::from_config(&cfg);
    let want = match kind(case) {
        "pndm" => SamplerKind::Pndm,
        "sde" => SamplerKind::DpmSolverPlusPlus,
        _ => SamplerKind::Consistency,
    };
    assert_eq!(sampler, want, "{}: the config's class selects", name(case));
    let settings = SampleSettings {
        sampler,
        steps: case["n"].as_u64().unwrap_or(1) as usize,
        timesteps: case["indices"].as_array().map(|a| {
            a.iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect::<Vec<_>>()
        }),
        ..Default::default()
    };
    SamplerSteps::new(&cfg, &settings).unwrap_or_else(|e| panic!("{}: {e:#}", name(case)))
}

fn dummy_model(x: &[f32], t: f64) -> Vec<f32> {
    // torch: sample * t / (t + 1) with t cast to the sample's dtype (f32).
    let t = t as f32;
    x.iter().map(|&v| v * t / (t + 1.0)).collect()
}

#[test]
fn timesteps_and_sigmas_match_diffusers() {
    let fx = load();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    for case in cases {
        let n = name(case);
        let want_t: Vec<f64> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let steps = steps_of(case);
        let got_t: Vec<f64> = (0..steps.len()).map(|i| steps.timestep(i)).collect();
        assert_eq!(got_t.len(), want_t.len(), "{n}: step count");
        for (k, (g, w)) in got_t.iter().zip(&want_t).enumerate() {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                "{n}: timestep[{k}] = {g}, diffusers {w}"
            );
        }
        let Some(want_s) = case["sigmas"].as_array() else {
            continue;
        };
        let got_s: Vec<f64> = match &steps {
            SamplerSteps::Multistep(t) => t
                .steps
                .iter()
                .map(|s| s.sigma)
                .chain([t.steps.last().unwrap().sigma_next])
                .collect(),
            SamplerSteps::Consistency(t) => t
                .steps
                .iter()
                .map(|s| s.sigma)
                .chain([t.steps.last().unwrap().sigma_next])
                .collect(),
            _ => unreachable!(),
        };
        assert_eq!(got_s.len(), want_s.len(), "{n}: sigma count");
        for (k, (g, w)) in got_s.iter().zip(want_s).enumerate() {
            let w = w.as_f64().unwrap();
            assert!(
                ulps(*g as f32, w as f32) <= 1,
                "{n}: sigma[{k}] = {g}, diffusers {w}"
            );
        }
    }
}

/// Every step of every case, teacher-forced: our step gets diffusers' sample, model output and
/// noise, with a history built from diffusers' earlier samples and outputs, and must give
/// diffusers' float64 step's next sample.
#[test]
fn steps_match_diffusers_float64_within_the_single_step_tolerance() {
    let fx = load();
    let batch = fx["shape"][0].as_u64().unwrap() as usize;
    let mut worst: Vec<(String, f64, String)> = Vec::new();
    for case in fx["cases"].as_array().unwrap() {
        let n = name(case);
        let steps = steps_of(case);
        let fixture = case["steps"].as_array().unwrap();
        assert_eq!(fixture.len(), steps.len(), "{n}: step count");
        let mut state = MultistepState::default();
        let mut case_worst = (0.0f64, String::new());
        // Which of our σ differ from diffusers' (by the 1 ulp the timestep test allows).
        let sigma_off: Vec<bool> = match (&steps, case["sigmas"].as_array()) {
            (SamplerSteps::Multistep(t), Some(want)) => t
                .steps
                .iter()
                .map(|s| s.sigma)
                .chain([t.steps.last().unwrap().sigma_next])
                .zip(want)
                .map(|(g, w)| g as f32 != w.as_f64().unwrap() as f32)
                .collect(),
            _ => vec![false; steps.len() + 1],
        };
        for (i, st) in fixture.iter().enumerate() {
            let (x, m) = (tensor(&st["x"]), tensor(&st["m"]));
            let z = st.get("z").map(tensor);
            let out = match &steps {
                SamplerSteps::Multistep(table) => {
                    multistep_step_noisy(table, i, &m, &x, z.as_deref(), batch, &mut state)
                }
                SamplerSteps::Consistency(table) => {
                    let scaled = consistency_input(table, i, &x).unwrap();
                    let want = tensor(&st["scaled"]);
                    let e = rel_l2(&scaled, &want);
                    assert!(
                        e <= SOLVER_STEP_REL,
                        "{n} step {i}: scaled input rel L2 {e:.2e}"
                    );
                    consistency_step(table, i, &m, &x, z.as_deref(), batch)
                }
                _ => unreachable!(),
            }
            .unwrap_or_else(|e| panic!("{n} step {i}: {e:#}"));
            let want = tensor(&st["ref"]["out"]);
            let e = rel_l2(&out.prev_sample, &want);
            let tol = if sigma_off[i.saturating_sub(2)..=i + 1].iter().any(|&b| b) {
                SIGMA_ULP_STEP_REL
            } else {
                SOLVER_STEP_REL
            };
            assert!(
                e <= tol,
                "{n} step {i}: next sample rel L2 {e:.2e} from diffusers' float64 step"
            );
            if e >= case_worst.0 {
                case_worst = (e, format!("step {i}"));
            }
        }
        worst.push((n.to_string(), case_worst.0, case_worst.1));
    }
    for k in ["pndm", "sde", "cm"] {
        let w = worst
            .iter()
            .filter(|(n, ..)| n.starts_with(k))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        println!("{k}: worst step rel L2 {:.2e} ({} {})", w.1, w.0, w.2);
    }
}

/// Whole f32 loops, relative difference of the final sums (diffusers' own f32 loop vs ours from
/// the same start and noise). Measured: see the test's output; f32 rounding carried over up to
/// 59 steps.
const FREE_SUM_REL: f64 = 1e-4;

#[test]
fn free_running_loops_track_diffusers() {
    let fx = load();
    let batch = fx["shape"][0].as_u64().unwrap() as usize;
    let mut worst = (0.0f64, String::new());
    for case in fx["cases"].as_array().unwrap() {
        let n = name(case);
        let steps = steps_of(case);
        let fixture = case["steps"].as_array().unwrap();
        let mut x = tensor(&fixture[0]["x"]);
        let mut state = MultistepState::default();
        for (i, st) in fixture.iter().enumerate() {
            let z = st.get("z").map(tensor);
            x = match &steps {
                SamplerSteps::Multistep(table) => {
                    let m = dummy_model(&x, steps.timestep(i));
                    multistep_step_noisy(table, i, &m, &x, z.as_deref(), batch, &mut state)
                }
                SamplerSteps::Consistency(table) => {
                    let m =
                        dummy_model(&consistency_input(table, i, &x).unwrap(), table.steps[i].t);
                    consistency_step(table, i, &m, &x, z.as_deref(), batch)
                }
                _ => unreachable!(),
            }
            .unwrap()
            .prev_sample;
        }
        let sum: f64 = x.iter().map(|&v| v as f64).sum();
        let want = case["final_sum"].as_f64().unwrap();
        let rel = (sum - want).abs() / want.abs().max(1e-3);
        assert!(
            rel <= FREE_SUM_REL,
            "{n}: final sum {sum}, diffusers {want} ({rel:.1e} relative)"
        );
        if rel > worst.0 {
            worst = (rel, n.to_string());
        }
    }
    println!(
        "worst free-running final sum: {:.2e} ({})",
        worst.0, worst.1
    );
}

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// What diffusers refuses or cannot run is refused by name.
#[test]
fn unsupported_options_are_refused_by_name() {
    let cfg = SchedulerConfig::default();
    let dpm =
        |keys: SolverKeys| SolverOptions::resolve(SolverFamily::DpmSolver, &cfg.solver_keys, &keys);
    let e = err_text(dpm(SolverKeys {
        algorithm_type: Some("sde-dpmsolver".into()),
        final_sigmas_type: Some("sigma_min".into()),
        solver_order: Some(3),
        ..Default::default()
    }));
    assert!(
        e.contains("solver_order") && e.contains("sde-dpmsolver"),
        "{e}"
    );
    let e = err_text(dpm(SolverKeys {
        algorithm_type: Some("sde-dpmsolver".into()),
        ..Default::default()
    }));
    assert!(
        e.contains("final_sigmas_type") && e.contains("sde-dpmsolver"),
        "{e}"
    );
    let e = err_text(dpm(SolverKeys {
        algorithm_type: Some("sde-euler".into()),
        ..Default::default()
    }));
    assert!(
        e.contains("algorithm_type") && e.contains("sde-dpmsolver++"),
        "{e}"
    );

    let run = |sampler: SamplerKind, steps: usize, f: &dyn Fn(&mut SampleSettings)| {
        let mut s = SampleSettings {
            sampler,
            steps,
            ..Default::default()
        };
        f(&mut s);
        SamplerSteps::new(&cfg, &s)
    };
    let e = err_text(run(SamplerKind::Pndm, 3, &|_| {}));
    assert!(
        e.contains("at least 4") && e.contains("skip_prk_steps"),
        "{e}"
    );
    assert!(run(SamplerKind::Pndm, 3, &|s| s.solver.skip_prk_steps =
        Some(true))
    .is_ok());
    let e = err_text(run(SamplerKind::Pndm, 10, &|s| {
        s.solver.solver_order = Some(2)
    }));
    assert!(e.contains("solver_order") && e.contains("pndm"), "{e}");
    let e = err_text(run(SamplerKind::Ddim, 10, &|s| {
        s.solver.skip_prk_steps = Some(true)
    }));
    assert!(e.contains("skip_prk_steps"), "{e}");
    let e = err_text(run(SamplerKind::DpmSolverPlusPlus, 10, &|s| {
        s.solver.skip_prk_steps = Some(true)
    }));
    assert!(e.contains("skip_prk_steps") && e.contains("pndm"), "{e}");
    let sample_pred = SchedulerConfig::from_json_str(r#"{"prediction_type": "sample"}"#).unwrap();
    let e = err_text(SamplerSteps::new(
        &sample_pred,
        &SampleSettings {
            sampler: SamplerKind::Pndm,
            ..Default::default()
        },
    ));
    assert!(e.contains("prediction_type") && e.contains("sample"), "{e}");

    let e = err_text(run(SamplerKind::Consistency, 1, &|s| {
        s.timesteps = Some(vec![0, 22])
    }));
    assert!(e.contains("descending"), "{e}");
    let e = err_text(run(SamplerKind::Consistency, 1, &|s| {
        s.timesteps = Some(vec![40, 0])
    }));
    assert!(e.contains("num_train_timesteps = 40"), "{e}");
    let e = err_text(run(SamplerKind::Consistency, 41, &|_| {}));
    assert!(e.contains("41"), "{e}");
    let e = err_text(run(SamplerKind::Ddim, 10, &|s| {
        s.timesteps = Some(vec![22, 0])
    }));
    assert!(e.contains("timesteps") && e.contains("consistency"), "{e}");
    let e = err_text(run(SamplerKind::Consistency, 2, &|s| s.eta = 0.5));
    assert!(e.contains("eta"), "{e}");
}

/// The consistency sampler scales its latents by σ_max and feeds the model 250·ln σ; the SDE
/// solver and the consistency sampler draw at every step (a one-step consistency run none).
#[test]
fn noise_draws_and_initial_scale_follow_diffusers() {
    let cfg = SchedulerConfig::default();
    let steps = |sampler, n, f: &dyn Fn(&mut SampleSettings)| {
        let mut s = SampleSettings {
            sampler,
            steps: n,
            ..Default::default()
        };
        f(&mut s);
        SamplerSteps::new(&cfg, &s).unwrap()
    };
    let one = steps(SamplerKind::Consistency, 1, &|_| {});
    assert_eq!(one.init_noise_sigma(), 80.0);
    assert!(!one.draws_noise(0));
    let two = steps(SamplerKind::Consistency, 1, &|s| {
        s.timesteps = Some(vec![22, 0])
    });
    assert_eq!(two.len(), 2);
    assert!(two.draws_noise(0) && two.draws_noise(1));
    let sde = steps(SamplerKind::DpmSolverPlusPlus, 5, &|s| {
        s.solver.algorithm_type = Some("sde-dpmsolver++".into())
    });
    assert!((0..5).all(|i| sde.draws_noise(i)));
    assert_eq!(sde.init_noise_sigma(), 1.0);
    let SamplerSteps::Multistep(t) = &sde else {
        unreachable!()
    };
    // The final step to σ = 0 returns the data prediction with no noise.
    let last = t.steps.last().unwrap();
    assert_eq!((last.noise, last.predictor.sample), (0.0, 0.0));
    let pndm = steps(SamplerKind::Pndm, 10, &|_| {});
    assert_eq!(pndm.len(), 19);
    assert!((0..19).all(|i| !pndm.draws_noise(i)));
    let table = ConsistencyTable::new(&cfg, 3, None).unwrap();
    assert!(
        table.steps[2].t < 0.0,
        "t = 250 ln σ is negative below σ = 1"
    );
}
