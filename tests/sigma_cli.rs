//! The σ-space samplers on the command line: `ddim schedule --sampler euler|euler-ancestral|heun|
//! lms --json` (timesteps, σ and multipliers as the library computes them), the sampler a
//! config's `_class_name` names as the default, options a sampler lacks refused with one line,
//! and `ddim sample` with each of them on the CPU reference (byte-identical reruns).

use std::path::PathBuf;
use std::process::{Command, Output};

use ddim_wgpu::schedule::{
    SchedulerConfig, SigmaKeys, SigmaOptions, SigmaSampler, SigmaTable, SolverKeys,
};
use serde_json::Value;

fn ddim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddim"))
        .env(
            "DDIM_TUNE_CACHE",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
        )
        .args(args)
        .output()
        .expect("running ddim")
}

fn json_of(args: &[&str]) -> Value {
    let out = ddim(args);
    assert!(
        out.status.success(),
        "ddim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// The one-line error of a refused command.
fn failure(args: &[&str]) -> String {
    let out = ddim(args);
    assert_eq!(out.status.code(), Some(1), "ddim {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    err
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddim_sigma_cli_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn schedule_json_prints_every_evaluation_as_the_library_computes_it() {
    let v = json_of(&[
        "schedule",
        "--sampler",
        "heun",
        "--steps",
        "5",
        "--use-karras-sigmas",
        "true",
        "--json",
    ]);
    assert_eq!(v["sampler"], "heun");
    assert_eq!(v["model_evaluations"], 9);
    let cfg = SchedulerConfig::default();
    let solver = SolverKeys {
        use_karras_sigmas: Some(true),
        ..Default::default()
    };
    let opts =
        SigmaOptions::resolve(SigmaSampler::Heun, &cfg, &solver, &SigmaKeys::default()).unwrap();
    let table = SigmaTable::new(&cfg, &opts, 5).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), table.steps.len());
    // serde_json's default float parser is not correctly rounded: equal to the last bits or so.
    let same = |got: &Value, want: f64| {
        let g = got.as_f64().unwrap();
        assert!((g - want).abs() <= 1e-15 * want.abs(), "{g} vs {want}");
    };
    for (row, s) in steps.iter().zip(&table.steps) {
        assert_eq!(row["t"].as_f64().unwrap() as f32, s.t);
        same(&row["sigma"], s.sigma);
        same(&row["sigma_next"], s.sigma_next);
        let derivs = row["derivatives"].as_array().unwrap();
        for (g, &w) in derivs.iter().zip(&s.derivs) {
            same(g, w);
        }
    }
    // Karras σ give fractional timesteps; the evaluations of a Heun step share theirs.
    assert!(table.timesteps.iter().any(|t| t.fract() != 0.0));
    assert_eq!(table.steps[1].t, table.steps[2].t);
    assert_eq!(
        v["init_noise_sigma"].as_f64().unwrap() as f32,
        table.init_noise_sigma
    );
}

#[test]
fn the_config_class_names_the_default_sampler() {
    let dir = temp_dir("class");
    for (class, name) in [
        ("EulerDiscreteScheduler", "euler"),
        ("EulerAncestralDiscreteScheduler", "euler-ancestral"),
        ("HeunDiscreteScheduler", "heun"),
        ("LMSDiscreteScheduler", "lms"),
    ] {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, format!(r#"{{"_class_name": "{class}"}}"#)).unwrap();
        let v = json_of(&[
            "schedule",
            "--scheduler-config",
            path.to_str().unwrap(),
            "--steps",
            "4",
            "--json",
        ]);
        assert_eq!(v["sampler"], name, "{class}");
        assert_eq!(v["options"]["_class_name"], class);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn options_a_sampler_lacks_are_refused_with_one_line() {
    let e = failure(&["schedule", "--sampler", "heun", "--s-churn", "1"]);
    assert!(e.contains("s_churn") && e.contains("heun"), "{e}");
    let e = failure(&["schedule", "--sampler", "ddim", "--use-beta-sigmas", "true"]);
    assert!(e.contains("use_beta_sigmas"), "{e}");
    let e = failure(&[
        "schedule",
        "--sampler",
        "euler-ancestral",
        "--use-karras-sigmas",
        "true",
    ]);
    assert!(e.contains("use_karras_sigmas"), "{e}");
    let e = failure(&["schedule", "--sampler", "lms", "--solver-order", "2"]);
    assert!(e.contains("solver_order") && e.contains("lms"), "{e}");
    let e = failure(&["schedule", "--sampler", "euler", "--eta", "0.5"]);
    assert!(e.contains("eta"), "{e}");
    let e = failure(&[
        "sample",
        "--sampler",
        "ddim",
        "--s-churn",
        "1",
        "--device",
        "cpu",
        "-n",
        "1",
        "--steps",
        "2",
    ]);
    assert!(e.contains("s_churn") && e.contains("ddim"), "{e}");
}

#[test]
fn sample_runs_each_sigma_sampler_and_reruns_byte_identically() {
    let dir = temp_dir("sample");
    for sampler in ["euler", "euler-ancestral", "heun", "lms"] {
        let run = |name: &str| {
            let out = dir.join(format!("{sampler}-{name}.png"));
            let o = ddim(&[
                "sample",
                "--sampler",
                sampler,
                "--steps",
                "3",
                "-n",
                "2",
                "--device",
                "cpu",
                "--quiet",
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(
                o.status.success(),
                "{sampler}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::fs::read(out).unwrap()
        };
        assert_eq!(run("a"), run("b"), "{sampler}: reruns differ");
    }
    std::fs::remove_dir_all(&dir).ok();
}
