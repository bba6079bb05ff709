//! `ddim forward --device cpu` reproduces PyTorch on every U-Net fixture, and `ddim info` /
//! `ddim forward` report bad arguments as one clear line with exit code 1.

use ddim_wgpu::model::tensor_io::read_tensor;
use ddim_wgpu::tensor::rel_l2;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CASES: &[&str] = &[
    "attn_heads_pipeline",
    "cifar_like_flat",
    "gray_f16_legacy",
    "bf16_scale_shift_flat",
    "no_mid_pipeline",
    "uneven_heads_flat",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet")
        .join(name)
}

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

fn timesteps(dir: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    v["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn out_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ddim-cli-{tag}-{}.safetensors", std::process::id()))
}

#[test]
fn forward_reproduces_pytorch_on_every_fixture() {
    for case in CASES {
        let dir = fixture(case);
        let out = out_path(case);
        let o = ddim(&[
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--input",
            dir.join("input.safetensors").to_str().unwrap(),
            "--timestep",
            &timesteps(&dir),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(
            o.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let y = read_tensor(&out, "sample").unwrap();
        let reference = read_tensor(&dir.join("expected.safetensors"), "sample").unwrap();
        assert_eq!(y.shape, reference.shape, "{case}");
        let err = rel_l2(&y.data, &reference.data);
        println!("{case}: ddim forward rel L2 vs PyTorch {err:.2e}");
        assert!(err <= 1e-5, "{case}: rel L2 {err:.3e}");
        std::fs::remove_file(&out).unwrap();
    }
}

/// The model-coverage fixtures (tools/export_unet_model_coverage_fixtures.py) through the
/// command line: `--class`, decimal and negative timesteps, σ for a Fourier model.
#[test]
fn forward_with_class_labels_and_fractional_timesteps_reproduces_pytorch() {
    for (case, class) in [
        ("cd_imagenet64_like", Some("3,7")),
        ("class_timestep", Some("2,517")),
        ("learned_time", Some("0,4")),
        ("ncsnpp_skip_fourier", None),
        ("skip_three_levels", None),
    ] {
        let dir = fixture(case);
        let out = out_path(case);
        let ts = timesteps(&dir);
        let input = dir.join("input.safetensors");
        let mut args = vec![
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--timestep",
            &ts,
            "--allow-any-timestep",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        if let Some(c) = class {
            args.extend(["--class", c]);
        }
        let o = ddim(&args);
        assert!(
            o.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let y = read_tensor(&out, "sample").unwrap();
        let reference = read_tensor(&dir.join("expected.safetensors"), "sample").unwrap();
        let err = rel_l2(&y.data, &reference.data);
        println!("{case}: ddim forward rel L2 vs PyTorch {err:.2e}");
        assert!(err <= 1e-5, "{case}: rel L2 {err:.3e}");
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn forward_refuses_missing_wrong_and_unwanted_class_labels() {
    let input = |case: &str| fixture(case).join("input.safetensors");
    let run_at = |case: &str, t: &str, extra: &[&str]| {
        let dir = fixture(case);
        let out = out_path(&format!("class-{case}"));
        let mut args = vec![
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--timestep",
            t,
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        let x = input(case);
        args.extend(["--input", x.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let o = ddim(&args);
        assert!(!out.exists(), "no output is written on error");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let run = |case: &str, extra: &[&str]| run_at(case, "10", extra);
    let cases: [(&str, &[&str], &str); 6] = [
        (
            "cd_imagenet64_like",
            &[][..],
            "the model is class-conditional (num_class_embeds = 10)",
        ),
        (
            "cd_imagenet64_like",
            &["--class", "10"][..],
            "class label 10 is out of range",
        ),
        (
            "cd_imagenet64_like",
            &["--class", "1,2,3"][..],
            "3 class labels for a batch of 2",
        ),
        (
            "cd_imagenet64_like",
            &["--class", "x"][..],
            "class label \"x\"",
        ),
        (
            "uneven_heads_flat",
            &["--class", "1"][..],
            "the model is not class-conditional",
        ),
        (
            "class_identity",
            &["--class", "1"][..],
            "takes a vector of 24 values per image",
        ),
    ];
    for (case, extra, needle) in cases {
        let err = run(case, extra);
        // The message is one line (clap adds a hint line after its own parse errors).
        let first = err.lines().next().unwrap_or_default();
        assert!(first.contains(needle), "{case} {extra:?}: {err}");
    }
    // A fractional timestep on a learned time embedding is refused, not rounded.
    let err = run_at("learned_time", "10.5", &["--class", "1"]);
    assert!(
        err.contains("learned time embedding takes integer values"),
        "{err}"
    );
}

#[test]
fn one_timestep_is_used_for_the_whole_batch() {
    let dir = fixture("attn_heads_pipeline");
    let input = dir.join("input.safetensors");
    let run = |ts: &str, tag: &str| {
        let out = out_path(tag);
        let o = ddim(&[
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--timestep",
            ts,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let y = read_tensor(&out, "sample").unwrap();
        std::fs::remove_file(&out).unwrap();
        y
    };
    let broadcast = run("321", "bcast");
    let explicit = run("321,321", "explicit");
    assert_eq!(broadcast, explicit);
    let different = run("321,5", "different");
    assert_ne!(broadcast, different);
}

#[test]
fn save_layers_writes_every_layer() {
    let dir = fixture("no_mid_pipeline");
    let (out, layers) = (out_path("sl-out"), out_path("sl-layers"));
    let o = ddim(&[
        "forward",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        dir.join("input.safetensors").to_str().unwrap(),
        "--timestep",
        "123",
        "--out",
        out.to_str().unwrap(),
        "--save-layers",
        layers.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for name in [
        "time_embedding",
        "up_blocks.0.upsamplers.0.conv",
        "conv_out",
    ] {
        let got = read_tensor(&layers, name).unwrap();
        let reference = read_tensor(&dir.join("expected.safetensors"), name).unwrap();
        let err = rel_l2(&got.data, &reference.data);
        assert!(err <= 1e-5, "{name}: rel L2 {err:.3e}");
    }
    let concat = read_tensor(&layers, "up_blocks.1.resnets.0.concat").unwrap();
    assert_eq!(concat.shape, vec![1, 24, 8, 8]);
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&layers).unwrap();
}

#[test]
fn bad_arguments_give_one_clear_line() {
    let dir = fixture("attn_heads_pipeline");
    let input = dir.join("input.safetensors");
    let out = out_path("bad");
    let with = |ts: &'static str, device: &'static str, extra: &[&str]| {
        let mut args = vec![
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--timestep",
            ts,
            "--out",
            out.to_str().unwrap(),
            "--device",
            device,
        ];
        args.extend_from_slice(extra);
        ddim(&args)
    };
    let base = |ts: &'static str, device: &'static str| with(ts, device, &[]);
    for (ts, device, needle) in [
        ("1,2,3", "cpu", "3 timesteps for a batch of 2"),
        ("ten", "cpu", "not a number"),
        ("inf", "cpu", "finite, non-negative"),
        ("5000", "cpu", "outside the model's 0..=999"),
        ("3,1000", "cpu", "--timestep 1000 is outside"),
    ] {
        let o = base(ts, device);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
    assert!(!out.exists(), "no output is written on error");
    // An explicit flag evaluates an untrained timestep anyway.
    let o = with("5000", "cpu", &["--allow-any-timestep"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.exists());
    std::fs::remove_file(&out).unwrap();
    let o = ddim(&["info", "--model", "/nonexistent/model"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn info_reports_parameters_flops_and_dtype() {
    let o = ddim(&[
        "info",
        "--model",
        fixture("gray_f16_legacy").to_str().unwrap(),
        "--layers",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("weight dtype: f16"), "{text}");
    assert!(text.contains("legacy attention names mapped"), "{text}");
    assert!(text.contains("up_blocks.1.attentions.1"), "{text}");

    let o = ddim(&["info", "--arch", "mnist-like", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap();
    let sum: u64 = layers.iter().map(|l| l["params"].as_u64().unwrap()).sum();
    let mlp = v["params"].as_u64().unwrap() - sum; // the time embedding MLP is not a layer
    assert_eq!(mlp, (32 * 128 + 128) + (128 * 128 + 128));
    assert_eq!(layers.last().unwrap()["name"], "conv_out");

    let o = ddim(&["info", "--arch", "cifar10"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("parameters:   35746307 (328 tensors)"),
        "{text}"
    );
    assert!(text.contains("12.444 GFLOP"), "{text}");
}
