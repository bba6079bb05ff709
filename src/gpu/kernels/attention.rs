//! The whole self-attention block of a diffusers `UNet2DModel` on NHWC activations:
//! group norm → fused q/k/v projection → per head softmax(QKᵀ/√d)·V → output projection + residual.
//!
//! Dispatches: group norm (3, `group_norm.rs`), one q/k product with N = 2D, the v projection
//! computed transposed (Vᵀ per image, `[D, L]`, so that P·V reads both operands contiguously
//! along its k = key dimension), then per batch chunk the scores product, the row softmax
//! (`shaders/attention.wgsl`) and the P·V product, and finally the output projection with the
//! residual fused in its epilogue. The score matrix is materialised (L ≤ 1024 here); batches
//! are chunked so it stays within one binding.

use anyhow::{ensure, Result};

use super::group_norm::{group_norm, GroupNormIo, GroupNormScratch, GroupNormShape};
use super::linear::{matmul, Matmul, MatmulArgs, MatmulOptions};
use crate::gpu::choices::Choices;
use crate::gpu::kernel::{grid_2d, Binding, Dispatch, KernelSpec};
use crate::gpu::precision::Precision;
use crate::gpu::tensor::GpuTensor;
use crate::gpu::variants::Reduction;
use crate::gpu::GpuContext;

pub const SOURCE: &str = include_str!("../../../shaders/attention.wgsl");
/// With the subgroup softmax appended (compiled only on devices with `SUBGROUP`).
pub const SOURCE_SUBGROUP: &str = concat!(
    include_str!("../../../shaders/attention.wgsl"),
    "\n",
    include_str!("../../../shaders/softmax_subgroup.wgsl"),
);
const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SoftmaxParams {
    pub rows: u32,
    pub len: u32,
    pub _pad: [u32; 2],
}

/// Shape of one attention block: `[batch, tokens, channels]` NHWC activations, projected to
/// `heads × head_dim` for q, k and v (diffusers' `inner_dim`, usually equal to `channels`).
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    /// Sequence length H·W (token index y·W + x).
    pub tokens: usize,
    pub channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// The group norm before the projections: (groups, eps); None when the block has none.
    pub norm: Option<(usize, f32)>,
    /// The block's output is `(to_out(o) + x) / rescale_output_factor`.
    pub rescale_output_factor: f32,
    /// Storage type of x, out, the projection weights and every intermediate but the scores,
    /// which stay f32 (as do the biases and the norm's parameters).
    pub precision: Precision,
}

impl AttentionShape {
    /// The usual block: `heads` heads splitting `channels`, a group norm, no rescaling.
    pub fn simple(
        batch: usize,
        tokens: usize,
        channels: usize,
        heads: usize,
        groups: usize,
        eps: f32,
    ) -> Self {
        Self {
            batch,
            tokens,
            channels,
            heads,
            head_dim: channels / heads.max(1),
            norm: Some((groups, eps)),
            rescale_output_factor: 1.0,
            precision: Precision::F32,
        }
    }

    /// Width of q, k and v.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn norm_shape(&self) -> Option<GroupNormShape> {
        self.norm.map(|(groups, eps)| GroupNormShape {
            batch: self.batch,
            hw: self.tokens,
            channels: self.channels,
            groups,
            eps,
            silu: false,
            precision: self.precision,
        })
    }

    /// Images per score chunk so that one chunk's scores fit in `max_binding_bytes`.
    pub fn batch_chunk(&self, max_binding_bytes: u64) -> usize {
        let per_image = (self.heads * self.tokens * self.tokens * 4) as u64;
        ((max_binding_bytes / per_image.max(1)) as usize).clamp(1, self.batch.max(1))
    }
}

/// The block's parameters on the device. `wqkv` is `[3D, C]` (to_q, to_k, to_v rows stacked,
/// torch `[out, in]` layout, D = heads·head_dim) with bias `[3D]`; `wo` is `[C, D]` with bias `[C]`.
/// Without a norm, gamma and beta are empty.
pub struct AttentionWeights {
    pub gamma: GpuTensor,
    pub beta: GpuTensor,
    pub wqkv: GpuTensor,
    pub bqkv: GpuTensor,
    /// to_v's bias alone (`[D]`), added per row of Vᵀ.
    pub bv: GpuTensor,
    pub wo: GpuTensor,
    pub bo: GpuTensor,
}

