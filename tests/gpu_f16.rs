//! Half precision (issue 12): the whole U-Net forward with f16 activations and weights against
//! the f32 CPU reference, on every model fixture and on the two built-in architectures, within
//! `common::F16_FORWARD_TOL`; and a clear refusal where the device has no SHADER_F16 (GL).

mod common;

use std::path::Path;

use ddim_wgpu::cpu::forward::forward_labeled;
use ddim_wgpu::gpu::plan::forward;
use ddim_wgpu::gpu::{GpuWeights, Precision};
use ddim_wgpu::model::tensor_io::read_tensor;
use ddim_wgpu::model::{ClassLabels, Model, UNet, UNet2DConfig, Weights};
use ddim_wgpu::Tensor;

struct Case {
    name: String,
    unet: UNet,
    weights: Weights,
    x: Tensor,
    t: Vec<f32>,
    labels: Option<ClassLabels>,
}

/// Every loadable model fixture, plus the mnist-like and cifar10 architectures with seeded
/// random weights (cifar10: 35.7 M parameters, attention at 16×16).
fn cases() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet");
    let mut dirs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for d in dirs {
        let Ok(model) = Model::load(&d) else {
            continue; // cifar10_formula has no checkpoint
        };
        let x = read_tensor(&d.join("input.safetensors"), "sample").unwrap();
        let (_, _, h, w) = x.nchw();
        let case: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("case.json")).unwrap()).unwrap();
        let t = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let unet = UNet::new(&model.config, h, w).unwrap();
        out.push(Case {
            name: d.file_name().unwrap().to_string_lossy().into_owned(),
            unet,
            weights: model.weights,
            x,
            t,
            labels: common::fixture_labels(&d),
        });
    }
    assert!(out.len() >= 5, "expected the committed model fixtures");
    for (name, config, batch) in [
        ("mnist-like (random weights)", UNet2DConfig::mnist_like(), 3),
        ("cifar10 (random weights)", UNet2DConfig::cifar10(), 1),
    ] {
        let unet = UNet::from_config(&config).unwrap();
        let s = unet.input;
        out.push(Case {
            name: name.into(),
            weights: Weights::random(&config, 7).unwrap(),
            x: Tensor::new(
                vec![batch, s.c, s.h, s.w],
                common::random(batch * s.numel(), 11),
            )
            .unwrap(),
            t: (0..batch).map(|i| 1.0 + 400.0 * i as f32).collect(),
            unet,
            labels: None,
        });
    }
    out
}

#[test]
fn f16_forward_is_within_tolerance_of_the_cpu_reference() {
    let cases = cases();
    let cpu: Vec<Tensor> = cases
        .iter()
        .map(|c| forward_labeled(&c.unet, &c.weights, &c.x, &c.t, c.labels.as_ref()).unwrap())
        .collect();
    let without = common::for_each_f16_backend(|backend, ctx| {
        for (c, want) in cases.iter().zip(&cpu) {
            let w = GpuWeights::upload_as(ctx, &c.unet, &c.weights, Precision::F16).unwrap();
            let f32_bytes = GpuWeights::upload(ctx, &c.unet, &c.weights).unwrap().bytes;
            let y = forward(ctx, &c.unet, &w, &c.x, &c.t, c.labels.as_ref(), None)
                .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
            let err = common::assert_close(
                &format!("{} in f16 on {backend}", c.name),
                &y.data,
                &want.data,
                common::F16_FORWARD_TOL,
            );
            eprintln!(
                "[f16 forward] {backend} {}: rel L2 vs CPU {err:.2e}; weights {} B (f32 {} B)",
                c.name, w.bytes, f32_bytes
            );
            assert!(
                w.bytes < f32_bytes,
                "{}: f16 weights are not smaller",
                c.name
            );
        }
    });
    // Where SHADER_F16 is missing (llvmpipe's GL), f16 is refused with what to do.
    for backend in without {
        let ctx = common::context(backend).unwrap();
        let c = &cases[0];
        let err = GpuWeights::upload_as(ctx, &c.unet, &c.weights, Precision::F16)
            .err()
            .unwrap_or_else(|| panic!("{backend}: f16 accepted without SHADER_F16"));
        let msg = format!("{err:#}");
        assert!(
            msg.contains("SHADER_F16") && msg.contains("--precision f32"),
            "{msg}"
        );
        eprintln!("[f16 forward] {backend}: refused: {msg}");
    }
}
