//! The whole attention block on the GPU against the CPU reference's
//! `cpu::forward::attention_block`: group_norm → linear q/k/v → attention → linear → + x.

mod common;

use std::collections::HashMap;

use ddim_wgpu::cpu::forward::{attention_block, to_tokens};
use ddim_wgpu::gpu::choices::Choices;
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::attention::{
    self, AttentionParamsHost, AttentionScratch, AttentionShape, AttentionWeights,
};
use ddim_wgpu::gpu::Precision;
use ddim_wgpu::model::unet::{Attention, GroupNorm, Linear};
use ddim_wgpu::model::Weights;
use ddim_wgpu::Tensor;

struct Block {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    w: [Vec<f32>; 4],
    b: [Vec<f32>; 4],
}

impl Block {
    /// Random parameters for `c` channels projected to width `d`.
    fn random(c: usize, d: usize, seed: u64) -> Self {
        let mat = |s, fan_in: usize| {
            let scale = 1.7 / (fan_in as f32).sqrt();
            common::random(c * d, s)
                .iter()
                .map(|v| v * scale)
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
            w: [
                mat(seed + 2, c),
                mat(seed + 3, c),
                mat(seed + 4, c),
                mat(seed + 5, d),
            ],
            b: [
                common::random(d, seed + 6),
                common::random(d, seed + 7),
                common::random(d, seed + 8),
                common::random(c, seed + 9),
            ],
        }
    }