/// Host-side tensors of one attention block, torch layouts (`Linear` weights `[out, in]`).
/// gamma and beta are empty when the block has no norm.
pub struct AttentionParamsHost<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub wq: &'a [f32],
    pub bq: &'a [f32],
    pub wk: &'a [f32],
    pub bk: &'a [f32],
    pub wv: &'a [f32],
    pub bv: &'a [f32],
    pub wo: &'a [f32],
    pub bo: &'a [f32],
}

impl AttentionWeights {
    /// Uploads the block's parameters, stacking q/k/v into one projection.
    pub fn upload(
        ctx: &GpuContext,
        shape: &AttentionShape,
        p: &AttentionParamsHost<'_>,
    ) -> Result<Self> {
        let (c, d) = (shape.channels, shape.inner());
        let norm_len = if shape.norm.is_some() { c } else { 0 };
        for (name, v, n) in [
            ("group norm weight", p.gamma, norm_len),
            ("group norm bias", p.beta, norm_len),
            ("to_q weight", p.wq, d * c),
            ("to_q bias", p.bq, d),
            ("to_k weight", p.wk, d * c),
            ("to_k bias", p.bk, d),
            ("to_v weight", p.wv, d * c),
            ("to_v bias", p.bv, d),
            ("to_out weight", p.wo, c * d),
            ("to_out bias", p.bo, c),
        ] {
            ensure!(
                v.len() == n,
                "attention {name}: {} values, expected {n} for {c} channels and inner width {d}",
                v.len()
            );
        }
        let wqkv: Vec<f32> = [p.wq, p.wk, p.wv].concat();
        let bqkv: Vec<f32> = [p.bq, p.bk, p.bv].concat();
        let (p32, precision) = (Precision::F32, shape.precision);
        Ok(Self {
            gamma: ctx.tensor_from("attention norm gamma", p.gamma, &[norm_len], p32)?,
            beta: ctx.tensor_from("attention norm beta", p.beta, &[norm_len], p32)?,
            wqkv: ctx.tensor_from("attention wqkv", &wqkv, &[3 * d, c], precision)?,
            bqkv: ctx.tensor_from("attention bqkv", &bqkv, &[3 * d], p32)?,
            bv: ctx.tensor_from("attention bv", p.bv, &[d], p32)?,
            wo: ctx.tensor_from("attention wo", p.wo, &[c, d], precision)?,
            bo: ctx.tensor_from("attention bo", p.bo, &[c], p32)?,
        })
    }
}

/// Intermediate tensors of an attention block; shareable between blocks of the same shape.
pub struct AttentionScratch {
    /// `[B, L, C]`.
    pub normed: GpuTensor,
    /// Q and K side by side, `[B, L, 2D]`.
    pub qk: GpuTensor,
    /// Vᵀ, `[B, D, L]`.
    pub vt: GpuTensor,
    /// f32 `[images per chunk, heads, L, L]`.
    pub scores: GpuTensor,
    /// `[B, L, D]`.
    pub heads_out: GpuTensor,
    pub norm: GroupNormScratch,
}

impl AttentionScratch {
    pub fn new(ctx: &GpuContext, shape: &AttentionShape) -> Self {
        let (b, l, c, d) = (shape.batch, shape.tokens, shape.channels, shape.inner());
        let chunk = shape.batch_chunk(ctx.max_binding_bytes());
        let norm_shapes: Vec<GroupNormShape> = shape.norm_shape().into_iter().collect();
        let p = shape.precision;
        Self {
            normed: ctx.tensor("attention normed", &[b, l, c], p),
            qk: ctx.tensor("attention qk", &[b, l, 2 * d], p),
            vt: ctx.tensor("attention vt", &[b, d, l], p),
            scores: ctx.tensor(
                "attention scores",
                &[chunk, shape.heads, l, l],
                Precision::F32,
            ),
            heads_out: ctx.tensor("attention heads", &[b, l, d], p),
            norm: GroupNormScratch::new(ctx, &norm_shapes),
        }
    }
}

