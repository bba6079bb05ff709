//! `--rng torch` reproduces diffusers' DDIMPipeline / DDPMPipeline image for image
//! (fixtures from tools/export_pipeline_fixtures.py: a small random-weight model, torch seeds).

mod common;

use ddim_wgpu::model::{tensor_io, Model};
use ddim_wgpu::pipeline::{Device, Pipeline, SampleRequest};
use ddim_wgpu::rng::RngKind;
use ddim_wgpu::sampling::{SampleSettings, SamplerKind};
use ddim_wgpu::schedule::SchedulerConfig;
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pipeline/tiny");

#[test]
fn cpu_sampler_reproduces_diffusers_pipelines() {
    let model = Model::load(Path::new(DIR)).unwrap();
    let cfg = SchedulerConfig::from_file(&Path::new(DIR).join("scheduler/scheduler_config.json"))
        .unwrap();
    let pipe = Pipeline::new(model, cfg).unwrap();
    let unet = &pipe.unet;
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(DIR).join("cases.json")).unwrap())
            .unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let settings = SampleSettings {
            sampler: if case["sampler"] == "ddpm" {
                SamplerKind::Ddpm
            } else {
                SamplerKind::Ddim
            },
            steps: case["steps"].as_u64().unwrap() as usize,
            eta: case["eta"].as_f64().unwrap_or(0.0),
            use_clipped_model_output: false,
            ..Default::default()
        };
        let num = case["batch"].as_u64().unwrap() as usize;
        // Batch 1 chunks: the noise plan must still slice the whole-batch torch draws correctly.
        for batch in [num, 1] {
            let request = SampleRequest {
                settings: settings.clone(),
                num,
                batch: Some(batch),
                seed: case["seed"].as_u64().unwrap(),
                rng: RngKind::Torch,
                ..Default::default()
            };
            let x0 = pipe.sample(&Device::Cpu, &request).unwrap();
            let want =
                tensor_io::read_tensor(&Path::new(DIR).join("expected.safetensors"), name).unwrap();
            let (c, h, w) = (unet.input.c, unet.input.h, unet.input.w);
            assert_eq!(want.shape, vec![num, h, w, c]);
            let mut worst = 0.0f32;
            for n in 0..num {
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            let ours = (x0.data[((n * c + ch) * h + y) * w + x] / 2.0 + 0.5)
                                .clamp(0.0, 1.0);
                            let theirs = want.data[((n * h + y) * w + x) * c + ch];
                            worst = worst.max((ours - theirs).abs());
                        }
                    }
                }
            }
            println!("{name} (batch {batch}): max abs difference {worst:.2e}");
            assert!(
                f64::from(worst) <= common::TORCH_SAMPLE_MAX_ABS,
                "{name} (batch {batch}): max abs difference {worst} > {} in [0, 1]",
                common::TORCH_SAMPLE_MAX_ABS
            );
        }
    }
}
