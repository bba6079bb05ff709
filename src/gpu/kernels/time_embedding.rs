//! The time embedding and every resnet's projection of it, precomputed once per schedule.
//!
//! They depend only on the timesteps, so a sampling run computes them for all its steps up
//! front: the sinusoidal projection on the host (exactly `cpu::ops::timestep_embedding`, which
//! matches torch to ~6e-8; f32 sin/cos of arguments up to 1000 on a GPU would not), then the MLP
//! `linear_2(silu(linear_1(·)))` and each `time_emb_proj(silu(emb))` as matmuls (`linear.wgsl`)
//! over all (step, image) rows at once. A resnet's table holds step `s`'s `[B, width]` block at
//! byte offset `s · stride_bytes` (a multiple of the storage offset alignment), which the conv
//! epilogue binds with a dynamic offset.

use anyhow::{bail, ensure, Context, Result};

use super::linear::{matmul_fixed, MatmulArgs, MatmulOptions};
use crate::cpu::ops::timestep_embedding;
use crate::gpu::kernel::Dispatch;
use crate::gpu::precision::Precision;
use crate::gpu::tensor::{GpuTensor, StepTable};
use crate::gpu::weights::GpuWeights;
use crate::gpu::GpuContext;
use crate::model::unet::{Linear, TimeEmbedding, TimeProj};

/// A per-step table of time-embedding values on the device (see [`StepTable`]).
pub type EmbeddingTable = StepTable;

/// A linear layer's uploaded weight `[out, in]` and bias `[out]`, checked against its shape.
fn linear_tensors<'w>(
    lin: &Linear,
    weights: &'w GpuWeights,
) -> Result<(&'w GpuTensor, &'w GpuTensor)> {
    let (w, b) = (weights.tensor(&lin.weight)?, weights.tensor(&lin.bias)?);
    w.expect(
        &lin.weight,
        &[lin.out_features, lin.in_features],
        Precision::F32,
    )?;
    b.expect(&lin.bias, &[lin.out_features], Precision::F32)?;
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
    let TimeProj::Positional {
        dim,
        flip_sin_to_cos,
        freq_shift,
    } = te.proj
    else {
        bail!(crate::gpu::support::unsupported(
            "a time embedding other than \"positional\""
        ))
    };
    ensure!(
        te.class.is_none(),
        crate::gpu::support::unsupported("class conditioning")
    );
    let sinusoid = timestep_embedding(&flat, dim, flip_sin_to_cos, freq_shift);
    let proj = ctx.tensor_from(
        "timestep sinusoid",
        &sinusoid.data,
        &[rows, dim],
        Precision::F32,
    )?;
    let (w1, b1) = linear_tensors(&te.linear_1, weights).context("time embedding linear_1")?;
    let (w2, b2) = linear_tensors(&te.linear_2, weights).context("time embedding linear_2")?;
    let hidden = ctx.tensor(
        "time embedding hidden",
        &[rows, te.linear_1.out_features],
        Precision::F32,
    );
    let emb = StepTable::packed(ctx, "time embedding", steps, batch, te.embed_dim());
    let emb_rows = emb.tensor().reshape(&[rows, te.embed_dim()])?;
    let dispatches = vec![
        matmul_fixed(
            ctx,
            &MatmulArgs {
                a: &proj,
                b: &w1.transpose(0, 1)?,
                bias: Some(b1),
                residual: None,
                out: &hidden,
            },
            MatmulOptions {
                silu_out: true,
                ..Default::default()
            },
        )?,
        matmul_fixed(
            ctx,
            &MatmulArgs {
                a: &hidden,
                b: &w2.transpose(0, 1)?,
                bias: Some(b2),
                residual: None,
                out: &emb_rows,
            },
            MatmulOptions::default(),
        )?,
    ];
    Ok((dispatches, emb))
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
        lin.in_features == emb.width(),
        "{}: takes {} features, the time embedding has {}",
        lin.weight,
        lin.in_features,
        emb.width()
    );
    let (w, b) = linear_tensors(lin, weights)?;
    let out = StepTable::aligned(
        ctx,
        &format!("{} table", lin.weight),
        emb.steps(),
        emb.batch(),
        lin.out_features,
    );
    // One product per step: the step's block of emb times Wᵀ into the step's aligned block.
    let dispatch = matmul_fixed(
        ctx,
        &MatmulArgs {
            a: emb.tensor(),
            b: &w.transpose(0, 1)?,
            bias: Some(b),
            residual: None,
            out: out.tensor(),
        },
        MatmulOptions {
            silu_in: true,
            ..Default::default()
        },
    )?;
    Ok((dispatch, out))
}
