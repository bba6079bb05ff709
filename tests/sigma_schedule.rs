//! The σ-space samplers (Euler, Euler ancestral, Heun, LMS) against diffusers 0.42, through the
//! fixtures written by `tools/export_sigma_fixtures.py` (see its docstring).
//!
//! - timesteps and σ of every (class, spacing, σ schedule, option) case: timesteps f32-equal
//!   where they come from the grid, within `T_ABS` where they come from `sigma_to_t`
//!   (numpy takes the log table with its own f32 log, which is not correctly rounded; see
//!   `schedule::sigma_to_t`); σ and init_noise_sigma within `SIGMA_ULPS`: torch 2.15's CPU f32
//!   `** 0.5` (and `sqrt`) on AVX-512 is not correctly rounded (156 of the 1000 entries of the
//!   default σ table are one ulp from the correctly rounded square root this crate takes, e.g.
//!   Σ[222] = sqrt(0.67557836) is 0.82193577 in torch, 0.82193571 correctly rounded), which is
//!   also why the multistep solvers' σ are checked to 1 ulp;
//! - teacher-forced steps: within `SOLVER_STEP_REL` rel L2 of diffusers' float64 step from the
//!   same f32 inputs (the single-step tolerance of the multistep solvers' tests; relative to the
//!   input where the result cancels to 0, see `step_error`);
//! - LMS coefficients: relative `LMS_COEF_REL` of diffusers' (scipy quad on the f32 integrand);
//! - free-running f32 loops with the same noise: final sums within `FREE_SUM_REL`;
//! - the inverse incomplete beta function against scipy's `beta.ppf`.

mod common;

use std::path::PathBuf;

use ddim_wgpu::schedule::{
    beta_ppf, incomplete_beta, lms_coefficient, scale_model_input, sigma_step, PredictionType,
    SchedulerConfig, SigmaKeys, SigmaOptions, SigmaSampler, SigmaSchedule, SigmaState, SigmaTable,
    SolverKeys,
};
use ddim_wgpu::tensor::rel_l2;
use serde_json::Value;

/// Per-step rel L2 against diffusers' float64 step (the multistep solvers' `SOLVER_STEP_REL`).
const SOLVER_STEP_REL: f64 = 1e-6;
/// Largest |our t − diffusers' t| where `sigma_to_t` makes the timesteps (t in 0..T). Measured
/// 6.1e-5 (one f32 ulp at t ≥ 512).
const T_ABS: f64 = 2e-4;
/// f32 ulps allowed between our σ (and init_noise_sigma) and diffusers': 1 where σ is a table
/// value or interpolated between two; `SIGMA_DERIVED_ULPS` for the karras / exponential / beta
/// schedules, whose whole range is set by two such values (one ulp off at either end moves every
/// σ between by up to a few).
const SIGMA_ULPS: u32 = 1;
const SIGMA_DERIVED_ULPS: u32 = 4;
/// LMS coefficients against diffusers' (the same 21-point Kronrod rule on the same f32 integrand).
const LMS_COEF_REL: f64 = 1e-13;
/// LMS coefficients of our table (σ within an ulp of diffusers') against diffusers'.
const LMS_TABLE_REL: f64 = 2e-6;
/// Free-running loops: |our final sum − diffusers'| relative to the largest Σ|x| of the run (the
/// sample-prediction runs end at x ≈ 0: the dummy model's x0 at t = 0 is 0). Measured 3.9e-9.
const FREE_SUM_REL: f64 = 4e-8;
/// Our x0 against diffusers' f32 `pred_original_sample`, rel L2 (diffusers' own f32 rounding of
/// x − σ·m at σ ≈ 157 dominates). Measured 2.9e-5.
const X0_F32_REL: f64 = 1e-4;
/// `beta_ppf` against scipy: relative, or, where q is within 1e-3 of 1 (1 − q then carries the
/// rounding of q, and x is only as well defined), the same I_x(a, b) within a few ulps.
const BETA_PPF_REL: f64 = 1e-12;

