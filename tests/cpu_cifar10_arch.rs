//! The full google/ddpm-cifar10-32 architecture (35.7 M parameters, 12.4 GFLOP) on the CPU
//! reference against diffusers, with weights given by a formula both sides compute
//! (tools/export_unet_fixtures.py, `formula_weights`), so no 143 MB checkpoint is stored.

use ddim_wgpu::cpu::forward::forward;
use ddim_wgpu::model::tensor_io::read_tensor;
use ddim_wgpu::model::unet::WeightSpec;
use ddim_wgpu::model::weights::InitKind;
use ddim_wgpu::model::{UNet, UNet2DConfig, Weights};
use ddim_wgpu::tensor::rel_l2;
use std::path::Path;
use std::time::Instant;

/// Uniform in [-1, 1) from an integer hash of (h, i); the Python twin is `formula_uniform`.
fn uniform(h: u64, i: u64) -> f64 {
    let mut z = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(h.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z ^= z >> 29;
    z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 32;
    2.0 * (z >> 11) as f64 / (1u64 << 53) as f64 - 1.0
}

/// h = Σ (k+1)·byte_k of the name; norm scale 1 + 0.1·s, shift 0.1·s, dense s/√fan_in.
fn formula(spec: &WeightSpec, kind: InitKind, i: usize) -> f32 {
    let h = spec
        .name
        .bytes()
        .enumerate()
        .map(|(k, b)| (k as u64 + 1) * b as u64)
        .sum::<u64>();
    let s = uniform(h, i as u64);
    (match kind {
        InitKind::NormScale => 1.0 + 0.1 * s,
        InitKind::NormShift => 0.1 * s,
        InitKind::Dense { fan_in } => s / (fan_in as f64).sqrt(),
    }) as f32
}

#[test]
fn cifar10_architecture_matches_diffusers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet/cifar10_formula");
    let config = UNet2DConfig::cifar10();
    let weights = Weights::from_fn(&config, formula).unwrap();
    let unet = UNet::from_config(&config).unwrap();
    assert_eq!(unet.params(), 35_746_307);
    let x = read_tensor(&dir.join("input.safetensors"), "sample").unwrap();

    let start = Instant::now();
    let y = forward(&unet, &weights, &x, &[500.0]).unwrap();
    let secs = start.elapsed().as_secs_f64();

    let reference = read_tensor(&dir.join("expected.safetensors"), "sample").unwrap();
    let reference64 = read_tensor(&dir.join("expected.safetensors"), "sample_f64").unwrap();
    let err = rel_l2(&y.data, &reference.data);
    let err64 = rel_l2(&y.data, &reference64.data);
    let torch_noise = rel_l2(&reference.data, &reference64.data);
    println!(
        "cifar10 architecture, batch 1: CPU forward {secs:.2} s ({:.2} GFLOP/s); rel L2 vs torch f32 {err:.2e}, \
         vs torch f64 {err64:.2e} (torch f32 vs f64: {torch_noise:.2e})",
        unet.flops() as f64 / 1e9 / secs
    );
    assert!(err64 <= 1e-5, "rel L2 vs torch f64 {err64:.3e}");
    assert!(err <= 1e-5, "rel L2 vs torch f32 {err:.3e}");
}
