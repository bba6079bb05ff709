//! The bundled MNIST model on the GPU: 50 DDIM steps at eta 0 agree with the CPU reference pixel
//! for pixel, and the same seed gives a byte-identical PNG on the same adapter.

mod common;

use ddim_wgpu::image_io::{encode_png, grid, to_u8};
use ddim_wgpu::pipeline::{Device, Noise, SampleRequest};
use ddim_wgpu::sampling::SampleSettings;

#[test]
fn bundled_model_gpu_matches_cpu_reference_pixels() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let request = SampleRequest {
        settings: SampleSettings {
            steps: 50,
            ..Default::default()
        },
        noise: Noise::Seed { seed: 3, num: 4 },
        ..Default::default()
    };
    let cpu = pipe.sample(&Device::Cpu, &request).unwrap();
    let cpu_px: Vec<u8> = cpu.data.iter().map(|&v| to_u8(v)).collect();
    common::for_each_backend(|backend, _| {
        let gpu = pipe
            .sample(&common::device(backend).unwrap(), &request)
            .unwrap();
        let off = gpu
            .data
            .iter()
            .zip(&cpu_px)
            .filter(|(&g, &c)| (to_u8(g) as i32 - c as i32).abs() > 1)
            .count();
        let equal = 1.0 - off as f64 / cpu_px.len() as f64;
        eprintln!(
            "bundled model on {backend}: {:.4} % of pixels within 1/255 of the CPU reference",
            100.0 * equal
        );
        assert!(
            equal >= 0.999,
            "{backend}: only {:.3} % of pixels within 1/255",
            100.0 * equal
        );
    });
}

#[test]
fn same_seed_gives_a_byte_identical_png_on_the_gpu() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let request = SampleRequest {
        settings: SampleSettings {
            steps: 10,
            eta: 1.0,
            ..Default::default()
        },
        noise: Noise::Seed { seed: 11, num: 3 },
        ..Default::default()
    };
    common::for_each_backend(|backend, _| {
        let device = common::device(backend).unwrap();
        let png = || {
            let x = pipe.sample(&device, &request).unwrap();
            let (w, h, c, px) = grid(&x, 3, 2).unwrap();
            encode_png(w, h, c, &px).unwrap()
        };
        assert_eq!(
            png(),
            png(),
            "{backend}: two runs with the same seed differ"
        );
    });
}

#[test]
fn batch_is_chosen_from_device_limits_when_omitted() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let batch = |device: &Device, num| {
        let request = SampleRequest {
            noise: Noise::Seed { seed: 0, num },
            ..Default::default()
        };
        pipe.batch_for(device, &request).unwrap()
    };
    // The CPU reference: at most 16 per evaluation, in even chunks.
    assert_eq!(batch(&Device::Cpu, 16), 16);
    assert_eq!(batch(&Device::Cpu, 40), 14);
    assert_eq!(batch(&Device::Cpu, 1), 1);
    common::for_each_backend(|backend, ctx| {
        let device = common::device(backend).unwrap();
        let fits = ddim_wgpu::gpu::plan::max_batch(ctx, &pipe.unet).unwrap();
        for num in [1, 7, 64, 1000] {
            let b = batch(&device, num);
            let chunks = num.div_ceil(b);
            eprintln!(
                "{backend}: {num} images -> batch {b} ({chunks} chunks; {fits} fit one binding)"
            );
            assert!(
                b >= 1 && b <= fits && b <= num,
                "{backend}: batch {b} for {num}"
            );
            // Even chunks: no chunk is smaller than needed for this number of chunks.
            assert_eq!(
                b,
                num.div_ceil(chunks),
                "{backend}: uneven chunks for {num}"
            );
        }
        // A small run goes in one evaluation per step; a 1,000-image run in more than one.
        assert_eq!(batch(&device, 64), 64);
        assert!(batch(&device, 1000) < 1000);
    });
}

#[test]
fn weights_go_to_each_device_once() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let mut seen = Vec::new();
    common::for_each_backend(|backend, ctx| {
        let first = pipe.gpu_weights(ctx).unwrap();
        let again = pipe.gpu_weights(ctx).unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "{backend}: a second plan uploaded the weights again"
        );
        assert!(
            first.bytes >= pipe.unet.params() * 4,
            "{backend}: {} bytes",
            first.bytes
        );
        // Another adapter gets its own copy (wgpu's device ids can coincide across backends).
        assert!(seen.iter().all(|w| !std::sync::Arc::ptr_eq(w, &first)));
        seen.push(first);
    });
}
