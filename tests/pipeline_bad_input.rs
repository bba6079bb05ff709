//! Bad requests to the library API are errors that say what is wrong, before any work.

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
