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

use super::group_norm::{group_norm, GroupNormScratch, GroupNormShape};
use super::linear::{matmul_as, Matmul, MatmulBuffers, MatmulTypes, Strides};
use crate::gpu::kernel::{grid_2d, Binding, Dispatch, KernelSpec};
use crate::gpu::precision::Precision;
use crate::gpu::{candidates, GpuContext};

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
/// Without a norm, gamma and beta are unused placeholders.
pub struct AttentionWeights {
    pub gamma: wgpu::Buffer,
    pub beta: wgpu::Buffer,
    pub wqkv: wgpu::Buffer,
    pub bqkv: wgpu::Buffer,
    /// to_v's bias alone (`[D]`), added per row of Vᵀ.
    pub bv: wgpu::Buffer,
    pub wo: wgpu::Buffer,
    pub bo: wgpu::Buffer,
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
        let precision = shape.precision;
        Ok(Self {
            gamma: ctx.upload("attention norm gamma", p.gamma),
            beta: ctx.upload("attention norm beta", p.beta),
            wqkv: ctx.upload_as("attention wqkv", &wqkv, precision),
            bqkv: ctx.upload("attention bqkv", &bqkv),
            bv: ctx.upload("attention bv", p.bv),
            wo: ctx.upload_as("attention wo", p.wo, precision),
            bo: ctx.upload("attention bo", p.bo),
        })
    }
}

/// Intermediate buffers of an attention block; shareable between blocks no larger than it.
pub struct AttentionScratch {
    pub normed: wgpu::Buffer,
    /// Q and K, `[B, L, 2D]`.
    pub qk: wgpu::Buffer,
    /// Vᵀ, `[B, D, L]`.
    pub vt: wgpu::Buffer,
    pub scores: wgpu::Buffer,
    pub heads_out: wgpu::Buffer,
    pub norm: GroupNormScratch,
}

impl AttentionScratch {
    pub fn new(ctx: &GpuContext, shape: &AttentionShape) -> Self {
        let (b, l, c, d) = (shape.batch, shape.tokens, shape.channels, shape.inner());
        let chunk = shape.batch_chunk(ctx.max_binding_bytes());
        let norm_shapes: Vec<GroupNormShape> = shape.norm_shape().into_iter().collect();
        let e = shape.precision.bytes();
        Self {
            normed: ctx.storage("attention normed", (b * l * c * e) as u64),
            qk: ctx.storage("attention qk", (b * l * 2 * d * e) as u64),
            vt: ctx.storage("attention vt", (b * l * d * e) as u64),
            scores: ctx.storage("attention scores", (chunk * shape.heads * l * l * 4) as u64),
            heads_out: ctx.storage("attention heads", (b * l * d * e) as u64),
            norm: GroupNormScratch::new(ctx, &norm_shapes),
        }
    }
}

fn softmax_spec(subgroups: bool) -> KernelSpec {
    let (shader, source, entry) = if subgroups {
        ("attention_subgroup", SOURCE_SUBGROUP, "softmax_rows_sg")
    } else {
        ("attention", SOURCE, "softmax_rows")
    };
    KernelSpec {
        shader,
        source,
        entry,
        bindings: vec![Binding::Uniform, Binding::StorageReadWrite],
    }
}

/// Softmax over each of `rows` rows of length `len` in `scores`, in place: one invocation per
/// row, or one workgroup of subgroups per row where the context uses them and tuning does not
/// find the serial rows faster.
pub fn softmax_rows(
    ctx: &GpuContext,
    rows: usize,
    len: usize,
    scores: &wgpu::Buffer,
) -> Result<Dispatch> {
    ensure!(rows > 0 && len > 0, "softmax: empty ({rows} rows of {len})");
    ensure!(
        scores.size() >= (rows * len * 4) as u64,
        "softmax: scores buffer holds fewer than {rows}×{len} f32"
    );
    let subgroups = if ctx.uses_subgroups() {
        let candidates = [("subgroup", true), ("serial", false)];
        ctx.tuner.choose(
            "softmax",
            &format!("rows{rows} len{len}"),
            &candidates,
            true,
            |subgroups, best| {
                let scratch =
                    candidates::scratch(ctx, "tune softmax scores", (rows * len * 4) as u64);
                let d = softmax_dispatch(ctx, rows, len, &scratch, subgroups)?;
                candidates::time_dispatch(ctx, &d, candidates::runs_for(ctx), best)
            },
        )?
    } else {
        false
    };
    softmax_dispatch(ctx, rows, len, scores, subgroups)
}

fn softmax_dispatch(
    ctx: &GpuContext,
    rows: usize,
    len: usize,
    scores: &wgpu::Buffer,
    subgroups: bool,
) -> Result<Dispatch> {
    let kernel = ctx.kernel(&softmax_spec(subgroups))?;
    let params = SoftmaxParams {
        rows: rows as u32,
        len: len as u32,
        _pad: [0; 2],
    };
    let uniform = ctx.uniform("softmax params", &params);
    let bind_group = kernel.bind_group(&ctx.device, &[(&uniform).into(), scores.into()])?;
    let n = (rows * len) as u64;
    Ok(Dispatch {
        label: format!("softmax {rows}x{len}"),
        kernel,
        bind_group,
        workgroups: grid_2d(
            if subgroups {
                rows as u32
            } else {
                (rows as u32).div_ceil(WORKGROUP)
            },
            ctx.limits.max_compute_workgroups_per_dimension,
        ),
        dynamic_strides: vec![],
        flops: 4 * n,
        bytes: 16 * n,
    })
}