    fn host(&self, norm: bool) -> AttentionParamsHost<'_> {
        AttentionParamsHost {
            gamma: if norm { &self.gamma } else { &[] },
            beta: if norm { &self.beta } else { &[] },
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

/// The CPU reference, `cpu::forward::attention_block` on NCHW `x` with `blk` as the block's
/// weights; returns NHWC (tokens) so it compares directly with the GPU.
fn reference(x: &Tensor, blk: &Block, shape: &AttentionShape) -> Vec<f32> {
    let (c, d) = (shape.channels, shape.inner());
    let mut tensors = HashMap::new();
    let mut add = |name: &str, shape: Vec<usize>, data: &[f32]| {
        tensors.insert(name.to_string(), Tensor::new(shape, data.to_vec()).unwrap());
    };
    add("norm.weight", vec![c], &blk.gamma);
    add("norm.bias", vec![c], &blk.beta);
    for (i, name) in ["to_q", "to_k", "to_v", "to_out"].into_iter().enumerate() {
        let (out, inp) = if i < 3 { (d, c) } else { (c, d) };
        add(&format!("{name}.weight"), vec![out, inp], &blk.w[i]);
        add(&format!("{name}.bias"), vec![out], &blk.b[i]);
    }
    let linear = |name: &str, in_features, out_features| Linear {
        weight: format!("{name}.weight"),
        bias: format!("{name}.bias"),
        in_features,
        out_features,
    };
    let block = Attention {
        channels: c,
        heads: shape.heads,
        head_dim: shape.head_dim,
        norm: shape.norm.map(|(groups, eps)| GroupNorm {
            weight: "norm.weight".into(),
            bias: "norm.bias".into(),
            channels: c,
            groups,
            eps,
        }),
        to_q: linear("to_q", c, d),
        to_k: linear("to_k", c, d),
        to_v: linear("to_v", c, d),
        to_out: linear("to_out", d, c),
        rescale_output_factor: shape.rescale_output_factor,
    };
    let y = attention_block(&block, &Weights::from_tensors(tensors), x).unwrap();
    to_tokens(&y).data
}

fn check(n: usize, c: usize, h: usize, w: usize, groups: usize, heads: usize, seed: u64) {
    check_shape(
        AttentionShape::simple(n, h * w, c, heads, groups, 1e-6),
        h,
        w,
        seed,
        None,
    )
}

fn check_shape(shape: AttentionShape, h: usize, w: usize, seed: u64, chunk: Option<usize>) {
    let (n, c) = (shape.batch, shape.channels);
    let x = Tensor::new(vec![n, c, h, w], common::random(n * c * h * w, seed)).unwrap();
    let blk = Block::random(c, shape.inner(), seed + 100);
    let want = reference(&x, &blk, &shape);
    let x_nhwc = to_tokens(&x).data;
    let label = format!("attention {n}x{c}x{h}x{w} {shape:?}");
    common::for_each_reduction_path(|backend, ctx| {
        let weights =
            AttentionWeights::upload(ctx, &shape, &blk.host(shape.norm.is_some())).unwrap();
        let scratch = AttentionScratch::new(ctx, &shape);
        let dims = [n, h * w, c];
        let xb = ctx
            .tensor_from("x", &x_nhwc, &dims, Precision::F32)
            .unwrap();
        let out = ctx.poisoned_tensor("out", &dims, Precision::F32);
        // The context's rule for every variant: subgroup reductions where it uses them.
        let choices = Choices::fixed(ctx);
        let io = (&xb, &out);
        let d = attention::attention_block(ctx, &shape, &weights, &scratch, &choices, io, chunk)
            .expect("building");
        run_dispatches(ctx, &d, 0).expect("running");
        let got = ctx.read_tensor(&out).unwrap();
        common::assert_close(
            &format!("{label} on {backend}"),
            &got,
            &want,
            common::KERNEL_TOL,
        );
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
    check_shape(
        AttentionShape::simple(3, 15, 12, 3, 2, 1e-6),
        3,
        5,
        5,
        Some(2),
    );
}

/// No norm, q/k/v width (2 heads × 5) different from the 7 channels, output rescaled by 2.
#[test]
fn attention_block_without_norm_and_rescaled() {
    let shape = AttentionShape {
        batch: 3,
        tokens: 3 * 7,
        channels: 7,
        heads: 2,
        head_dim: 5,
        norm: None,
        rescale_output_factor: 2.0,
        precision: Default::default(),
    };
    check_shape(shape, 3, 7, 6, None);
}

#[test]
fn attention_block_model_like() {
    // The cifar10 model's mid block shape at batch 3: 4×4 tokens, 1 head, 32 groups (C scaled down).
    check(3, 64, 4, 4, 32, 1, 3);
    // L = 100 > 64 spans two row tiles; 2 heads of 16.
    check(1, 32, 10, 10, 8, 2, 4);
}

/// The row softmax alone, in f64 on the host: each row's maximum subtracted, then normalised.
fn softmax_reference(s: &[f32], len: usize) -> Vec<f32> {
    s.chunks(len)
        .flat_map(|row| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / sum) as f32)
        })
        .collect()
}

/// Row lengths around the subgroup size (8 on lavapipe) and the 64-lane workgroup, one far
/// longer, a single column, and more rows than one workgroup of the serial kernel holds.
/// Softmax works in place, so an element a kernel leaves unwritten keeps its logit and fails.
#[test]
fn softmax_rows_awkward_lengths_on_both_reduction_paths() {
    let cases = [
        (5, 1),
        (3, 7),
        (4, 9),
        (2, 63),
        (2, 64),
        (3, 65),
        (2, 200),
        (1, 1031),
        (300, 17),
    ];
    common::for_each_reduction_path(|path, ctx| {
        for (i, &(rows, len)) in cases.iter().enumerate() {
            let logits: Vec<f32> = common::random(rows * len, 40 + i as u64)
                .iter()
                .map(|v| 20.0 * v)
                .collect();
            let want = softmax_reference(&logits, len);
            let buf = ctx
                .tensor_from("scores", &logits, &[rows, len], Precision::F32)
                .unwrap();
            let reduction = Choices::fixed(ctx).softmax(rows, len, 1);
            let d = attention::softmax_rows(ctx, reduction, &buf).expect("building");
            run_dispatches(ctx, &[d], 0).expect("running");
            let got = ctx.read_tensor(&buf).unwrap();
            common::assert_close(
                &format!("softmax {rows}x{len} on {path}"),
                &got,
                &want,
                common::KERNEL_TOL,
            );
        }
    });
}
