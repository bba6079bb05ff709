//! Classifier-free guidance equals diffusers' guidance loop image for image with `--rng torch`
//! (fixtures from tools/export_guidance_fixtures.py: a tiny class-conditional model with the null
//! label 3 declared by `"_null_class_label"`, diffusers' DDIM (eta 0, 0.5, 1; ε and v), DPM-Solver++,
//! UniPC, Euler ancestral and Heun schedulers, the unconditional half first, `rescale_noise_cfg`
//! where the case has a rescale), on the CPU reference and on every GPU backend (the doubled
//! batch through the plan, the combination fused into the updates), in whole-batch chunks and in
//! chunks of one or two images (the noise plan slices the guided batch's draws of shape B).

mod common;

use ddim_wgpu::model::{tensor_io, Model};
use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
use ddim_wgpu::rng::RngKind;
use ddim_wgpu::sampling::{Guidance, SampleSettings, SamplerKind};
use ddim_wgpu::schedule::SchedulerConfig;
use ddim_wgpu::ClassLabels;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/tiny_cond")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join("guidance_cases.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cases = cases.as_array().unwrap().clone();
    assert_eq!(cases.len(), 12);
    cases
}

/// The class-conditional model with the case's scheduler config (the model's with the case's
/// keys, `_class_name` choosing the sampler as `ddim sample` does).
fn pipeline_for(case: &Value) -> Pipeline {
    let model = Model::load(&dir()).unwrap();
    assert_eq!(
        model.config.null_class_label,
        Some(3),
        "the declared null label"
    );
    let path = dir().join("scheduler/scheduler_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (k, v) in case["config"].as_object().unwrap() {
        config[k] = v.clone();
    }
    Pipeline::new(model, SchedulerConfig::from_json(&config).unwrap()).unwrap()
}

fn request(pipe: &Pipeline, case: &Value, batch: usize, null_class: Option<u32>) -> SampleRequest {
    let labels: Vec<u32> = case["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    SampleRequest {
        settings: SampleSettings {
            sampler: SamplerKind::from_config(&pipe.scheduler),
            steps: case["steps"].as_u64().unwrap() as usize,
            eta: case["step_kwargs"]["eta"].as_f64().unwrap_or(0.0),
            ..Default::default()
        },
        noise: Noise::Seed {
            seed: case["seed"].as_u64().unwrap(),
            num: labels.len(),
        },
        batch: Some(batch),
        rng: RngKind::Torch,
        labels: Some(ClassLabels::Indices(labels)),
        guidance: Guidance {
            scale: case["guidance_scale"].as_f64().unwrap(),
            rescale: case["guidance_rescale"].as_f64().unwrap(),
            null_class,
        },
        ..Default::default()
    }
}

/// Largest |ours − diffusers| over the images in [0, 1] (ours NCHW in [-1, 1], theirs NHWC).
fn max_abs_vs_diffusers(name: &str, x0: &ddim_wgpu::Tensor) -> f32 {
    let want = tensor_io::read_tensor(&dir().join("guidance_expected.safetensors"), name).unwrap();
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

/// Samples every case on `device` in whole-batch chunks and in chunks of `small`.
pub fn check_all(device: &Device, what: &str, small: usize) {
    let mut worst_all = 0.0f32;
    for (k, case) in cases().iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let pipe = pipeline_for(case);
        let num = case["labels"].as_array().unwrap().len();
        // Every other case names the null label on the command line instead of the config's.
        let null = (k % 2 == 1).then_some(3);
        for batch in [num, small] {
            let x0 = pipe
                .sample(device, &request(&pipe, case, batch, null))
                .unwrap_or_else(|e| panic!("{what} {name}: {e:#}"));
            let worst = max_abs_vs_diffusers(name, &x0);
            println!("{what} {name} (batch {batch}): max abs difference {worst:.2e}");
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
fn cpu_guidance_reproduces_diffusers_loops() {
    check_all(&Device::Cpu, "cpu", 1);
}

#[test]
fn gpu_guidance_reproduces_diffusers_loops() {
    common::for_each_backend(|backend, _| {
        let device = common::device(backend).unwrap();
        check_all(&device, &format!("{backend:?}"), 2);
    });
}

/// Guidance at scale 1 is off: the same images as the conditional model alone; and a guided run
/// differs from it (the null half is really used).
#[test]
fn scale_one_is_the_conditional_model() {
    let case = &cases()[0];
    let pipe = pipeline_for(case);
    let mut plain = request(&pipe, case, 2, None);
    plain.guidance = Guidance::default();
    let off = pipe.sample(&Device::Cpu, &plain).unwrap();
    let guided = pipe
        .sample(&Device::Cpu, &request(&pipe, case, 2, None))
        .unwrap();
    let diff = ddim_wgpu::tensor::max_abs_diff(&off.data, &guided.data).0;
    assert!(diff > 0.1, "guidance changed the images by only {diff}");
}
