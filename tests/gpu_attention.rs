//! The whole attention block on the GPU against the CPU reference composed from `cpu::ops`:
//! group_norm → linear q/k/v → attention → linear → + x.

mod common;

use std::time::Instant;

use ddim_wgpu::cpu::ops;
use ddim_wgpu::gpu::kernel::run_dispatches;
use ddim_wgpu::gpu::kernels::attention::{
    attention_block, attention_block_chunked, AttentionParamsHost, AttentionScratch,
    AttentionShape, AttentionWeights,
};
use ddim_wgpu::Tensor;

struct Block {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    w: [Vec<f32>; 4],
    b: [Vec<f32>; 4],
}

impl Block {
    fn random(c: usize, seed: u64) -> Self {
        let scale = 1.0 / (c as f32).sqrt();
        let mat = |s| {
            common::random(c * c, s)
                .iter()
                .map(|v| v * scale * 1.7)
                .collect::<Vec<f32>>()
        };
        Self {
            gamma: common::random(c, seed)
                .iter()
                .map(|v| 1.0 + 0.3 * v)
                .collect(),
            beta: common::random(c, seed + 1)
                .iter()
                .map(|v| 0.2 * v)
                .collect(),
            w: [mat(seed + 2), mat(seed + 3), mat(seed + 4), mat(seed + 5)],
            b: [
                common::random(c, seed + 6),
                common::random(c, seed + 7),
                common::random(c, seed + 8),
                common::random(c, seed + 9),
            ],
        }
    }

    fn host(&self) -> AttentionParamsHost<'_> {
        AttentionParamsHost {
            gamma: &self.gamma,
            beta: &self.beta,
            wq: &self.w[0],
            bq: &self.b[0],
            wk: &self.w[1],
            bk: &self.b[1],
            wv: &self.w[2],
            bv: &self.b[2],
            wo: &self.w[3],
            bo: &self.b[3],
        }
    }
}

/// The CPU reference on NCHW `x`; returns NHWC so it compares directly with the GPU.
fn reference(x: &Tensor, blk: &Block, groups: usize, heads: usize) -> Vec<f32> {
    let (n, c, h, w) = x.nchw();
    let l = h * w;
    let normed = ops::group_norm(x, groups, &blk.gamma, &blk.beta, 1e-6);
    let tokens = Tensor::new(
        vec![n * l, c],
        common::nchw_to_nhwc(&normed.data, n, c, h, w),
    )
    .unwrap();
    let proj = |i: usize, t: &Tensor| {
        let wt = Tensor::new(vec![c, c], blk.w[i].clone()).unwrap();
        let mut y = ops::linear(t, &wt, Some(&blk.b[i]));
        y.shape = vec![n, l, c];
        y
    };
    let (q, k, v) = (proj(0, &tokens), proj(1, &tokens), proj(2, &tokens));
    let mut o = ops::attention(&q, &k, &v, heads);
    o.shape = vec![n * l, c];
    let out = proj(3, &o);
    let residual = common::nchw_to_nhwc(&x.data, n, c, h, w);
    out.data.iter().zip(&residual).map(|(a, b)| a + b).collect()
}

fn check(n: usize, c: usize, h: usize, w: usize, groups: usize, heads: usize, seed: u64) {
    check_chunked(n, c, h, w, groups, heads, seed, None)
}

#[allow(clippy::too_many_arguments)]
fn check_chunked(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    groups: usize,
    heads: usize,
    seed: u64,
    chunk: Option<usize>,
) {
    let x = Tensor::new(vec![n, c, h, w], common::random(n * c * h * w, seed)).unwrap();
    let blk = Block::random(c, seed + 100);
    let want = reference(&x, &blk, groups, heads);
    let x_nhwc = common::nchw_to_nhwc(&x.data, n, c, h, w);
    let shape = AttentionShape {
        batch: n,
        tokens: h * w,
        channels: c,
        heads,
        groups,
        eps: 1e-6,
    };
    let label = format!("attention {n}x{c}x{h}x{w} groups {groups} heads {heads}");
    common::for_each_backend(|backend, ctx| {
        let weights = AttentionWeights::upload(ctx, c, &blk.host()).unwrap();
        let scratch = AttentionScratch::new(ctx, &shape);
        let xb = ctx.upload("x", &x_nhwc);
        let out = ctx.poisoned("out", x_nhwc.len());
        let d = match chunk {
            None => attention_block(ctx, &shape, &weights, &scratch, &xb, &out),
            Some(k) => attention_block_chunked(ctx, &shape, &weights, &scratch, &xb, &out, k),
        }
        .expect("building");
        run_dispatches(ctx, &d, 0).expect("running");
        let got = ctx.read_f32(&out, x_nhwc.len()).unwrap();
        let rel = common::assert_close(&format!("{label} on {backend}"), &got, &want, 1e-5);
        let (max_abs, _) = ddim_wgpu::tensor::max_abs_diff(&got, &want);
        eprintln!("{label} on {backend}: rel L2 {rel:.2e}, max abs {max_abs:.2e}");
    });
}

#[test]
fn attention_block_several_heads_odd_sequence() {
    // L = 45 (not a multiple of the 64-row tile), head dim 6, batch 3.
    check(3, 24, 5, 9, 4, 4, 1);
    // One head over odd channels, L = 7·7.
    check(2, 15, 7, 7, 3, 1, 2);
}

/// Score matrices computed two images at a time (as when one image's scores fill a binding).
#[test]
fn attention_block_batch_chunks() {
    check_chunked(3, 12, 3, 5, 2, 3, 5, Some(2));
}

#[test]
fn attention_block_model_like() {
    // The cifar10 model's mid block shape at batch 3: 4×4 tokens, 1 head, 32 groups (C scaled down).
    check(3, 64, 4, 4, 32, 1, 3);
    // L = 100 > 64 spans two row tiles; 2 heads of 16.
    check(1, 32, 10, 10, 8, 2, 4);
}

#[test]
fn attention_throughput_report() {
    let (n, c, h, w) = (2usize, 128usize, 16usize, 16usize);
    let blk = Block::random(c, 9);
    let x = common::random(n * c * h * w, 10);
    let shape = AttentionShape {
        batch: n,
        tokens: h * w,
        channels: c,
        heads: 1,
        groups: 32,
        eps: 1e-6,
    };
    common::for_each_backend(|backend, ctx| {
        let weights = AttentionWeights::upload(ctx, c, &blk.host()).unwrap();
        let scratch = AttentionScratch::new(ctx, &shape);
        let xb = ctx.upload("x", &x);
        let out = ctx.poisoned("out", x.len());
        let d = attention_block(ctx, &shape, &weights, &scratch, &xb, &out).unwrap();
        run_dispatches(ctx, &d, 0).unwrap();
        ctx.wait_idle().unwrap();
        let t0 = Instant::now();
        run_dispatches(ctx, &d, 0).unwrap();
        ctx.wait_idle().unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let flops: u64 = d.iter().map(|d| d.flops).sum();
        eprintln!(
            "attention block {n}x{c}x{h}x{w} on {backend}: {:.1} ms, {:.2} GFLOP/s",
            secs * 1e3,
            flops as f64 / secs / 1e9
        );
    });
}