/// Dispatches computing `out = to_out(attention(norm(x))) + x` for NHWC `x` `[B, L, C]`.
/// `out` must differ from `x` and from the scratch buffers.
pub fn attention_block(
    ctx: &GpuContext,
    shape: &AttentionShape,
    weights: &AttentionWeights,
    scratch: &AttentionScratch,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let chunk = shape.batch_chunk(ctx.max_binding_bytes());
    attention_block_chunked(ctx, shape, weights, scratch, x, out, chunk)
}

/// As [`attention_block`], computing scores for at most `images_per_chunk` images at a time.
pub fn attention_block_chunked(
    ctx: &GpuContext,
    shape: &AttentionShape,
    weights: &AttentionWeights,
    scratch: &AttentionScratch,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    images_per_chunk: usize,
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
    let p = shape.precision;
    let every = MatmulTypes::all(p);
    // Scores are f32: from q and k in `p`, and read as f32 probabilities by P·V.
    let to_scores = MatmulTypes {
        c: Precision::F32,
        ..every
    };
    let from_scores = MatmulTypes {
        a: Precision::F32,
        ..every
    };
    let mut dispatches = vec![];
    let tokens = match shape.norm_shape() {
        Some(norm) => {
            dispatches.extend(group_norm(
                ctx,
                &norm,
                &scratch.norm,
                x,
                &weights.gamma,
                &weights.beta,
                &scratch.normed,
            )?);
            &scratch.normed
        }
        None => x,
    };
    dispatches.push(matmul_as(
        ctx,
        &Matmul::linear(b * l, c, 2 * inner),
        &MatmulBuffers {
            a: tokens,
            b: &weights.wqkv,
            bias: Some(&weights.bqkv),
            residual: None,
            out: &scratch.qk,
        },
        every,
    )?);
    // Vᵀ[image][j][token] = Σ_c Wv[j][c] · tokens[image][token][c] + bv[j].
    let v_transposed = Matmul {
        m: inner,
        n: l,
        k: c,
        batch: b,
        inner_count: 1,
        a: Strides {
            offset: 2 * inner * c,
            row: c,
            col: 1,
            outer: 0,
            inner: 0,
        },
        b: Strides {
            offset: 0,
            row: 1,
            col: c,
            outer: l * c,
            inner: 0,
        },
        c: Strides {
            offset: 0,
            row: l,
            col: 1,
            outer: inner * l,
            inner: 0,
        },
        bias_per_row: true,
        ..Matmul::linear(1, 1, 1)
    };
    dispatches.push(matmul_as(
        ctx,
        &v_transposed,
        &MatmulBuffers {
            a: &weights.wqkv,
            b: tokens,
            bias: Some(&weights.bv),
            residual: None,
            out: &scratch.vt,
        },
        every,
    )?);
    let chunk = images_per_chunk.max(1);
    ensure!(
        scratch.scores.size() >= (chunk.min(b) * heads * l * l * 4) as u64,
        "attention: score scratch too small for {shape:?}"
    );
    let mut b0 = 0;
    while b0 < b {
        let nb = chunk.min(b - b0);
        // Scores S[z = image·heads + head] = Q Kᵀ / √d, each L×L, for the images b0..b0+nb.
        let qk_image = l * 2 * inner;
        let scores = Matmul {
            m: l,
            n: l,
            k: d,
            batch: nb * heads,
            inner_count: heads,
            a: Strides {
                offset: b0 * qk_image,
                row: 2 * inner,
                col: 1,
                outer: qk_image,
                inner: d,
            },
            b: Strides {
                offset: b0 * qk_image + inner,
                row: 1,
                col: 2 * inner,
                outer: qk_image,
                inner: d,
            },
            c: Strides {
                offset: 0,
                row: l,
                col: 1,
                outer: heads * l * l,
                inner: l * l,
            },
            alpha: (1.0 / (d as f64).sqrt()) as f32,
            out_scale: 1.0,
            silu_in: false,
            silu_out: false,
            bias_per_row: false,
        };
        dispatches.push(matmul_as(
            ctx,
            &scores,
            &MatmulBuffers {
                a: &scratch.qk,
                b: &scratch.qk,
                bias: None,
                residual: None,
                out: &scratch.scores,
            },
            to_scores,
        )?);
        dispatches.push(softmax_rows(ctx, nb * heads * l, l, &scratch.scores)?);
        // O[image, token, head·d + j] = Σ_key P[key] Vᵀ[head·d + j, key].
        let weighted = Matmul {
            m: l,
            n: d,
            k: l,
            batch: nb * heads,
            inner_count: heads,
            a: Strides {
                offset: 0,
                row: l,
                col: 1,
                outer: heads * l * l,
                inner: l * l,
            },
            b: Strides {
                offset: b0 * inner * l,
                row: 1,
                col: l,
                outer: inner * l,
                inner: d * l,
            },
            c: Strides {
                offset: b0 * l * inner,
                row: inner,
                col: 1,
                outer: l * inner,
                inner: d,
            },
            alpha: 1.0,
            out_scale: 1.0,
            silu_in: false,
            silu_out: false,
            bias_per_row: false,
        };
        dispatches.push(matmul_as(
            ctx,
            &weighted,
            &MatmulBuffers {
                a: &scratch.scores,
                b: &scratch.vt,
                bias: None,
                residual: None,
                out: &scratch.heads_out,
            },
            from_scores,
        )?);
        b0 += nb;
    }
    dispatches.push(matmul_as(
        ctx,
        &Matmul {
            out_scale: 1.0 / shape.rescale_output_factor,
            ..Matmul::linear(b * l, inner, c)
        },
        &MatmulBuffers {
            a: &scratch.heads_out,
            b: &weights.wo,
            bias: Some(&weights.bo),
            residual: Some(x),
            out,
        },
        every,
    )?);
    for dsp in dispatches.iter_mut() {
        dsp.label = format!("attention/{}", dsp.label);
    }
    Ok(dispatches)
}
