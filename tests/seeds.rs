//! One generator per image (`--seeds`, issue 15): the image of seed s is diffusers' pipeline run
//! alone with `batch_size=1, generator=torch.manual_seed(s)` (fixtures from
//! tools/export_seed_fixtures.py on the tiny model), for eta 0, eta 0.5 and DDPM, on the CPU
//! reference and every GPU backend, whatever the batch and the company of other seeds.

mod common;

use ddim_wgpu::model::tensor_io;
use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
use ddim_wgpu::rng::RngKind;
use ddim_wgpu::sampling::{SampleSettings, SamplerKind};
use ddim_wgpu::Tensor;
use serde_json::Value;
use std::path::Path;

const DIR: &str = common::TINY;

fn pipeline() -> Pipeline {
    common::tiny_pipeline()
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(DIR).join("seeds.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cases = cases.as_array().unwrap().clone();
    assert_eq!(cases.len(), 3);
    cases
}

fn request(case: &Value, seeds: Vec<u64>, batch: usize) -> SampleRequest {
    let sampler = match case["sampler"].as_str().unwrap() {
        "ddpm" => SamplerKind::Ddpm,
        _ => SamplerKind::Ddim,
    };
    SampleRequest {
        settings: SampleSettings {
            sampler,
            steps: case["steps"].as_u64().unwrap() as usize,
            eta: case["eta"].as_f64().unwrap_or(0.0),
            ..Default::default()
        },
        noise: Noise::Seeds(seeds),
        batch: Some(batch),
        rng: RngKind::Torch,
        ..Default::default()
    }
}

/// Largest |ours − diffusers| in [0, 1] for image `i` of `x0` (NCHW in [-1, 1]) against the
/// fixture image `name` (NHWC, one image).
fn max_abs(x0: &Tensor, i: usize, name: &str) -> f32 {
    let want = tensor_io::read_tensor(&Path::new(DIR).join("seeds.safetensors"), name).unwrap();
    let (_, c, h, w) = x0.nchw();
    assert_eq!(want.shape, vec![1, h, w, c]);
    let mut worst = 0.0f32;
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let ours = (x0.data[((i * c + ch) * h + y) * w + x] / 2.0 + 0.5).clamp(0.0, 1.0);
                let theirs = want.data[(y * w + x) * c + ch];
                worst = worst.max((ours - theirs).abs());
            }
        }
    }
    worst
}

fn check(device: &Device, what: &str) {
    let pipe = pipeline();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let seeds: Vec<u64> = case["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        // All seeds in one batch, in uneven chunks, and the last seed alone.
        for (set, batch) in [
            (seeds.clone(), seeds.len()),
            (seeds.clone(), 3),
            (seeds[seeds.len() - 1..].to_vec(), 1),
        ] {
            let x0 = pipe
                .sample(device, &request(&case, set.clone(), batch))
                .unwrap_or_else(|e| panic!("{what} {name}: {e:#}"));
            for (i, seed) in set.iter().enumerate() {
                let worst = max_abs(&x0, i, &format!("{name}/{seed}"));
                println!("{what} {name} seed {seed} (of {set:?}, batch {batch}): {worst:.2e}");
                assert!(
                    f64::from(worst) <= common::TORCH_SAMPLE_MAX_ABS,
                    "{what} {name} seed {seed} (batch {batch}): max abs {worst} > {}",
                    common::TORCH_SAMPLE_MAX_ABS
                );
            }
        }
    }
}

#[test]
fn cpu_seed_images_are_diffusers_batch_of_one() {
    check(&Device::Cpu, "cpu");
}

#[test]
fn gpu_seed_images_are_diffusers_batch_of_one() {
    common::for_each_backend(|backend, _| {
        check(&common::device(backend).unwrap(), &format!("{backend:?}"));
    });
}

