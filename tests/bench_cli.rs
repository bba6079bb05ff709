//! Smoke tests of `ddim bench` at tiny sizes: the commands run and their JSON follows the
//! documented `ddim-bench/1` schema. Timings are never asserted (only that they are positive
//! numbers where something was measured).

use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

/// One benchmark at a time: they share two cores (and lavapipe uses every core it sees).
static SERIAL: Mutex<()> = Mutex::new(());

fn ddim(args: &[&str]) -> Output {
    ddim_env(args, &[])
}

fn ddim_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let xdg = std::env::temp_dir().join("ddim-wgpu-xdg");
    let _ = std::fs::create_dir_all(&xdg);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ddim"));
    cmd.env(
        "DDIM_TUNE_CACHE",
        concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
    );
    cmd.args(args).envs(env.iter().copied());
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", xdg);
    }
    cmd.output().expect("running ddim")
}

fn ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Runs a GPU bench and parses its JSON; None (skip) when no adapter exists outside CI.
fn gpu_json(args: &[&str]) -> Option<Value> {
    gpu_json_env(args, &[])
}

fn gpu_json_env(args: &[&str], env: &[(&str, &str)]) -> Option<Value> {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = ddim_env(args, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("no GPU adapter") && !ci() {
        eprintln!("[bench_cli] SKIPPING (no GPU adapter): {stderr}");
        return None;
    }
    assert!(out.status.success(), "ddim {args:?} failed: {stderr}");
    Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ddim {args:?} printed invalid JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    }))
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

fn summary(v: &Value, what: &str) {
    for k in ["median", "min", "max", "q1", "q3"] {
        positive(&v[k], &format!("{what}.{k}"));
    }
    let (min, med, max) = (
        v["min"].as_f64().unwrap(),
        v["median"].as_f64().unwrap(),
        v["max"].as_f64().unwrap(),
    );
    assert!(min <= med && med <= max, "{what}: {v}");
    assert!(v["n"].as_u64().unwrap() >= 1, "{what}.n");
}

/// Fields every document carries.
fn common(doc: &Value, device: &str) {
    assert_eq!(doc["schema"], "ddim-bench/1");
    assert_eq!(doc["build"]["crate_name"], "ddim-wgpu");
    assert!(doc["build"]["version"].is_string());
    assert!(doc["host"]["cpus"].as_u64().unwrap() >= 1);
    for k in ["name", "backend", "driver", "device_type"] {
        assert!(doc["adapter"][k].is_string(), "adapter.{k}: {doc}");
    }
    assert!(doc["adapter"]["timestamp_query"].is_boolean());
    assert_eq!(doc["settings"]["device"], device);
    for k in ["batch", "steps", "warmup", "iters", "kernel_iters"] {
        assert!(doc["settings"][k].is_u64(), "settings.{k}");
    }
}

fn kernel_row(row: &Value, what: &str) {
    for k in ["name", "kernel"] {
        assert!(row[k].is_string(), "{what}.{k}: {row}");
    }
    for k in ["calls", "flops", "bytes"] {
        assert!(row[k].is_u64(), "{what}.{k}: {row}");
    }
    positive(&row["time_ms"], &format!("{what}.time_ms"));
    for k in ["share", "gflops", "gbps"] {
        assert!(
            row[k].as_f64().is_some_and(|x| x >= 0.0),
            "{what}.{k}: {row}"
        );
    }
}

#[test]
fn gemm_reports_the_best_rate_and_its_table() {
    let Some(doc) = gpu_json(&[
        "bench",
        "--gemm",
        "--gemm-size",
        "40x24x36",
        "--warmup",
        "0",
        "--iters",
        "2",
        "--json",
    ]) else {
        return;
    };
    common(&doc, "gpu");
    let best = positive(&doc["gemm_gflops"], "gemm_gflops");
    let table = doc["gemm"]["table"].as_array().expect("gemm.table");
    assert_eq!(table.len(), 4, "one row per GEMM kernel: {table:?}");
    let mut top: f64 = 0.0;
    for row in table {
        assert_eq!(
            (row["m"].as_u64(), row["n"].as_u64(), row["k"].as_u64()),
            (Some(40), Some(24), Some(36))
        );
        summary(&row["time_ms"], "gemm row time_ms");
        top = top.max(positive(&row["gflops"], "gemm row gflops"));
        assert!(row["kernel"].is_string() && row["pipeline"].is_string());
    }
    assert_eq!(best, top, "gemm_gflops is the table's best");
    assert_eq!(doc["gemm"]["best"]["gflops"].as_f64(), Some(best));
    assert!(doc.get("run").is_none() && doc.get("forward_gflops").is_none());
    assert!(doc["timing"].is_string());
}