fn load() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scheduler/sigma.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn tensor(v: &Value) -> Vec<f32> {
    common::fixture_f32(v)
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.signum() != b.signum() {
        return u32::MAX;
    }
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

/// The table of a fixture case: its config keys as a scheduler_config.json, the sampler its class
/// names, the step arguments (s_churn, …) as overrides.
fn table_of(case: &Value) -> SigmaTable {
    let cfg = SchedulerConfig::from_json(&case["config"]).unwrap();
    let sampler = SigmaSampler::from_class_name(case["class"].as_str().unwrap()).unwrap();
    let kw = &case["step_kwargs"];
    let sigma = SigmaKeys {
        s_churn: kw["s_churn"].as_f64(),
        s_tmin: kw["s_tmin"].as_f64(),
        s_tmax: kw["s_tmax"].as_f64(),
        s_noise: kw["s_noise"].as_f64(),
        ..Default::default()
    };
    let opts = SigmaOptions::resolve(sampler, &cfg, &SolverKeys::default(), &sigma)
        .unwrap_or_else(|e| panic!("{case}: {e:#}", case = case["config"]));
    let n = case["n"].as_u64().unwrap() as usize;
    SigmaTable::new(&cfg, &opts, n).unwrap_or_else(|e| panic!("{}: {e:#}", case["config"]))
}

fn describe(case: &Value) -> String {
    format!(
        "{} n={} {}",
        case["class"].as_str().unwrap(),
        case["n"],
        case["config"]
    )
}

/// Checks a table's timesteps, σ and init_noise_sigma against a fixture case; returns the worst
/// |Δt| and the σ ulps.
fn check_grid(case: &Value, table: &SigmaTable) -> (f64, u32) {
    let what = describe(case);
    let want_t = f32s(&case["timesteps"]);
    let want_s = f32s(&case["sigmas"]);
    assert_eq!(
        table.timesteps.len(),
        want_t.len(),
        "{what}: timestep count"
    );
    assert_eq!(table.sigmas.len(), want_s.len(), "{what}: sigma count");
    // Timesteps computed from σ: by sigma_to_t, or 0.25·ln σ (Euler's continuous timesteps with
    // v-prediction, which carry σ's one-ulp difference).
    let continuous = table.options.continuous && table.prediction == PredictionType::VPrediction;
    let from_sigmas = table.options.schedule != SigmaSchedule::Grid;
    let t_allowed = if from_sigmas || continuous {
        T_ABS
    } else {
        0.0
    };
    // Zero-SNR rescaling replays torch's f32 square roots, which are not correctly rounded here.
    let zero_snr = case["config"]["rescale_betas_zero_snr"].as_bool() == Some(true);
    let mut worst = 0.0f64;
    for (k, (&g, &w)) in table.timesteps.iter().zip(&want_t).enumerate() {
        let d = (g as f64 - w as f64).abs();
        assert!(d <= t_allowed, "{what}: timestep[{k}] = {g}, diffusers {w}");
        worst = worst.max(d);
    }
    let mut sigma_worst = 0;
    for (k, (&g, &w)) in table.sigmas.iter().zip(&want_s).enumerate() {
        let u = ulps(g, w);
        let allowed = if from_sigmas || zero_snr {
            SIGMA_DERIVED_ULPS
        } else {
            SIGMA_ULPS
        };
        assert!(
            u <= allowed,
            "{what}: sigma[{k}] = {g}, diffusers {w} ({u} ulps)"
        );
        sigma_worst = sigma_worst.max(u);
    }
    let init = case["init_noise_sigma"].as_f64().unwrap() as f32;
    assert!(
        ulps(table.init_noise_sigma, init) <= SIGMA_DERIVED_ULPS,
        "{what}: init_noise_sigma {} vs {init}",
        table.init_noise_sigma
    );
    (worst, sigma_worst)
}

#[test]
fn timesteps_and_sigmas_match_diffusers() {
    let fx = load();
    let cases = fx["schedules"].as_array().unwrap();
    assert!(cases.len() >= 100, "only {} schedule cases", cases.len());
    let (mut worst, mut inexact, mut fractional) = (0.0f64, 0, 0);
    let (mut sigma_worst, mut sigma_inexact) = (0, 0);
    for case in cases {
        let table = table_of(case);
        let (u, su) = check_grid(case, &table);
        worst = worst.max(u);
        inexact += (u > 0.0) as usize;
        sigma_worst = sigma_worst.max(su);
        sigma_inexact += (su > 0) as usize;
        fractional += table.timesteps.iter().any(|t| t.fract() != 0.0) as usize;
        // Heun runs 2n − 1 model evaluations, the others n (n + 1 with Euler's continuous
        // log_linear).
        let n = case["n"].as_u64().unwrap() as usize;
        let evals = match table.options.sampler {
            SigmaSampler::Heun => 2 * n - 1,
            _ => n,
        };
        assert_eq!(table.steps.len(), evals, "{}", describe(case));
    }
    assert!(
        fractional >= 30,
        "only {fractional} cases with fractional timesteps"
    );
    println!(
        "{} schedules; timesteps from sigma_to_t off by at most {worst:.1e} ({inexact} cases \
         not bit-equal); {fractional} cases with fractional timesteps; σ off by at most \
         {sigma_worst} ulps ({sigma_inexact} cases not bit-equal)",
        cases.len()
    );
}

/// ‖ours − ref‖ / max(‖ref‖, ‖x‖): rel L2, except where the step's result cancels to about 0
/// (the last step of a sample-prediction run, x − x), where it is relative to the input.
fn step_error(ours: &[f32], reference: &[f32], x: &[f32]) -> f64 {
    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let diff: Vec<f32> = ours.iter().zip(reference).map(|(a, b)| a - b).collect();
    norm(&diff) / norm(reference).max(norm(x))
}

/// Our state before step `i` from diffusers' (teacher forcing).
fn state_of(step: &Value) -> SigmaState {
    let st = &step["state"];
    let mut state = SigmaState::default();
    if let Some(d) = st.get("prev_derivative") {
        state.derivatives = vec![tensor(d)];
        state.saved = Some(tensor(&st["sample"]));
    }
    if let Some(ds) = st.get("derivatives") {
        state.derivatives = ds.as_array().unwrap().iter().rev().map(tensor).collect();
    }
    state
}

#[test]
fn every_step_matches_diffusers_within_the_single_step_tolerance() {
    let fx = load();
    let batch = fx["shape"][0].as_u64().unwrap() as usize;
    let mut worst = (0.0f64, String::new());
    let (mut diffusers_f32, mut x0_worst, mut coef_worst) = (0.0f64, 0.0f64, 0.0f64);
    let cases = fx["steps"].as_array().unwrap();
    assert!(cases.len() >= 19);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let table = table_of(case);
        check_grid(case, &table);
        let steps = case["steps"].as_array().unwrap();
        assert_eq!(steps.len(), table.steps.len(), "{name}: evaluations");
        for (i, st) in steps.iter().enumerate() {
            let row = &table.steps[i];
            let t = st["t"].as_f64().unwrap();
            assert!(
                (row.t as f64 - t).abs() <= T_ABS,
                "{name} step {i}: t {} vs {t}",
                row.t
            );
            assert_eq!(
                row.draws,
                st.get("noise").is_some(),
                "{name} step {i}: draws"
            );
            if let Some(coefs) = st.get("coefs") {
                // The quadrature on diffusers' own σ values gives its coefficients to the last
                // digits; our table's (on σ within an ulp of diffusers') within LMS_TABLE_REL.
                let want = coefs.as_array().unwrap();
                let sigmas = f32s(&case["sigmas"]);
                assert_eq!(row.order, want.len(), "{name} step {i}: LMS order");
                for (j, w) in want.iter().enumerate() {
                    let w = w.as_f64().unwrap();
                    let same_sigmas = lms_coefficient(&sigmas, i, row.order, j);
                    let rel = (same_sigmas - w).abs() / w.abs();
                    assert!(
                        rel <= LMS_COEF_REL,
                        "{name} step {i}: coefficient {j} = {same_sigmas}, diffusers {w}"
                    );
                    coef_worst = coef_worst.max(rel);
                    let table_rel = (row.derivs[j] - w).abs() / w.abs();
                    assert!(
                        table_rel <= LMS_TABLE_REL,
                        "{name} step {i}: table coefficient {j} = {}, diffusers {w}",
                        row.derivs[j]
                    );
                }
            }
            let (x, m) = (tensor(&st["x"]), tensor(&st["m"]));
            let noise = st.get("noise").map(tensor);
            let mut state = state_of(st);
            let out = sigma_step(&table, i, &m, &x, batch, noise.as_deref(), &mut state)
                .unwrap_or_else(|e| panic!("{name} step {i}: {e:#}"));
            let e = step_error(&out.prev_sample, &tensor(&st["ref"]["out"]), &x);
            assert!(
                e <= SOLVER_STEP_REL,
                "{name} step {i} (t = {}): next sample rel L2 {e:.2e} from diffusers' f64 step",
                row.t
            );
            if e > worst.0 {
                worst = (e, format!("{name} step {i}"));
            }
            diffusers_f32 = diffusers_f32.max(step_error(
                &tensor(&st["out"]),
                &tensor(&st["ref"]["out"]),
                &x,
            ));
            let e0 = rel_l2(&out.pred_original_sample, &tensor(&st["x0"]));
            assert!(e0 <= X0_F32_REL, "{name} step {i}: x0 rel L2 {e0:.2e}");
            x0_worst = x0_worst.max(e0);
        }
    }
    println!(
        "worst σ step rel L2 vs diffusers' f64 step: {:.2e} ({})",
        worst.0, worst.1
    );
    println!("diffusers' own f32 steps vs its f64 steps: {diffusers_f32:.2e}");
    println!("x0 vs diffusers' f32 pred_original_sample, worst rel L2: {x0_worst:.2e}");
    println!("LMS coefficients, worst relative difference: {coef_worst:.2e}");
}

