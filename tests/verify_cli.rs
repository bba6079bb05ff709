//! `ddim verify` end to end: green on a fixture model (exit 0, a per-layer table), and a non-zero
//! exit naming the failing layers when the tolerance cannot be met.

mod common;

use std::process::Command;

use ddim_wgpu::gpu::BackendChoice;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/unet/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn verify(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddim"))
        .env(
            "DDIM_TUNE_CACHE",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
        )
        .arg("verify")
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("running ddim verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `f` only when the Vulkan adapter exists (required under CI=true, see tests/common).
fn with_vulkan(f: impl FnOnce()) {
    let _guard = common::gpu_lock();
    if common::context(BackendChoice::Vulkan).is_some() {
        f();
    }
}

#[test]
fn verify_is_green_on_a_fixture() {
    with_vulkan(|| {
        let model = fixture("attn_heads_pipeline");
        let (ok, text) = verify(&[
            "--model",
            &model,
            "--batch",
            "2",
            "--steps",
            "2",
            "--backend",
            "vulkan",
        ]);
        assert!(ok, "ddim verify failed:\n{text}");
        for expected in [
            "time_embedding",
            "mid_block.attentions.0",
            "conv_out",
            "sample (2 DDIM steps",
            "OK:",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    });
}

#[test]
fn verify_json_reports_every_layer() {
    with_vulkan(|| {
        let model = fixture("no_mid_pipeline");
        let (ok, text) = verify(&[
            "--model",
            &model,
            "--steps",
            "0",
            "--backend",
            "vulkan",
            "--json",
        ]);
        assert!(ok, "ddim verify failed:\n{text}");
        let report: serde_json::Value = serde_json::from_str(&text).expect("JSON report");
        let layers = report["layers"].as_array().unwrap();
        assert!(layers.len() > 10, "{text}");
        for l in layers {
            let rel = l["rel_l2"].as_f64().unwrap();
            assert!(rel <= 1e-4, "{}: rel L2 {rel}", l["name"]);
        }
        assert!(report["sample"].is_null());
        assert_eq!(report["ok"], true);
    });
}

#[test]
fn verify_fails_above_tolerance() {
    with_vulkan(|| {
        let model = fixture("no_mid_pipeline");
        let (ok, text) = verify(&[
            "--model",
            &model,
            "--steps",
            "0",
            "--backend",
            "vulkan",
            "--tolerance",
            "1e-12",
        ]);
        assert!(!ok, "an unreachable tolerance must fail:\n{text}");
        assert!(
            text.contains("above tolerance") && text.contains("verify failed"),
            "{text}"
        );
    });
}

#[test]
fn verify_rejects_bad_arguments() {
    let (ok, text) = verify(&["--batch", "0"]);
    assert!(!ok && text.contains("--batch"), "{text}");
    let (ok, text) = verify(&["--model", "/nonexistent/model"]);
    assert!(!ok && text.contains("/nonexistent/model"), "{text}");
}

/// `--precision f16`: green with the f16 tolerances on lavapipe (SHADER_F16), and refused on
/// llvmpipe's GL, which has no SHADER_F16, naming the feature and what to use instead.
#[test]
fn verify_in_f16_uses_f16_tolerances_and_gl_refuses_it() {
    with_vulkan(|| {
        let model = fixture("attn_heads_pipeline");
        let args = [
            "--model",
            &model,
            "--batch",
            "2",
            "--steps",
            "2",
            "--precision",
            "f16",
        ];
        let (ok, text) = verify(&[&args[..], &["--backend", "vulkan"]].concat());
        assert!(ok, "ddim verify --precision f16 failed:\n{text}");
        assert!(
            text.contains("f16 storage") && text.contains("within rel L2 5e-3"),
            "{text}"
        );
        // The f32 tolerance is far below what f16 storage gives: an explicit one fails.
        let (ok, text) =
            verify(&[&args[..], &["--backend", "vulkan", "--tolerance", "1e-6"]].concat());
        assert!(!ok, "f16 passed a 1e-6 tolerance:\n{text}");
        if common::context(BackendChoice::Gl).is_some() {
            let (ok, text) = verify(&[&args[..], &["--backend", "gl"]].concat());
            assert!(
                !ok && text.contains("SHADER_F16") && text.contains("--precision f32"),
                "{text}"
            );
        }
    });
}

/// The new block types layer by layer on both backends: a class-conditional model with
/// resampling resnets and scale-shift (with labels, and its short sample), the NCSN++-like skip
/// model with a Fourier embedding (its image path reported per block, the σ division as the
/// last layer; no sample, as DDIM ends at t = 0), and a learned time embedding.
#[test]
fn verify_is_green_on_the_new_block_types() {
    let _guard = common::gpu_lock();
    for backend in common::backends() {
        if common::context(backend).is_none() {
            continue;
        }
        let name = backend.to_string();
        for (model, class, expected) in [
            (
                "cd_imagenet64_like",
                Some("3,7"),
                &["down_blocks.0.downsamplers.0", "sample (2 DDIM steps"][..],
            ),
            (
                "ncsnpp_skip_fourier",
                None,
                &["up_blocks.0.skip_conv", "divide_by_sigma", "no sample"][..],
            ),
            ("learned_time", Some("1"), &["sample (2 DDIM steps"][..]),
        ] {
            let model_dir = fixture(model);
            let mut args = vec!["--model", &model_dir, "--steps", "2", "--backend", &name];
            if let Some(c) = class {
                args.extend(["--class", c]);
            }
            let (ok, text) = verify(&args);
            assert!(ok, "ddim verify {model} on {name} failed:\n{text}");
            for e in expected.iter().chain(&["OK:"]) {
                assert!(
                    text.contains(e),
                    "{model} on {name}: missing {e:?} in:\n{text}"
                );
            }
        }
    }
}
