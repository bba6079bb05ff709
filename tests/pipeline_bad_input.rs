//! Bad requests to the library API are errors that say what is wrong, before any work.

use ddim_wgpu::model::weights::{InitKind, Weights};
use ddim_wgpu::pipeline::{Device, SampleRequest};
use ddim_wgpu::Tensor;

#[test]
fn non_finite_initial_noise_is_refused() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let (c, h, w) = (pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w);
    let mut x = Tensor::zeros(&[2, c, h, w]);
    x.data[5] = f32::NAN;
    x.data[9] = f32::INFINITY;
    let request = SampleRequest {
        num: 2,
        init_noise: Some(x),
        ..Default::default()
    };
    let err = pipe.sample(&Device::Cpu, &request).unwrap_err();
    assert!(format!("{err:#}").contains("2 non-finite"), "{err:#}");
}

#[test]
fn zero_images_and_zero_steps_are_refused() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let none = SampleRequest {
        num: 0,
        ..Default::default()
    };
    assert!(format!("{:#}", pipe.sample(&Device::Cpu, &none).unwrap_err()).contains("at least 1"));
    let mut no_steps = SampleRequest::default();
    no_steps.settings.steps = 0;
    assert!(format!("{:#}", pipe.sample(&Device::Cpu, &no_steps).unwrap_err()).contains("steps"));
}

/// A run whose state overflows stops with the step and timestep where it happened instead of
/// returning NaN images: a model whose output bias is 1e38, without x0 clipping, so that
/// x0 = (x − sqrt(1−ᾱ)·ε)/sqrt(ᾱ) overflows (at the second step, t = 600).
#[test]
fn a_run_that_diverges_names_the_step() {
    let mut pipe = ddim_wgpu::bundled::pipeline().unwrap();
    pipe.scheduler.clip_sample = false;
    pipe.model.weights = Weights::from_fn(&pipe.model.config, |spec, kind, i| match kind {
        _ if spec.name == "conv_out.bias" => 1e38,
        InitKind::NormScale => 1.0,
        InitKind::NormShift => 0.0,
        InitKind::Dense { fan_in } => {
            ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) / (fan_in as f32).sqrt()
        }
    })
    .unwrap();
    let mut request = SampleRequest {
        num: 2,
        ..Default::default()
    };
    request.settings.steps = 5;
    let err = format!("{:#}", pipe.sample(&Device::Cpu, &request).unwrap_err());
    assert!(err.contains("non-finite at step 1 (t = 600)"), "{err}");
}