/// diffusers' dummy model m = y·t/(t + 1), y = the scaled model input.
fn dummy(y: &[f32], t: f32) -> Vec<f32> {
    y.iter().map(|&v| v * t / (t + 1.0)).collect()
}

#[test]
fn free_running_loops_track_diffusers() {
    let fx = load();
    let batch = fx["shape"][0].as_u64().unwrap() as usize;
    let mut worst = 0.0f64;
    for case in fx["steps"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let table = table_of(case);
        let steps = case["steps"].as_array().unwrap();
        let mut x = tensor(&steps[0]["x"]);
        let mut state = SigmaState::default();
        let mut size = 0.0f64;
        for (i, row) in table.steps.iter().enumerate() {
            size = size.max(x.iter().map(|&v| v.abs() as f64).sum());
            let y = scale_model_input(&table, i, &x).unwrap();
            let m = dummy(&y, row.t);
            let noise = steps[i].get("noise").map(tensor);
            x = sigma_step(&table, i, &m, &x, batch, noise.as_deref(), &mut state)
                .unwrap()
                .prev_sample;
        }
        let sum: f64 = x.iter().map(|&v| v as f64).sum();
        let want = case["final_sum"].as_f64().unwrap();
        let rel = (sum - want).abs() / size;
        assert!(
            rel <= FREE_SUM_REL,
            "{name}: final sum {sum}, diffusers {want} ({rel:.1e} relative)"
        );
        worst = worst.max(rel);
    }
    println!("free-running loops: final sums within {worst:.1e} relative of diffusers'");
}

