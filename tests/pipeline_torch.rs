//! `--rng torch` reproduces diffusers image for image: DDIMPipeline, DDPMPipeline, and
//! DDPMPipeline's loop with DPMSolverMultistepScheduler / UniPCMultistepScheduler (orders 1–3)
//! (fixtures from tools/export_pipeline_fixtures.py: a small random-weight model, torch seeds),
//! on the CPU reference and on every GPU backend.

mod common;

use ddim_wgpu::model::tensor_io;
use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
use ddim_wgpu::rng::RngKind;
use ddim_wgpu::sampling::{SampleSettings, SamplerKind};
use ddim_wgpu::schedule::SolverKeys;
use serde_json::Value;
use std::path::Path;

const DIR: &str = common::TINY;

fn pipeline() -> Pipeline {
    common::tiny_pipeline()
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(DIR).join("cases.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cases = cases.as_array().unwrap().clone();
    assert_eq!(cases.len(), 10);
    cases
}

fn settings(case: &Value) -> SampleSettings {
    let sampler = match case["sampler"].as_str().unwrap() {
        "ddpm" => SamplerKind::Ddpm,
        "dpm-solver++" => SamplerKind::DpmSolverPlusPlus,
        "unipc" => SamplerKind::Unipc,
        _ => SamplerKind::Ddim,
    };
    SampleSettings {
        sampler,
        steps: case["steps"].as_u64().unwrap() as usize,
        eta: case["eta"].as_f64().unwrap_or(0.0),
        use_clipped_model_output: false,
        solver: SolverKeys {
            solver_order: case["solver_order"].as_u64().map(|k| k as usize),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Largest |ours − diffusers| over the images in [0, 1] (ours NCHW in [-1, 1], theirs NHWC).
fn max_abs_vs_diffusers(pipe: &Pipeline, name: &str, x0: &ddim_wgpu::Tensor) -> f32 {
    let want = tensor_io::read_tensor(&Path::new(DIR).join("expected.safetensors"), name).unwrap();
    let (n, c, h, w) = x0.nchw();
    assert_eq!(want.shape, vec![n, h, w, c]);
    assert_eq!(
        (c, h, w),
        (pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w)
    );
    let mut worst = 0.0f32;
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let ours =
                        (x0.data[((b * c + ch) * h + y) * w + x] / 2.0 + 0.5).clamp(0.0, 1.0);
                    let theirs = want.data[((b * h + y) * w + x) * c + ch];
                    worst = worst.max((ours - theirs).abs());
                }
            }
        }
    }
    worst
}

/// Samples every case on `device` with whole-batch chunks and with `small` images per chunk (an
/// uneven last chunk: the noise plan must slice torch's whole-batch draws), against diffusers.
fn check_all(device: &Device, what: &str, small: usize) {
    let pipe = pipeline();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let num = case["batch"].as_u64().unwrap() as usize;
        for batch in [num, small] {
            let request = SampleRequest {
                settings: settings(&case),
                noise: Noise::Seed {
                    seed: case["seed"].as_u64().unwrap(),
                    num,
                },
                batch: Some(batch),
                rng: RngKind::Torch,
                ..Default::default()
            };
            let x0 = pipe
                .sample(device, &request)
                .unwrap_or_else(|e| panic!("{what} {name}: {e:#}"));
            let worst = max_abs_vs_diffusers(&pipe, name, &x0);
            println!("{what} {name} (batch {batch}): max abs difference {worst:.2e}");
            assert!(
                f64::from(worst) <= common::TORCH_SAMPLE_MAX_ABS,
                "{what} {name} (batch {batch}): max abs difference {worst} > {} in [0, 1]",
                common::TORCH_SAMPLE_MAX_ABS
            );
        }
    }
}

#[test]
fn cpu_sampler_reproduces_diffusers_pipelines() {
    check_all(&Device::Cpu, "cpu", 1);
}

#[test]
fn gpu_sampler_reproduces_diffusers_pipelines() {
    common::for_each_backend(|backend, _| {
        let device = common::device(backend).unwrap();
        check_all(&device, &format!("{backend:?}"), 2);
    });
}

#[test]
fn given_initial_noise_is_the_starting_sample() {
    // x_T of seed 5, given to a run seeded 0, makes seed 5's images (eta 0: no other noise).
    let pipe = pipeline();
    let case = &cases()[0];
    let (num, per) = (2, pipe.per_image());
    let x_t = ddim_wgpu::rng::NoiseSource::new(RngKind::Torch, 5)
        .randn(num * per)
        .unwrap();
    let (c, h, w) = (pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w);
    let request = |noise| SampleRequest {
        settings: settings(case),
        noise,
        rng: RngKind::Torch,
        ..Default::default()
    };
    let given = ddim_wgpu::Tensor::new(vec![num, c, h, w], x_t).unwrap();
    let a = pipe
        .sample(
            &Device::Cpu,
            &request(Noise::Given {
                x_t: given,
                seed: 0,
            }),
        )
        .unwrap();
    let b = pipe
        .sample(&Device::Cpu, &request(Noise::Seed { seed: 5, num }))
        .unwrap();
    let c0 = pipe
        .sample(&Device::Cpu, &request(Noise::Seed { seed: 0, num }))
        .unwrap();
    assert_eq!(a.data, b.data);
    assert_ne!(a.data, c0.data);
}