fn softmax_spec(reduction: Reduction) -> KernelSpec {
    let (shader, source, entry) = match reduction {
        Reduction::Subgroup => ("attention_subgroup", SOURCE_SUBGROUP, "softmax_rows_sg"),
        Reduction::Serial => ("attention", SOURCE, "softmax_rows"),
    };
    KernelSpec {
        shader,
        source,
        entry,
        bindings: vec![Binding::Uniform, Binding::StorageReadWrite],
    }
}

/// Softmax over the last dimension of the f32 tensor `scores`, in place: one invocation per
/// row, or one workgroup of subgroups per row.
pub fn softmax_rows(
    ctx: &GpuContext,
    reduction: Reduction,
    scores: &GpuTensor,
) -> Result<Dispatch> {
    let len = scores.shape().last().copied().unwrap_or(0);
    let rows = scores.numel() / len.max(1);
    ensure!(rows > 0 && len > 0, "softmax: empty ({rows} rows of {len})");
    let binding = scores.dense("softmax scores", scores.shape(), Precision::F32)?;
    ensure!(
        reduction == Reduction::Serial || ctx.uses_subgroups(),
        "softmax: the subgroup rows need a device with subgroups"
    );
    let kernel = ctx.kernel(&softmax_spec(reduction))?;
    let params = SoftmaxParams {
        rows: rows as u32,
        len: len as u32,
        _pad: [0; 2],
    };
    let uniform = ctx.uniform("softmax params", &params);
    let bind_group = kernel.bind_group(&ctx.device, &[(&uniform).into(), binding])?;
    let n = (rows * len) as u64;
    Ok(Dispatch {
        label: format!("softmax {rows}x{len}"),
        kernel,
        bind_group,
        workgroups: grid_2d(
            match reduction {
                Reduction::Subgroup => rows as u32,
                Reduction::Serial => (rows as u32).div_ceil(WORKGROUP),
            },
            ctx.limits.max_compute_workgroups_per_dimension,
        ),
        dynamic_strides: vec![],
        flops: 4 * n,
        bytes: 16 * n,
    })
}

/// A product over `images` images with the variant `choices` gives its shape.
fn product(
    ctx: &GpuContext,
    (choices, images): (&Choices, usize),
    args: &MatmulArgs<'_>,
    opts: MatmulOptions,
) -> Result<Dispatch> {
    let (op, types) = Matmul::of(args, opts)?;
    matmul(ctx, choices.matmul(&op, types, images), args, opts)
}

