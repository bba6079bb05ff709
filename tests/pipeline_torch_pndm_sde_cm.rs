//! `--rng torch` reproduces diffusers image for image with PNDM (PNDMPipeline, with and without
//! the Runge–Kutta warm-up), DPM-Solver's SDE variants (DDPMPipeline's loop, the noise drawn by
//! the scheduler from the pipeline's generator at every step) and consistency models
//! (ConsistencyModelPipeline itself: latents × σ_max, c_in scaling, t = 250·ln σ, noise at every
//! step of a multistep run), on the CPU reference and on every GPU backend. Fixtures:
//! tools/export_pndm_sde_cm_pipeline_fixtures.py on the tiny model of
//! tools/export_pipeline_fixtures.py.

mod common;

use ddim_wgpu::model::tensor_io;
use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
use ddim_wgpu::rng::RngKind;
use ddim_wgpu::sampling::{SampleSettings, SamplerKind};
use ddim_wgpu::schedule::SchedulerConfig;
use serde_json::Value;
use std::path::Path;

const DIR: &str = common::TINY;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(DIR).join("pndm_sde_cm_cases.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cases = cases.as_array().unwrap().clone();
    assert_eq!(cases.len(), 9);
    cases
}

/// The tiny model with the case's scheduler config, and the settings its class selects.
fn setup(case: &Value) -> (Pipeline, SampleSettings) {
    let mut pipe = common::tiny_pipeline();
    pipe.scheduler = SchedulerConfig::from_json(&case["scheduler_config"]).unwrap();
    let sampler = SamplerKind::from_config(&pipe.scheduler);
    let want = match case["kind"].as_str().unwrap() {
        "pndm" => SamplerKind::Pndm,
        "sde" => SamplerKind::DpmSolverPlusPlus,
        _ => SamplerKind::Consistency,
    };
    assert_eq!(sampler, want);
    let settings = SampleSettings {
        sampler,
        steps: case["steps"].as_u64().unwrap_or(1) as usize,
        timesteps: case["timesteps"].as_array().map(|a| {
            a.iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect::<Vec<_>>()
        }),
        ..Default::default()
    };
    (pipe, settings)
}

/// Largest |ours − diffusers| over the images in [0, 1] (ours NCHW in [-1, 1], theirs NHWC).
fn max_abs_vs_diffusers(name: &str, x0: &ddim_wgpu::Tensor) -> f32 {
    let want = tensor_io::read_tensor(
        &Path::new(DIR).join("pndm_sde_cm_expected.safetensors"),
        name,
    )
    .unwrap();
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

/// Every case on `device`, in whole-batch chunks and `small` images per chunk (the noise plan
/// slices torch's whole-batch draws), against diffusers.
fn check_all(device: &Device, what: &str, small: usize) {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let (pipe, settings) = setup(&case);
        let num = case["batch"].as_u64().unwrap() as usize;
        for batch in [num, small] {
            let request = SampleRequest {
                settings: settings.clone(),
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
            let worst = max_abs_vs_diffusers(name, &x0);
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
fn cpu_sampler_reproduces_diffusers_pndm_sde_and_consistency() {
    check_all(&Device::Cpu, "cpu", 1);
}

#[test]
fn gpu_sampler_reproduces_diffusers_pndm_sde_and_consistency() {
    let ran = common::for_each_backend(|backend, _| {
        let device = common::device(backend).unwrap();
        check_all(&device, &format!("{backend:?}"), 2);
    });
    common::assert_some_ran(ran);
}

/// The predicted x0 of every step (PNDM: from the model output at its own t; the SDE solver:
/// its data prediction; consistency: the clipped denoised sample), GPU against the CPU
/// reference, with an uneven last chunk. Measured: see the printed worst differences.
#[test]
fn gpu_trajectories_match_the_cpu_reference() {
    use ddim_wgpu::pipeline::TrajectoryFrames;
    let picked = [
        "pndm_prk_s10_b2_seed0",
        "sde_pp_o3_heun_s10_b2_seed3",
        "cm_s3_b2_seed7",
    ];
    let ran = common::for_each_backend(|backend, _| {
        let device = common::device(backend).unwrap();
        for case in cases()
            .iter()
            .filter(|c| picked.contains(&c["name"].as_str().unwrap()))
        {
            let name = case["name"].as_str().unwrap();
            let (pipe, settings) = setup(case);
            let request = SampleRequest {
                settings,
                noise: Noise::Seed { seed: 11, num: 3 },
                batch: Some(2),
                rng: RngKind::Torch,
                trajectory: TrajectoryFrames::Every(1),
                ..Default::default()
            };
            let want = pipe.sample_with(&Device::Cpu, &request).unwrap();
            let got = pipe.sample_with(&device, &request).unwrap();
            let (tw, tg) = (want.trajectory.unwrap(), got.trajectory.unwrap());
            assert_eq!(tw.steps, tg.steps);
            let mut worst = ddim_wgpu::tensor::max_abs_diff(&got.images.data, &want.images.data).0;
            for (g, w) in tg.frames.iter().zip(&tw.frames) {
                worst = worst.max(ddim_wgpu::tensor::max_abs_diff(&g.data, &w.data).0);
            }
            println!(
                "{backend:?} {name}: {} frames, max abs {worst:.2e}",
                tw.frames.len()
            );
            assert!(
                worst <= common::SAMPLE_MAX_ABS,
                "{backend:?} {name}: GPU frames differ from the CPU's by {worst}"
            );
        }
    });
    common::assert_some_ran(ran);
}
