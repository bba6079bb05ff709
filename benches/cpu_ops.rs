//! Criterion benchmarks of the CPU reference ops (NCHW, plain loops) at small sizes, and one
//! forward of the bundled MNIST model at batch 1.
//!
//! `cargo bench --bench cpu_ops`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ddim_wgpu::cpu::ops::{attention, conv2d, group_norm, linear, silu, Padding};
use ddim_wgpu::Tensor;

fn tensor(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::new(shape.to_vec(), data).expect("shape and data agree")
}

fn cpu_benches(c: &mut Criterion) {
    let x = tensor(&[2, 32, 16, 16], 1);
    let w = tensor(&[32, 32, 3, 3], 2);
    let bias = vec![0.1f32; 32];
    c.bench_function("cpu conv2d 3x3 32->32 16x16 B2", |b| {
        b.iter(|| conv2d(black_box(&x), &w, Some(&bias), 1, Padding::same(1)))
    });
    let gamma = vec![1.0f32; 32];
    let beta = vec![0.0f32; 32];
    c.bench_function("cpu group_norm+silu 32ch 16x16 B2", |b| {
        b.iter(|| silu(&group_norm(black_box(&x), 8, &gamma, &beta, 1e-5)))
    });
    let tokens = tensor(&[2 * 64, 64], 3);
    let lw = tensor(&[64, 64], 4);
    c.bench_function("cpu linear 128x64 -> 64", |b| {
        b.iter(|| linear(black_box(&tokens), &lw, None))
    });
    let q = tensor(&[2, 64, 32], 5);
    let k = tensor(&[2, 64, 32], 6);
    let v = tensor(&[2, 64, 32], 7);
    c.bench_function("cpu attention B2 64 tokens 32ch", |b| {
        b.iter(|| attention(black_box(&q), &k, &v, 1))
    });
    let pipe = ddim_wgpu::bundled::pipeline().expect("bundled model");
    let input = tensor(&[1, 1, 32, 32], 8);
    c.bench_function("cpu forward, bundled MNIST model, B1", |b| {
        b.iter(|| {
            ddim_wgpu::cpu::forward::forward(
                &pipe.unet,
                &pipe.model.weights,
                black_box(&input),
                &[500.0],
            )
            .expect("forward")
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = cpu_benches
}
criterion_main!(benches);