/// Dispatches computing `out = to_out(attention(norm(x))) + x` for NHWC `x` `[B, L, C]` (or
/// `[B, H, W, C]`), with scores for at most `images_per_chunk` images at a time (None: as many
/// as fit one binding). `out` must differ from `x` and from the scratch tensors.
pub fn attention_block(
    ctx: &GpuContext,
    shape: &AttentionShape,
    weights: &AttentionWeights,
    scratch: &AttentionScratch,
    choices: &Choices,
    (x, out): (&GpuTensor, &GpuTensor),
    images_per_chunk: Option<usize>,
) -> Result<Vec<Dispatch>> {
    let (b, l, c, heads, d) = (
        shape.batch,
        shape.tokens,
        shape.channels,
        shape.heads,
        shape.head_dim,
    );
    ensure!(
        b > 0 && l > 0 && c > 0 && heads > 0 && d > 0,
        "attention: empty shape {shape:?}"
    );
    ensure!(
        shape.rescale_output_factor != 0.0,
        "attention: rescale_output_factor is 0"
    );
    let inner = shape.inner();
    let x = x.reshape(&[b, l, c])?;
    let out = out.reshape(&[b, l, c])?;
    let mut dispatches = vec![];
    let tokens = match shape.norm_shape() {
        Some(norm) => {
            let io = GroupNormIo {
                x: &x,
                gamma: &weights.gamma,
                beta: &weights.beta,
                y: &scratch.normed,
            };
            let combine = choices.group_norm(&norm);
            dispatches.extend(group_norm(ctx, &norm, combine, &scratch.norm, &io)?);
            &scratch.normed
        }
        None => &x,
    };
    let rows = |t: &GpuTensor, width: usize| t.reshape(&[b * l, width]);
    // [Q K] = tokens · [Wq Wk]ᵀ + [bq bk].
    dispatches.push(product(
        ctx,
        (choices, b),
        &MatmulArgs {
            a: &rows(tokens, c)?,
            b: &weights.wqkv.narrow(0, 0, 2 * inner)?.transpose(0, 1)?,
            bias: Some(&weights.bqkv.narrow(0, 0, 2 * inner)?),
            residual: None,
            out: &rows(&scratch.qk, 2 * inner)?,
        },
        MatmulOptions::default(),
    )?);
    // Vᵀ[image] = Wv · tokens[image]ᵀ + bv (per row).
    dispatches.push(product(
        ctx,
        (choices, b),
        &MatmulArgs {
            a: &weights.wqkv.narrow(0, 2 * inner, inner)?,
            b: &tokens.transpose(1, 2)?,
            bias: Some(&weights.bv),
            residual: None,
            out: &scratch.vt,
        },
        MatmulOptions {
            bias_per_row: true,
            ..Default::default()
        },
    )?);
    let chunk = images_per_chunk
        .unwrap_or_else(|| shape.batch_chunk(ctx.max_binding_bytes()))
        .clamp(1, scratch.scores.shape()[0]);
    // Per head: [images, heads, L, d] views of Q, K, V and of the heads' output.
    let heads_of = |t: &GpuTensor, b0: usize, nb: usize, start: usize| -> Result<GpuTensor> {
        t.narrow(0, b0, nb)?
            .narrow(2, start, inner)?
            .split(2, heads, d)?
            .transpose(1, 2)
    };
    let mut b0 = 0;
    while b0 < b {
        let nb = chunk.min(b - b0);
        let scores = scratch.scores.narrow(0, 0, nb)?;
        // S = Q Kᵀ / √d.
        dispatches.push(product(
            ctx,
            (choices, nb),
            &MatmulArgs {
                a: &heads_of(&scratch.qk, b0, nb, 0)?,
                b: &heads_of(&scratch.qk, b0, nb, inner)?.transpose(2, 3)?,
                bias: None,
                residual: None,
                out: &scores,
            },
            MatmulOptions {
                alpha: (1.0 / (d as f64).sqrt()) as f32,
                ..Default::default()
            },
        )?);
        let reduction = choices.softmax(nb * heads * l, l, nb);
        dispatches.push(softmax_rows(ctx, reduction, &scores)?);
        // O = P V, written into the heads' columns of [B, L, D].
        let vt = scratch.vt.narrow(0, b0, nb)?.split(1, heads, d)?;
        dispatches.push(product(
            ctx,
            (choices, nb),
            &MatmulArgs {
                a: &scores,
                b: &vt.transpose(2, 3)?,
                bias: None,
                residual: None,
                out: &heads_of(&scratch.heads_out, b0, nb, 0)?,
            },
            MatmulOptions::default(),
        )?);
        b0 += nb;
    }
    // out = (O · Woᵀ + bo + x) / rescale_output_factor.
    dispatches.push(product(
        ctx,
        (choices, b),
        &MatmulArgs {
            a: &rows(&scratch.heads_out, inner)?,
            b: &weights.wo.transpose(0, 1)?,
            bias: Some(&weights.bo),
            residual: Some(&rows(&x, c)?),
            out: &rows(&out, c)?,
        },
        MatmulOptions {
            out_scale: 1.0 / shape.rescale_output_factor,
            ..Default::default()
        },
    )?);
    for dsp in dispatches.iter_mut() {
        dsp.label = format!("attention/{}", dsp.label);
    }
    Ok(dispatches)
}