#[test]
fn wall_clock_fallback_is_flagged() {
    let args = [
        "bench",
        "--gemm",
        "--gemm-size",
        "16x8x12",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--json",
    ];
    let Some(doc) = gpu_json_env(&args, &[("DDIM_PROFILE_WALLCLOCK", "1")]) else {
        return;
    };
    assert_eq!(doc["timing"], "wall_clock_per_pass");
    positive(&doc["gemm_gflops"], "gemm_gflops");
    if doc["adapter"]["timestamp_query"] == true {
        let doc = gpu_json(&args).expect("same adapter");
        assert_eq!(doc["timing"], "gpu_timestamps");
    }
}

#[test]
fn whole_run_on_the_gpu_reports_forward_rate_kernels_and_memory() {
    let Some(doc) = gpu_json(&[
        "bench", "--arch", "mnist", "--batch", "1", "--steps", "2", "--warmup", "0", "--iters",
        "1", "--json",
    ]) else {
        return;
    };
    common(&doc, "gpu");
    let model = &doc["model"];
    assert_eq!(model["image"], serde_json::json!([1, 32, 32]));
    let params = model["params"].as_u64().expect("model.params");
    assert_eq!(model["weights_bytes"].as_u64(), Some(4 * params));
    positive(&model["gflop_per_image"], "gflop_per_image");
    let fg = positive(&doc["forward_gflops"], "forward_gflops");
    let run = &doc["run"];
    assert_eq!(run["forward_gflops"].as_f64(), Some(fg));
    summary(&run["run_ms"], "run_ms");
    summary(&run["forward_ms"], "forward_ms");
    summary(&run["host_encode_ms"], "host_encode_ms");
    positive(&run["images_per_s"], "images_per_s");
    positive(&run["step_ms"], "step_ms");
    let kernels = run["kernels"].as_array().expect("run.kernels");
    let dispatches = run["dispatches"].as_array().expect("run.dispatches");
    assert!(!kernels.is_empty() && dispatches.len() >= kernels.len());
    for k in kernels {
        kernel_row(k, "kernel");
    }
    for d in dispatches {
        kernel_row(d, "dispatch");
        assert_eq!(d["calls"].as_u64(), Some(1));
    }
    let calls: u64 = kernels.iter().map(|k| k["calls"].as_u64().unwrap()).sum();
    assert_eq!(
        calls as usize,
        dispatches.len(),
        "per-kernel rows cover every dispatch"
    );
    let flops: u64 = dispatches
        .iter()
        .map(|d| d["flops"].as_u64().unwrap())
        .sum();
    assert!(flops > 0);
    let mem = &run["memory"];
    for k in [
        "weights_bytes",
        "largest_live_activations_bytes",
        "budget_bytes",
    ] {
        assert!(mem[k].as_u64().is_some_and(|b| b > 0), "memory.{k}: {mem}");
    }
    assert!(mem["activation_buffers_bytes"]
        .as_u64()
        .is_some_and(|b| b > 0));
    let targets = doc["targets"].as_array().expect("targets");
    assert!(targets
        .iter()
        .any(|t| t["name"] == "host_encode_fraction" && t["met"].is_boolean()));
    // Which variant each shape ran with (tuning is on by default).
    let tuning = &doc["tuning"];
    assert_eq!(tuning["mode"], "auto", "{tuning}");
    let choices = tuning["choices"].as_array().expect("tuning.choices");
    assert!(choices.iter().any(|c| c["kernel"] == "conv2d"), "{tuning}");
    for c in choices {
        assert!(c["shape"].is_string() && c["variant"].is_string(), "{c}");
    }

    // The same report as if from two machines, side by side.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("compare");
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, chart) = (
        dir.join("a.json"),
        dir.join("b.json"),
        dir.join("chart.png"),
    );
    let mut other = doc.clone();
    other["adapter"]["name"] = "Some Other GPU".into();
    std::fs::write(&a, doc.to_string()).unwrap();
    std::fs::write(&b, serde_json::json!([other]).to_string()).unwrap();
    let _ = std::fs::remove_file(&chart);
    let out = ddim(&[
        "bench",
        "--compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--chart",
        chart.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = doc["adapter"]["name"].as_str().unwrap();
    assert!(
        text.contains(name) && text.contains("Some Other GPU"),
        "{text}"
    );
    assert!(text.contains("images/s"), "{text}");
    let png = image::open(&chart).expect("the chart is a PNG");
    assert!(png.width() > 200 && png.height() > 200);
}

#[test]
fn tune_times_once_then_reads_its_cache() {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tune-cli.json");
    let _ = std::fs::remove_file(&cache);
    let env = [("DDIM_TUNE_CACHE", cache.to_str().unwrap())];
    let args = ["tune", "--arch", "mnist", "--batch", "2", "--json"];
    let Some(first) = gpu_json_env(&args, &env) else {
        return;
    };
    assert_eq!(first["from_cache"], false, "{first}");
    positive(&first["seconds"], "seconds");
    assert!(first["adapter"].is_string());
    let choices = first["choices"].as_array().expect("choices");
    assert!(choices.len() >= 10, "{first}");
    for c in choices.iter().filter(|c| c["source"] == "measured") {
        let candidates = c["candidates"].as_array().unwrap();
        assert!(candidates.len() >= 2, "{c}");
        let best = candidates
            .iter()
            .min_by(|x, y| {
                x["ms"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&y["ms"].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(best["variant"], c["variant"], "{c}");
    }
    let second = gpu_json_env(&args, &env).unwrap();
    assert_eq!(second["from_cache"], true, "{second}");
    assert_eq!(second["seconds"].as_f64(), Some(0.0));
    assert_eq!(second["choices"].as_array().unwrap().len(), choices.len());

    let out = ddim_env(&["tune", "--arch", "mnist", "--tune", "off"], &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to do"));
}

#[test]
fn kernel_micro_benchmarks_cover_the_model() {
    let Some(doc) = gpu_json(&[
        "bench",
        "--arch",
        "mnist",
        "--batch",
        "1",
        "--kernels",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--json",
    ]) else {
        return;
    };
    common(&doc, "gpu");
    let cases = doc["kernels"].as_array().expect("kernels");
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("burn-comparison"))
            .count(),
        ddim_wgpu::gpu::ConvVariant::ALL.len(),
        "one burn-comparison conv per conv variant"
    );
    assert!(names.iter().any(|n| n.starts_with("conv 3x3")), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("group_norm")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("attention")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("ddim_update")),
        "{names:?}"
    );
    for c in cases {
        positive(&c["time_ms"], "case time_ms");
        summary(&c["spread_ms"], "case spread_ms");
        for d in c["dispatches"].as_array().unwrap() {
            kernel_row(d, "case dispatch");
        }
    }
    assert!(doc["targets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "conv_vs_burn"));
}

#[test]
fn cpu_reference_run() {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = ddim(&[
        "bench", "--device", "cpu", "--arch", "mnist", "--batch", "1", "--steps", "1", "--warmup",
        "0", "--iters", "1", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    common(&doc, "cpu");
    assert_eq!(doc["adapter"]["backend"], "cpu-reference");
    positive(&doc["forward_gflops"], "forward_gflops");
    positive(&doc["run"]["images_per_s"], "images_per_s");
    assert!(doc.get("timing").is_none() && doc["run"].get("host_encode_ms").is_none());
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = ddim(&["bench", "--gemm", "--gemm-size", "0x4x4"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MxNxK"));
    let out = ddim(&["bench", "--device", "cpu", "--gemm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device cpu"));
    let out = ddim(&["bench", "--batch", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch"));
}

/// The timed runs use the sampler asked for: the multistep solvers' fused update runs there too.
#[test]
fn whole_runs_with_each_solver() {
    for sampler in ["dpm-solver++", "unipc"] {
        let Some(doc) = gpu_json(&[
            "bench",
            "--arch",
            "mnist",
            "--batch",
            "1",
            "--steps",
            "3",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--kernel-iters",
            "1",
            "--sampler",
            sampler,
            "--solver-order",
            "3",
            "--json",
        ]) else {
            return;
        };
        assert_eq!(doc["settings"]["sampler"], sampler);
        positive(&doc["run"]["images_per_s"], "images_per_s");
    }
}