#[test]
fn inverse_incomplete_beta_matches_scipy() {
    let fx = load();
    let mut worst = 0.0f64;
    for v in fx["beta_ppf"].as_array().unwrap() {
        let (q, a, b) = (
            v["q"].as_f64().unwrap(),
            v["a"].as_f64().unwrap(),
            v["b"].as_f64().unwrap(),
        );
        let want = v["x"].as_f64().unwrap();
        let got = beta_ppf(q, a, b).unwrap();
        let err = (got - want).abs();
        let rel = if want.abs() > 1e-300 {
            err / want.abs()
        } else {
            err
        };
        if rel > BETA_PPF_REL {
            let (i_got, i_want) = (incomplete_beta(got, a, b), incomplete_beta(want, a, b));
            assert!(
                (i_got - i_want).abs() <= 8.0 * f64::EPSILON,
                "beta.ppf({q}, {a}, {b}) = {got} (I = {i_got}), scipy {want} (I = {i_want})"
            );
            continue;
        }
        assert!(
            rel <= BETA_PPF_REL,
            "beta.ppf({q}, {a}, {b}) = {got}, scipy {want} ({rel:.1e})"
        );
        worst = worst.max(rel);
    }
    println!("beta ppf: worst relative difference from scipy {worst:.1e}");
}

