//! The time embedding and every resnet's projection of it, precomputed once per schedule.
//!
//! They depend only on the timesteps, so a sampling run computes them for all its steps up
//! front: the sinusoidal projection on the host (exactly `cpu::ops::timestep_embedding`, which
//! matches torch to ~6e-8; f32 sin/cos of arguments up to 1000 on a GPU would not), then the MLP
//! `linear_2(silu(linear_1(·)))` and each `time_emb_proj(silu(emb))` as matmuls (`linear.wgsl`)
//! over all (step, image) rows at once. A resnet's table holds step `s`'s `[B, width]` block at
//! byte offset `s · stride_bytes` (a multiple of the storage offset alignment), which the conv
//! epilogue binds with a dynamic offset.

use anyhow::{ensure, Context, Result};

use super::linear::{matmul, Matmul, MatmulBuffers, Strides};
use crate::cpu::ops::timestep_embedding;
use crate::gpu::kernel::Dispatch;
use crate::gpu::weights::GpuWeights;
use crate::gpu::GpuContext;
use crate::model::unet::{Linear, TimeEmbedding};

/// A per-step table of time-embedding values on the device: `steps` blocks of `[batch, width]` f32.
pub struct EmbeddingTable {
    pub buffer: wgpu::Buffer,
    pub steps: usize,
    pub batch: usize,
    pub width: usize,
    /// Bytes from one step's block to the next.
    pub stride_bytes: u32,
}

impl EmbeddingTable {
    fn stride_elems(&self) -> usize {
        self.stride_bytes as usize / 4
    }

    /// Reads the table back as `[steps][batch · width]` (for tests and `ddim verify`).
    pub fn read(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        let all = ctx.read_f32(&self.buffer, self.steps * self.stride_elems())?;
        Ok((0..self.steps)
            .map(|s| all[s * self.stride_elems()..][..self.batch * self.width].to_vec())
            .collect())
    }
}

/// A linear layer's uploaded weight and bias, checked against its shape.
fn linear_buffers<'w>(
    lin: &Linear,
    weights: &'w GpuWeights,
) -> Result<(&'w wgpu::Buffer, &'w wgpu::Buffer)> {
    let (w, b) = (weights.buffer(&lin.weight)?, weights.buffer(&lin.bias)?);
    ensure!(
        w.size() == (lin.in_features * lin.out_features * 4) as u64
            && b.size() == (lin.out_features * 4) as u64,
        "{}: weight {} / bias {} bytes for a {}→{} linear layer",
        lin.weight,
        w.size(),
        b.size(),
        lin.in_features,
        lin.out_features
    );
    Ok((w, b))
}

/// The embedding `emb` for every (step, image): `timesteps[s][b]` is image b's timestep at
/// step s. Returns the dispatches (run them once before sampling) and the `[steps, B, dim]`
/// table, densely packed.
pub fn time_embedding(
    ctx: &GpuContext,
    te: &TimeEmbedding,
    weights: &GpuWeights,
    timesteps: &[Vec<f32>],
) -> Result<(Vec<Dispatch>, EmbeddingTable)> {
    let steps = timesteps.len();
    ensure!(steps > 0, "time embedding: no timesteps");
    let batch = timesteps[0].len();
    ensure!(
        batch > 0 && timesteps.iter().all(|t| t.len() == batch),
        "time embedding: every step needs the same number ({batch}) of timesteps"
    );
    let rows = steps * batch;
    let flat: Vec<f32> = timesteps.concat();
    let sinusoid = timestep_embedding(&flat, te.proj_dim, te.flip_sin_to_cos, te.freq_shift);
    let proj = ctx.upload("timestep sinusoid", &sinusoid.data);
    let (w1, b1) = linear_buffers(&te.linear_1, weights).context("time embedding linear_1")?;
    let (w2, b2) = linear_buffers(&te.linear_2, weights).context("time embedding linear_2")?;
    let hidden = ctx.storage(
        "time embedding hidden",
        (rows * te.linear_1.out_features * 4) as u64,
    );
    let dim = te.embed_dim();
    let emb = ctx.storage("time embedding", (rows * dim * 4) as u64);
    let first = Matmul {
        silu_out: true,
        ..Matmul::linear(rows, te.proj_dim, te.linear_1.out_features)
    };
    let second = Matmul::linear(rows, te.linear_2.in_features, dim);
    let dispatches = vec![
        matmul(
            ctx,
            &first,
            &MatmulBuffers {
                a: &proj,
                b: w1,
                bias: Some(b1),
                residual: None,
                out: &hidden,
            },
        )?,
        matmul(
            ctx,
            &second,
            &MatmulBuffers {
                a: &hidden,
                b: w2,
                bias: Some(b2),
                residual: None,
                out: &emb,
            },
        )?,
    ];
    Ok((
        dispatches,
        EmbeddingTable {
            buffer: emb,
            steps,
            batch,
            width: dim,
            stride_bytes: (batch * dim * 4) as u32,
        },
    ))
}

/// `lin(silu(emb))` for every (step, image): one dispatch writing a table whose per-step blocks
/// are aligned for dynamic storage offsets.
pub fn time_projection(
    ctx: &GpuContext,
    lin: &Linear,
    weights: &GpuWeights,
    emb: &EmbeddingTable,
) -> Result<(Dispatch, EmbeddingTable)> {
    ensure!(
        lin.in_features == emb.width,
        "{}: takes {} features, the time embedding has {}",
        lin.weight,
        lin.in_features,
        emb.width
    );
    let (w, b) = linear_buffers(lin, weights)?;
    let align = ctx.limits.min_storage_buffer_offset_alignment as usize;
    let block = emb.batch * lin.out_features * 4;
    let stride_bytes = block.next_multiple_of(align);
    let out = ctx.storage(
        &format!("{} table", lin.weight),
        (stride_bytes * emb.steps) as u64,
    );
    // One product per step (grid z): A = emb's block, out = the step's aligned block.
    let op = Matmul {
        m: emb.batch,
        n: lin.out_features,
        k: lin.in_features,
        batch: emb.steps,
        inner_count: 1,
        a: Strides {
            offset: 0,
            row: emb.width,
            col: 1,
            outer: emb.stride_elems(),
            inner: 0,
        },
        b: Strides {
            offset: 0,
            row: 1,
            col: lin.in_features,
            outer: 0,
            inner: 0,
        },
        c: Strides {
            offset: 0,
            row: lin.out_features,
            col: 1,
            outer: stride_bytes / 4,
            inner: 0,
        },
        alpha: 1.0,
        out_scale: 1.0,
        silu_in: true,
        silu_out: false,
        bias_per_row: false,
    };
    let dispatch = matmul(
        ctx,
        &op,
        &MatmulBuffers {
            a: &emb.buffer,
            b: w,
            bias: Some(b),
            residual: None,
            out: &out,
        },
    )?;
    Ok((
        dispatch,
        EmbeddingTable {
            buffer: out,
            steps: emb.steps,
            batch: emb.batch,
            width: lin.out_features,
            stride_bytes: stride_bytes as u32,
        },
    ))
}
