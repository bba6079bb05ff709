//! Times burn's conv2d and matmul on its wgpu backend (WGSL kernels on the API burn picks,
//! Vulkan on Linux: lavapipe on our machines) for the shapes `tools/bench_peers.py` passes, and
//! prints one JSON object per shape. The first call of each shape runs burn's autotune; it is
//! warm-up, reported as `first_call_s`.
//!
//!   burn-peer [--warmup N] [--iters N] [--conv B,CIN,H,W,COUT,K,STRIDE,PAD]... [--gemm M,N,K]...

use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, DeviceKind, Distribution, Tensor};

fn parse_list(s: &str, n: usize, what: &str) -> Vec<usize> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse().unwrap_or_else(|_| panic!("{what}: {s:?} is not {n} integers")))
        .collect();
    assert_eq!(v.len(), n, "{what}: {s:?} is not {n} comma-separated integers");
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Milliseconds per call of `f` (each call synchronised), after `warmup` untimed calls.
fn time(device: &Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> (f64, f64) {
    let t0 = Instant::now();
    for _ in 0..warmup.max(1) {
        f();
        device.sync().expect("burn device sync");
    }
    let first_s = t0.elapsed().as_secs_f64();
    let runs = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            device.sync().expect("burn device sync");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    (median(runs), first_s)
}

fn main() {
    let mut warmup = 2;
    let mut iters = 5;
    let mut convs = Vec::new();
    let mut gemms = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--warmup" => warmup = value().parse().expect("--warmup N"),
            "--iters" => iters = value().parse().expect("--iters N"),
            "--conv" => convs.push(parse_list(&value(), 8, "--conv")),
            "--gemm" => gemms.push(parse_list(&value(), 3, "--gemm")),
            other => panic!("unknown argument {other}"),
        }
    }
    // burn's wgpu device on the API it picks (Vulkan on Linux), WGSL kernels.
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    for c in &convs {
        let [b, cin, h, w, cout, k, stride, pad] = c[..] else { unreachable!() };
        let x = Tensor::<4>::random([b, cin, h, w], Distribution::Default, &device);
        let wt = Tensor::<4>::random([cout, cin, k, k], Distribution::Default, &device);
        let bias = Tensor::<1>::random([cout], Distribution::Default, &device);
        let opts = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (w + 2 * pad - k) / stride + 1;
        let flops = 2.0 * (b * oh * ow * cout * cin * k * k) as f64;
        let (ms, first_s) = time(&device, warmup, iters, || {
            let _ = conv2d(x.clone(), wt.clone(), Some(bias.clone()), opts.clone());
        });
        println!(
            "{}",
            serde_json::json!({
                "peer": "burn-wgpu", "kind": "conv", "shape": c, "ms": ms,
                "gflops": flops / ms / 1e6, "first_call_s": first_s,
            })
        );
    }
    for g in &gemms {
        let [m, n, k] = g[..] else { unreachable!() };
        let a = Tensor::<2>::random([m, k], Distribution::Default, &device);
        let bm = Tensor::<2>::random([k, n], Distribution::Default, &device);
        let flops = 2.0 * (m * n * k) as f64;
        let (ms, first_s) = time(&device, warmup, iters, || {
            let _ = a.clone().matmul(bm.clone());
        });
        println!(
            "{}",
            serde_json::json!({
                "peer": "burn-wgpu", "kind": "gemm", "shape": g, "ms": ms,
                "gflops": flops / ms / 1e6, "first_call_s": first_s,
            })
        );
    }
}
