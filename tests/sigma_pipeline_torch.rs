//! `--rng torch` runs of the σ-space samplers (Euler, Euler ancestral, Heun, LMS) reproduce
//! diffusers' loop image for image (fixtures from tools/export_sigma_pipeline_fixtures.py: the
//! tiny random-weight pipeline model, the scheduler made with from_config of its config plus each
//! case's keys, latents × init_noise_sigma, scale_model_input, step with a torch generator), on
//! the CPU reference and on every GPU backend. The sampler is the one the config's `_class_name`
//! names, as `ddim sample` picks it.

mod common;

use ddim_wgpu::model::tensor_io;
use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
use ddim_wgpu::rng::RngKind;
use ddim_wgpu::sampling::{SampleSettings, SamplerKind};
use ddim_wgpu::schedule::{SchedulerConfig, SigmaKeys};
use serde_json::Value;
use std::path::Path;

const DIR: &str = common::TINY;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(DIR).join("sigma_cases.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cases = cases.as_array().unwrap().clone();
    assert_eq!(cases.len(), 11);
    cases
}

/// The tiny model with the case's scheduler config: the model's config with the case's keys.
fn pipeline_for(case: &Value) -> Pipeline {
    let mut pipe = common::tiny_pipeline();
    let path = Path::new(DIR).join("scheduler/scheduler_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (k, v) in case["config"].as_object().unwrap() {
        config[k] = v.clone();
    }
    pipe.scheduler = SchedulerConfig::from_json(&config).unwrap();
    pipe
}

fn request(pipe: &Pipeline, case: &Value, batch: usize) -> SampleRequest {
    let sampler = SamplerKind::from_config(&pipe.scheduler);
    let class = case["config"]["_class_name"].as_str().unwrap();
    assert_eq!(
        sampler.sigma_sampler().map(|s| s.class_name()),
        Some(class),
        "the sampler a config's _class_name names"
    );
    let kw = &case["step_kwargs"];
    SampleRequest {
        settings: SampleSettings {
            sampler,
            steps: case["steps"].as_u64().unwrap() as usize,
            sigma: SigmaKeys {
                s_churn: kw["s_churn"].as_f64(),
                s_tmin: kw["s_tmin"].as_f64(),
                s_tmax: kw["s_tmax"].as_f64(),
                s_noise: kw["s_noise"].as_f64(),
                ..Default::default()
            },
            ..Default::default()
        },
        noise: Noise::Seed {
            seed: case["seed"].as_u64().unwrap(),
            num: case["batch"].as_u64().unwrap() as usize,
        },
        batch: Some(batch),
        rng: RngKind::Torch,
        ..Default::default()
    }
}

/// Largest |ours − diffusers| over the images in [0, 1] (ours NCHW in [-1, 1], theirs NHWC).
fn max_abs_vs_diffusers(name: &str, x0: &ddim_wgpu::Tensor) -> f32 {
    let want =
        tensor_io::read_tensor(&Path::new(DIR).join("sigma_expected.safetensors"), name).unwrap();
    let (n, c, h, w) = x0.nchw();
    assert_eq!(want.shape, vec![n, h, w, c]);
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

/// Samples every case on `device` with whole-batch chunks and with `small` images per chunk (the
/// noise plan slices torch's whole-batch draws, the churn and ancestral draws included).
fn check_all(device: &Device, what: &str, small: usize) {
    let mut worst_all = 0.0f32;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let pipe = pipeline_for(&case);
        let num = case["batch"].as_u64().unwrap() as usize;
        for batch in [num, small] {
            let x0 = pipe
                .sample(device, &request(&pipe, &case, batch))
                .unwrap_or_else(|e| panic!("{what} {name}: {e:#}"));
            let worst = max_abs_vs_diffusers(name, &x0);
            println!(
                "{what} {name} (batch {batch}): max abs difference {worst:.2e} (torch f32 vs f64: \
                 {:.1e})",
                case["torch_f32_vs_f64_max_abs"].as_f64().unwrap()
            );
            assert!(
                f64::from(worst) <= common::TORCH_SAMPLE_MAX_ABS,
                "{what} {name} (batch {batch}): max abs difference {worst} > {} in [0, 1]",
                common::TORCH_SAMPLE_MAX_ABS
            );
            worst_all = worst_all.max(worst);
        }
    }
    println!("{what}: worst max abs difference from diffusers {worst_all:.2e}");
}

#[test]
fn cpu_sigma_samplers_reproduce_diffusers_loops() {
    check_all(&Device::Cpu, "cpu", 1);
}

#[test]
fn gpu_sigma_samplers_reproduce_diffusers_loops() {
    common::for_each_backend(|backend, _| {
        let device = common::device(backend).unwrap();
        check_all(&device, &format!("{backend:?}"), 2);
    });
}