#[test]
fn an_image_does_not_depend_on_its_batch_or_neighbours() {
    // Bit for bit on one device: seed 11 alone, among others, in chunks of 1 and of 4.
    let pipe = pipeline();
    let case = &cases()[1];
    let alone = pipe
        .sample(&Device::Cpu, &request(case, vec![11], 1))
        .unwrap();
    let among = pipe
        .sample(&Device::Cpu, &request(case, vec![3, 4, 11, 200], 4))
        .unwrap();
    let chunked = pipe
        .sample(&Device::Cpu, &request(case, vec![3, 4, 11, 200], 1))
        .unwrap();
    let per = alone.numel();
    assert_eq!(&among.data[2 * per..3 * per], &alone.data[..]);
    assert_eq!(among.data, chunked.data);
}

/// Seeds 0, 1, 2 of `sampler` in one batch of 3, in batches of 1, and seed 2 alone (issue 30
/// §6: "seed 2 of a DPM-Solver++ run differs by 1/255 between --batch 3 and --batch 1").
fn batch_independence(device: &Device, what: &str) {
    let pipe = pipeline();
    for (sampler, eta, order) in [
        (SamplerKind::Ddim, 0.5, None),
        (SamplerKind::Ddpm, 0.0, None),
        (SamplerKind::DpmSolverPlusPlus, 0.0, Some(2)),
        (SamplerKind::DpmSolverPlusPlus, 0.0, Some(3)),
        (SamplerKind::Unipc, 0.0, None),
    ] {
        let request = |seeds: Vec<u64>, batch: usize| {
            let mut settings = SampleSettings {
                sampler,
                steps: 6,
                eta,
                ..Default::default()
            };
            settings.solver.solver_order = order;
            SampleRequest {
                settings,
                noise: Noise::Seeds(seeds),
                batch: Some(batch),
                rng: RngKind::Torch,
                ..Default::default()
            }
        };
        let run = |seeds: Vec<u64>, batch| {
            pipe.sample(device, &request(seeds, batch))
                .unwrap_or_else(|e| panic!("{what} {sampler:?}: {e:#}"))
        };
        let three = run(vec![0, 1, 2], 3);
        let ones = run(vec![0, 1, 2], 1);
        let alone = run(vec![2], 1);
        let per = alone.numel();
        let differ = three
            .data
            .iter()
            .zip(&ones.data)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{what} {sampler:?} order {order:?}: {differ} values differ between batch 3 and 1"
        );
        assert!(
            three.data[2 * per..]
                .iter()
                .zip(&alone.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what} {sampler:?}: seed 2 alone differs from seed 2 among 0, 1, 2"
        );
    }
}

#[test]
fn cpu_images_are_bit_identical_whatever_the_batch_for_every_sampler() {
    batch_independence(&Device::Cpu, "cpu");
}

/// On one adapter with one fixed choice of kernel variants (the library's default, `--tune off`
/// on the command line) an image is the same bits whatever its batch.
#[test]
fn gpu_images_are_bit_identical_whatever_the_batch_with_fixed_kernels() {
    common::for_each_backend(|backend, _| {
        batch_independence(&common::device(backend).unwrap(), &format!("{backend:?}"));
    });
}

/// With tuning on (the command line's default), too: variants are chosen per image shape, not
/// per batch, so the batches of 3 and of 1 run the same variants (tried once, then from the
/// choices made), and an image is the same bits whatever its batch.
#[test]
fn gpu_images_are_bit_identical_whatever_the_batch_with_tuned_kernels() {
    for backend in common::backends() {
        let _guard = common::gpu_lock();
        if common::context(backend).is_none() {
            continue;
        }
        let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("seeds-batch-tuned-{backend}.json"));
        let _ = std::fs::remove_file(&cache);
        let ctx = common::open_with(backend, |c| {
            c.kernels = ddim_wgpu::gpu::KernelChoice::default();
            c.tune = ddim_wgpu::gpu::TuneMode::Auto;
            c.tune_cache = Some(cache.clone());
        })
        .expect("the backend opened once already");
        let ctx = std::sync::Arc::new(ctx);
        batch_independence(&Device::Gpu(ctx.clone()), &format!("{backend:?} tuned"));
        assert!(
            ctx.tuner.report().measured() > 0,
            "{backend}: nothing was tuned, so this test showed nothing"
        );
    }
}
