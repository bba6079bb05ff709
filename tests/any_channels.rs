//! Models with 2 or 4 channels sample on the CPU reference and the GPU, and their images can be
//! written.

mod common;

use ddim_wgpu::model::config::SampleSize;
use ddim_wgpu::model::{Model, ModelPaths, UNet2DConfig, Weights};
use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
use ddim_wgpu::sampling::SampleSettings;
use ddim_wgpu::schedule::SchedulerConfig;

fn random_model(channels: usize) -> Pipeline {
    let config = UNet2DConfig {
        in_channels: channels,
        out_channels: channels,
        sample_size: Some(SampleSize::Square(8)),
        ..UNet2DConfig::mnist_like()
    };
    let weights = Weights::random(&config, 3).unwrap();
    let root = std::path::PathBuf::from(format!("random-{channels}ch"));
    let model = Model {
        paths: ModelPaths {
            config: root.join("config.json"),
            weights: root.join("diffusion_pytorch_model.safetensors"),
            scheduler_config: None,
            layout: ddim_wgpu::model::dir::Layout::Flat,
            root,
        },
        config,
        weights,
    };
    Pipeline::new(model, SchedulerConfig::default()).unwrap()
}

#[test]
fn two_and_four_channel_models_sample_and_save() {
    for channels in [2, 4] {
        let pipe = random_model(channels);
        let request = SampleRequest {
            settings: SampleSettings {
                steps: 2,
                ..Default::default()
            },
            noise: Noise::Seed { seed: 0, num: 3 },
            ..Default::default()
        };
        let x = pipe.sample(&Device::Cpu, &request).unwrap();
        assert_eq!(x.shape, [3, channels, 8, 8]);
        assert!(x.data.iter().all(|v| v.is_finite()));
        common::for_each_backend(|backend, _| {
            let gpu = pipe
                .sample(&common::device(backend).unwrap(), &request)
                .unwrap();
            let (max_abs, _) = ddim_wgpu::tensor::max_abs_diff(&gpu.data, &x.data);
            assert!(
                max_abs <= common::SAMPLE_MAX_ABS,
                "{channels} channels on {backend}: max abs {max_abs:.3e} vs the CPU"
            );
        });
        let path = std::env::temp_dir().join(format!("ddim-any-channels-{channels}.png"));
        ddim_wgpu::image_io::save_grid(&path, &x, None).unwrap();
        let img = image::open(&path).unwrap();
        let expect_color = if channels == 4 { 4 } else { 1 };
        assert_eq!(img.color().channel_count() as usize, expect_color);
        std::fs::remove_file(&path).unwrap();
    }
}
