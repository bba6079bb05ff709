//! Bad requests to the library API are errors that say what is wrong, before any work.

use ddim_wgpu::model::weights::{InitKind, Weights};
use ddim_wgpu::pipeline::{Device, Diverged, Noise, Pipeline, SampleRequest};
use ddim_wgpu::sampling::SamplerKind;
use ddim_wgpu::Tensor;

mod common;

#[test]
fn non_finite_initial_noise_is_refused() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let (c, h, w) = (pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w);
    let mut x = Tensor::zeros(&[2, c, h, w]);
    x.data[5] = f32::NAN;
    x.data[9] = f32::INFINITY;
    let request = SampleRequest {
        noise: Noise::Given { x_t: x, seed: 0 },
        ..Default::default()
    };
    let err = pipe.sample(&Device::Cpu, &request).unwrap_err();
    assert!(format!("{err:#}").contains("2 non-finite"), "{err:#}");
    // x_T of another image shape is refused with both shapes, before any work.
    let request = SampleRequest {
        noise: Noise::Given {
            x_t: Tensor::zeros(&[2, c, h, w + 1]),
            seed: 0,
        },
        ..Default::default()
    };
    let err = format!("{:#}", pipe.sample(&Device::Cpu, &request).unwrap_err());
    assert!(
        err.contains(&format!("[2, {c}, {h}, {}]", w + 1))
            && err.contains(&format!("[N, {c}, {h}, {w}]")),
        "{err}"
    );
}

#[test]
fn zero_images_and_zero_steps_are_refused() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    for noise in [
        Noise::Seed { seed: 0, num: 0 },
        Noise::Seeds(Vec::new()),
        Noise::Given {
            x_t: Tensor::zeros(&[0, 1, 32, 32]),
            seed: 0,
        },
    ] {
        let none = SampleRequest {
            noise,
            ..Default::default()
        };
        let err = format!("{:#}", pipe.sample(&Device::Cpu, &none).unwrap_err());
        assert!(err.contains("at least 1"), "{:?}: {err}", none.noise);
    }
    let mut no_steps = SampleRequest::default();
    no_steps.settings.steps = 0;
    assert!(format!("{:#}", pipe.sample(&Device::Cpu, &no_steps).unwrap_err()).contains("steps"));
}

/// The bundled model with an output bias of `bias` and no x0 clipping, so that
/// x0 = (x − sqrt(1−ᾱ)·ε)/sqrt(ᾱ) grows past what f32 holds.
fn diverging_pipeline(bias: f32) -> Pipeline {
    let mut pipe = ddim_wgpu::bundled::pipeline().unwrap();
    pipe.scheduler.clip_sample = false;
    pipe.model.weights = Weights::from_fn(&pipe.model.config, |spec, kind, i| match kind {
        _ if spec.name == "conv_out.bias" => bias,
        InitKind::NormScale => 1.0,
        InitKind::NormShift => 0.0,
        InitKind::Dense { fan_in } => {
            ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) / (fan_in as f32).sqrt()
        }
    })
    .unwrap();
    pipe
}

fn diverging_request(sampler: SamplerKind) -> SampleRequest {
    let mut request = SampleRequest {
        noise: Noise::Seed { seed: 0, num: 2 },
        ..Default::default()
    };
    request.settings.steps = 5;
    request.settings.sampler = sampler;
    request
}

/// The error of a diverging run: its message, and the typed [`Diverged`] inside it (step,
/// timestep) that callers on either device downcast to.
fn error(pipe: &Pipeline, device: &Device, sampler: SamplerKind) -> (String, Diverged) {
    let err = pipe
        .sample(device, &diverging_request(sampler))
        .unwrap_err();
    let typed = err
        .downcast_ref::<Diverged>()
        .unwrap_or_else(|| panic!("not a Diverged error: {err:#}"))
        .clone();
    (format!("{err:#}"), typed)
}

/// "step S (t = T)" of a typed divergence.
fn at(d: &Diverged) -> String {
    format!(
        "step {} (t = {})",
        d.step,
        d.timestep.expect("the run knows its timesteps")
    )
}

/// A run whose state overflows stops with the step and timestep where it happened instead of
/// returning NaN images (with a bias of 1e38, at the second of 5 DDIM steps, t = 600).
#[test]
fn a_run_that_diverges_names_the_step() {
    let pipe = diverging_pipeline(1e38);
    let (err, typed) = error(&pipe, &Device::Cpu, SamplerKind::Ddim);
    assert!(err.contains("non-finite at step 1 (t = 600)"), "{err}");
    assert_eq!(at(&typed), "step 1 (t = 600)");
    assert!(typed.bad > 0 && typed.bad <= typed.numel, "{typed:?}");
}

/// The same error type on the GPU, from the flag the update kernels set and the host reads with the final
/// sample, for the DDIM update and the multistep solvers' update. The GPU computes in f32 where
/// the CPU reference uses f64, so the two overflow at the same step only where f32 and f64
/// agree: with a bias of 1e38, DPM-Solver++ diverges at step 0 on both, while DDIM's f32 x0
/// (≈ −25.7·1e38 at t = 800) already overflows at step 0 on the GPU, a step before the CPU;
/// with 1e37 the CPU (f64 group norm and update) stays finite, and the GPU's f32 forward
/// overflows at step 1, which shows that the kernels pass on the step index, not just a flag.
#[test]
fn a_gpu_run_that_diverges_names_the_step() {
    let big = diverging_pipeline(1e38);
    let (cpu, typed) = error(&big, &Device::Cpu, SamplerKind::DpmSolverPlusPlus);
    assert!(cpu.contains("non-finite at step 0 (t = 830)"), "{cpu}");
    assert_eq!(at(&typed), "step 0 (t = 830)");
    let smaller = diverging_pipeline(1e37);
    assert!(smaller
        .sample(&Device::Cpu, &diverging_request(SamplerKind::Ddim))
        .is_ok());
    let cases = [
        (&big, SamplerKind::DpmSolverPlusPlus, "step 0 (t = 830)"),
        (&big, SamplerKind::Ddim, "step 0 (t = 800)"),
        (&smaller, SamplerKind::Ddim, "step 1 (t = 600)"),
        (&smaller, SamplerKind::DpmSolverPlusPlus, "step 1 (t = 664)"),
    ];
    common::for_each_backend(|backend, _| {
        let device = common::device(backend).unwrap();
        for (pipe, sampler, at) in cases {
            // The same type as the CPU reference's, carrying the step and its timestep.
            let (err, typed) = error(pipe, &device, sampler);
            assert_eq!(
                self::at(&typed),
                at,
                "{backend:?} {}: {err}",
                sampler.as_str()
            );
            assert!(err.contains(&format!("non-finite at {at}")), "{err}");
        }
    });
}