#[test]
fn options_a_sampler_lacks_are_refused_by_name() {
    let cfg = SchedulerConfig::default();
    let refuse = |sampler, solver: SolverKeys, sigma: SigmaKeys| {
        format!(
            "{:#}",
            SigmaOptions::resolve(sampler, &cfg, &solver, &sigma).unwrap_err()
        )
    };
    let e = refuse(
        SigmaSampler::Heun,
        SolverKeys::default(),
        SigmaKeys {
            s_churn: Some(1.0),
            ..Default::default()
        },
    );
    assert!(e.contains("s_churn") && e.contains("heun"), "{e}");
    let e = refuse(
        SigmaSampler::EulerAncestral,
        SolverKeys {
            use_karras_sigmas: Some(true),
            ..Default::default()
        },
        SigmaKeys::default(),
    );
    assert!(e.contains("use_karras_sigmas"), "{e}");
    let e = refuse(
        SigmaSampler::Lms,
        SolverKeys {
            solver_order: Some(2),
            ..Default::default()
        },
        SigmaKeys::default(),
    );
    assert!(e.contains("solver_order") && e.contains("lms"), "{e}");
    let e = refuse(
        SigmaSampler::Euler,
        SolverKeys {
            use_karras_sigmas: Some(true),
            ..Default::default()
        },
        SigmaKeys {
            use_beta_sigmas: Some(true),
            ..Default::default()
        },
    );
    assert!(e.contains("only one of"), "{e}");
    let e = refuse(
        SigmaSampler::Euler,
        SolverKeys::default(),
        SigmaKeys {
            interpolation_type: Some("cubic".into()),
            ..Default::default()
        },
    );
    assert!(
        e.contains("interpolation_type") && e.contains("log_linear"),
        "{e}"
    );
    let sample = SchedulerConfig::from_json_str(r#"{"prediction_type": "sample"}"#).unwrap();
    let e = format!(
        "{:#}",
        SigmaOptions::resolve(
            SigmaSampler::EulerAncestral,
            &sample,
            &SolverKeys::default(),
            &SigmaKeys::default()
        )
        .unwrap_err()
    );
    assert!(e.contains("prediction_type sample"), "{e}");
    // The grid spacings of ermongroup/ddim are DDIM's only.
    let uniform = SchedulerConfig::from_json_str(r#"{"timestep_spacing": "uniform"}"#).unwrap();
    let opts = SigmaOptions::resolve(
        SigmaSampler::Lms,
        &uniform,
        &SolverKeys::default(),
        &SigmaKeys::default(),
    )
    .unwrap();
    let e = format!("{:#}", SigmaTable::new(&uniform, &opts, 10).unwrap_err());
    assert!(e.contains("uniform"), "{e}");
}

#[test]
fn steps_refuse_missing_noise_and_state() {
    let cfg = SchedulerConfig::default();
    let opts =
        |s| SigmaOptions::resolve(s, &cfg, &SolverKeys::default(), &SigmaKeys::default()).unwrap();
    let x = vec![0.5f32; 8];
    let ancestral = SigmaTable::new(&cfg, &opts(SigmaSampler::EulerAncestral), 4).unwrap();
    let e = sigma_step(&ancestral, 0, &x, &x, 2, None, &mut SigmaState::default()).unwrap_err();
    assert!(format!("{e:#}").contains("noise"), "{e:#}");
    let heun = SigmaTable::new(&cfg, &opts(SigmaSampler::Heun), 4).unwrap();
    let e = sigma_step(&heun, 1, &x, &x, 2, None, &mut SigmaState::default()).unwrap_err();
    assert!(format!("{e:#}").contains("earlier derivatives"), "{e:#}");
    let e = sigma_step(&heun, 0, &x[1..], &x, 2, None, &mut SigmaState::default()).unwrap_err();
    assert!(format!("{e:#}").contains("7"), "{e:#}");
}
