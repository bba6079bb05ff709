//! `ddim schedule` end to end: the JSON contract, config sources, overrides and error messages.

use std::path::PathBuf;
use std::process::{Command, Output};

use ddim_wgpu::schedule::{ddim_table, inverse_table, SchedulerConfig, TimestepSpacing};
use serde_json::Value;

fn ddim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddim"))
        .env(
            "DDIM_TUNE_CACHE",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
        )
        .arg("schedule")
        .args(args)
        .output()
        .expect("running ddim")
}

fn json_of(args: &[&str]) -> Value {
    let out = ddim(args);
    assert!(
        out.status.success(),
        "ddim schedule {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn failure(args: &[&str]) -> String {
    let out = ddim(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "ddim schedule {args:?} should fail"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddim_schedule_cli_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn json_rows_carry_the_contract_fields_and_match_the_library() {
    let v = json_of(&["--json", "--steps", "10", "--eta", "0.5"]);
    assert_eq!(v["sampler"], "ddim");
    assert_eq!(v["config"]["timestep_spacing"], "leading");
    let steps = v["steps"].as_array().unwrap();
    let table = ddim_table(&SchedulerConfig::default(), 10, 0.5).unwrap();
    assert_eq!(steps.len(), 10);
    for (row, s) in steps.iter().zip(&table) {
        assert_eq!(row["t"].as_i64().unwrap(), s.t);
        assert_eq!(row["prev_t"].as_i64().unwrap(), s.prev_t);
        for (key, want) in [
            ("alpha_prod_t", s.alpha_prod_t),
            ("alpha_prod_t_prev", s.alpha_prod_t_prev),
            ("sigma", s.sigma),
        ] {
            let got = row[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-15 * want.abs(),
                "{key}: {got} vs {want}"
            );
        }
    }
    let ts: Vec<i64> = steps.iter().map(|r| r["t"].as_i64().unwrap()).collect();
    assert_eq!(ts, vec![900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
    assert_eq!(steps[9]["prev_t"], -100);
    assert_eq!(steps[9]["alpha_prod_t_prev"], 1.0);
    assert_eq!(steps[9]["sigma"], 0.0);
}

#[test]
fn overrides_apply_on_top_of_the_config_file() {
    let v = json_of(&[
        "--json",
        "--steps",
        "10",
        "--spacing",
        "linspace",
        "--set-alpha-to-one",
        "false",
        "--clip-sample",
        "false",
        "--prediction-type",
        "v_prediction",
    ]);
    assert_eq!(v["config"]["timestep_spacing"], "linspace");
    assert_eq!(v["config"]["clip_sample"], false);
    assert_eq!(v["config"]["prediction_type"], "v_prediction");
    let steps = v["steps"].as_array().unwrap();
    // diffusers' quirk: linspace 999, 888, ... but DDIM steps to t − T//n = 899
    assert_eq!(steps[0]["t"], 999);
    assert_eq!(steps[0]["prev_t"], 899);
    assert_eq!(steps[1]["t"], 888);
    // set_alpha_to_one false: the last step goes to ᾱ[0]
    let last = steps.last().unwrap();
    assert_eq!(last["prev_t"], -100);
    assert!((last["alpha_prod_t_prev"].as_f64().unwrap() - 0.9998999834060669).abs() < 1e-15);
    let v = json_of(&["--json", "--steps", "5", "--steps-offset", "1"]);
    let ts: Vec<i64> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["t"].as_i64().unwrap())
        .collect();
    assert_eq!(ts, vec![801, 601, 401, 201, 1]);
    let v = json_of(&["--json", "--steps", "10", "--spacing", "quad"]);
    assert_eq!(v["steps"][0]["t"], 800);
    assert_eq!(v["steps"][0]["prev_t"], 632);
}

#[test]
fn model_dirs_in_both_layouts_and_scheduler_config_files() {
    let cfg = r#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 500,
                  "timestep_spacing": "trailing", "variance_type": "fixed_large"}"#;
    let nested = temp_dir("nested");
    std::fs::create_dir_all(nested.join("scheduler")).unwrap();
    std::fs::write(nested.join("scheduler/scheduler_config.json"), cfg).unwrap();
    let flat = temp_dir("flat");
    std::fs::write(flat.join("scheduler_config.json"), cfg).unwrap();
    for dir in [&nested, &flat] {
        let v = json_of(&["--json", "--steps", "4", "--model", dir.to_str().unwrap()]);
        assert_eq!(v["config"]["num_train_timesteps"], 500);
        assert_eq!(v["steps"][0]["t"], 499);
        assert!(v["config_source"]
            .as_str()
            .unwrap()
            .contains("scheduler_config.json"));
    }
    let file = flat.join("scheduler_config.json");
    let v = json_of(&[
        "--json",
        "--steps",
        "4",
        "--sampler",
        "ddpm",
        "--scheduler-config",
        file.to_str().unwrap(),
    ]);
    assert_eq!(v["variance_type"], "fixed_large");
    let s = &v["steps"][0];
    let beta = s["beta_t"].as_f64().unwrap();
    assert!((s["sigma"].as_f64().unwrap() - beta.sqrt()).abs() < 1e-15);
    let v = json_of(&[
        "--json",
        "--steps",
        "4",
        "--sampler",
        "inverse",
        "--model",
        nested.to_str().unwrap(),
    ]);
    let cfg = SchedulerConfig {
        num_train_timesteps: 500,
        timestep_spacing: TimestepSpacing::Trailing,
        ..SchedulerConfig::default()
    };
    let table = inverse_table(&cfg, 4).unwrap();
    for (row, s) in v["steps"].as_array().unwrap().iter().zip(&table) {
        assert_eq!(row["t"].as_i64().unwrap(), s.t);
        assert_eq!(row["from_t"].as_i64().unwrap(), s.from_t);
    }
    std::fs::remove_dir_all(&nested).ok();
    std::fs::remove_dir_all(&flat).ok();
}

#[test]
fn human_table_has_one_row_per_step() {
    let out = ddim(&["--steps", "7"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .collect();
    assert_eq!(rows.len(), 7, "{text}");
    assert!(rows[0].split_whitespace().nth(1) == Some("852"), "{text}");
}

#[test]
fn bad_input_is_one_clear_error() {
    let e = failure(&["--steps", "0"]);
    assert!(e.contains("at least 1"), "{e}");
    let e = failure(&["--eta", "1.5"]);
    assert!(e.contains("eta") && e.contains("1.5"), "{e}");
    let e = failure(&["--steps", "2000"]);
    assert!(e.contains("2000"), "{e}");
    let e = failure(&["--sampler", "inverse", "--spacing", "linspace"]);
    assert!(e.contains("leading or trailing"), "{e}");
    let dir = temp_dir("bad");
    let file = dir.join("scheduler_config.json");
    std::fs::write(&file, r#"{"prediction_type": "noise"}"#).unwrap();
    let e = failure(&["--scheduler-config", file.to_str().unwrap()]);
    assert!(
        e.contains("prediction_type")
            && e.contains("epsilon, sample, v_prediction")
            && e.contains(file.to_str().unwrap()),
        "{e}"
    );
    let e = failure(&[
        "--scheduler-config",
        dir.join("missing.json").to_str().unwrap(),
    ]);
    assert!(e.contains("missing.json"), "{e}");
    // clap rejects a bad --spacing value, naming the allowed ones
    let out = ddim(&["--spacing", "even"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("leading") && e.contains("quad"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--sampler dpm-solver++ | unipc --json`: per step the timestep, σ, λ, order and the update's
/// multipliers, equal to the library's table; a config's `_class_name` selects the solver; bad
/// solver options fail naming the option and what is allowed.
#[test]
fn solver_tables_and_their_options() {
    use ddim_wgpu::schedule::{MultistepTable, SolverFamily, SolverKeys, SolverOptions};
    let v = json_of(&[
        "--sampler",
        "unipc",
        "--steps",
        "10",
        "--solver-order",
        "3",
        "--json",
    ]);
    assert_eq!(v["sampler"], "unipc");
    assert_eq!(v["solver"]["solver_order"], 3);
    assert_eq!(v["timestep_spacing"], "linspace");
    let keys = SolverKeys {
        solver_order: Some(3),
        ..Default::default()
    };
    let cfg = SchedulerConfig::default();
    let opts = SolverOptions::resolve(SolverFamily::UniPc, &cfg.solver_keys, &keys).unwrap();
    let table = MultistepTable::new(&cfg, &opts, 10).unwrap();
    let rows = v["steps"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    for (row, step) in rows.iter().zip(&table.steps) {
        assert_eq!(row["t"], step.t);
        assert_eq!(row["order"], step.order);
        // serde_json parses decimals to within an ulp, not always exactly.
        let a = row["predictor"]["sample"].as_f64().unwrap();
        assert!(
            (a - step.predictor.sample).abs() <= 1e-15,
            "{a} vs {}",
            step.predictor.sample
        );
        assert_eq!(row["corrector_order"], step.corrector_order);
    }
    assert!(rows[0]["corrector"].is_null() && !rows[1]["corrector"].is_null());

    let dir = temp_dir("solver_class");
    let path = dir.join("scheduler_config.json");
    std::fs::write(
        &path,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 1,
            "lambda_min_clipped": -Infinity}"#,
    )
    .unwrap();
    let v = json_of(&[
        "--scheduler-config",
        path.to_str().unwrap(),
        "--steps",
        "5",
        "--json",
    ]);
    assert_eq!(v["sampler"], "dpm-solver++");
    assert_eq!(v["solver"]["solver_order"], 1);

    let e = failure(&["--sampler", "dpm-solver++", "--solver-order", "4"]);
    assert!(e.contains("solver_order") && e.contains("1, 2, 3"), "{e}");
    let e = failure(&["--sampler", "unipc", "--solver-type", "midpoint"]);
    assert!(e.contains("solver_type") && e.contains("bh1, bh2"), "{e}");
    let e = failure(&["--sampler", "ddim", "--solver-order", "2"]);
    assert!(e.contains("solver_order"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// PNDM, the SDE solver and the consistency sampler: each config's `_class_name` picks its
/// table, the flags reach it, and options that do not apply are refused with one line.
#[test]
fn pndm_sde_and_consistency_tables() {
    let dir = temp_dir("wave3");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let pndm = write("pndm.json", r#"{"_class_name": "PNDMScheduler"}"#);
    let v = json_of(&["--json", "--steps", "10", "--scheduler-config", &pndm]);
    assert_eq!(v["sampler"], "pndm");
    let ts: Vec<i64> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["t"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ts,
        [
            900, 850, 850, 800, 800, 750, 750, 700, 700, 650, 650, 600, 600, 500, 400, 300, 200,
            100, 0
        ]
    );
    let v = json_of(&[
        "--json",
        "--steps",
        "10",
        "--scheduler-config",
        &pndm,
        "--skip-prk-steps",
    ]);
    assert_eq!(v["steps"].as_array().unwrap().len(), 11);
    assert_eq!(v["solver"]["skip_prk_steps"], true);

    let cm = write(
        "cm.json",
        r#"{"_class_name": "CMStochasticIterativeScheduler"}"#,
    );
    let v = json_of(&["--json", "--scheduler-config", &cm, "--timesteps", "22,0"]);
    assert_eq!(v["sampler"], "consistency");
    assert_eq!(v["init_noise_sigma"], 80.0);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    // diffusers' numbers (wave-3 reference §8): t = 250 ln σ, σ in f32.
    assert!((steps[0]["t"].as_f64().unwrap() - 1095.5066586684702).abs() < 1e-9);
    assert!((steps[1]["t"].as_f64().unwrap() - 80.949485).abs() < 1e-5);
    assert!((steps[1]["sigma"].as_f64().unwrap() - 1.382368).abs() < 1e-6);
    for key in ["c_in", "c_skip", "c_out", "noise"] {
        assert!(steps[0][key].is_number(), "{key}");
    }

    let v = json_of(&[
        "--json",
        "--sampler",
        "dpm-solver++",
        "--algorithm-type",
        "sde-dpmsolver++",
        "--steps",
        "5",
    ]);
    assert_eq!(v["solver"]["algorithm_type"], "sde-dpmsolver++");
    assert_eq!(v["draws_noise"], true);
    assert!(v["steps"][0]["noise"].as_f64().unwrap() > 0.0);
    assert_eq!(v["steps"][4]["noise"].as_f64().unwrap(), 0.0);

    let e = failure(&["--sampler", "ddim", "--timesteps", "22,0"]);
    assert!(e.contains("--timesteps") && e.lines().count() == 1, "{e}");
    let e = failure(&["--sampler", "ddim", "--skip-prk-steps"]);
    assert!(e.contains("skip_prk_steps"), "{e}");
    let e = failure(&["--sampler", "consistency", "--timesteps", "0,22"]);
    assert!(e.contains("descending"), "{e}");
    let e = failure(&["--sampler", "consistency", "--solver-order", "2"]);
    assert!(
        e.contains("solver_order") && e.contains("consistency"),
        "{e}"
    );
    let e = failure(&[
        "--sampler",
        "dpm-solver++",
        "--algorithm-type",
        "sde-dpmsolver",
        "--final-sigmas-type",
        "sigma_min",
        "--solver-order",
        "3",
    ]);
    assert!(
        e.contains("sde-dpmsolver") && e.contains("solver_order"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
