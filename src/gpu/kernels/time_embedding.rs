//! The time embedding and every resnet's projection of it, precomputed once per schedule.
//!
//! They depend only on the timesteps (and the class labels, fixed for a run), so a sampling run
//! computes them for all its steps up front: the time projection on the host ([`Projection`]:
//! the sinusoid exactly as `cpu::ops::timestep_embedding`, which matches torch to ~6e-8, the
//! Gaussian Fourier features or a learned row; f32 sin/cos of arguments up to 1000 on a GPU would
//! not be as exact), then the MLP `linear_2(silu(linear_1(·)))` and each `time_emb_proj(silu(emb))`
//! as matmuls (`linear.wgsl`) over all (step, image) rows at once. Class embeddings are added to
//! the embedding table before the projections read it ([`add_class_rows`], `embedding.wgsl`).
//! A resnet's table holds step `s`'s `[B, width]` block at byte offset `s · stride_bytes` (a
//! multiple of the storage offset alignment), which the conv epilogue binds with a dynamic
//! offset.

use anyhow::{bail, ensure, Context, Result};

use super::linear::{matmul_fixed, MatmulArgs, MatmulOptions};
use crate::cpu::ops::timestep_embedding;
use crate::gpu::kernel::{grid_2d, Binding, Dispatch, KernelSpec};
use crate::gpu::precision::Precision;
use crate::gpu::tensor::{GpuTensor, StepTable};
use crate::gpu::weights::GpuWeights;
use crate::gpu::GpuContext;
use crate::model::unet::{Linear, TimeEmbedding};

/// A per-step table of time-embedding values on the device (see [`StepTable`]).
pub type EmbeddingTable = StepTable;

pub const SOURCE: &str = include_str!("../../../shaders/embedding.wgsl");
const WORKGROUP: u32 = 64;

/// diffusers' `time_proj`: what the time MLP sees of a timestep, computed on the host in f32 as
/// torch does.
#[derive(Clone, Copy, Debug)]
pub enum Projection<'a> {
    /// `Timesteps(dim, flip_sin_to_cos, freq_shift)`: `cpu::ops::timestep_embedding`.
    Sinusoid {
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    },
    /// `GaussianFourierProjection` (log = True, [sin | cos], the config's flip is not passed):
    /// `p = ((ln t)·W)·2·π` rounded to f32 after each product, width `2·len(W)`. `t` is σ > 0.
    Fourier { weight: &'a [f32] },
    /// `nn.Embedding(rows, dim)`: row `t` of `table`; `t` must be a whole number below `rows`.
    Learned { table: &'a [f32], dim: usize },
}

impl Projection<'_> {
    /// The sinusoid of a model description.
    pub fn sinusoid(te: &TimeEmbedding) -> Projection<'static> {
        Projection::Sinusoid {
            dim: te.proj_dim,
            flip_sin_to_cos: te.flip_sin_to_cos,
            freq_shift: te.freq_shift,
        }
    }

    /// Values per timestep.
    pub fn width(&self) -> usize {
        match *self {
            Self::Sinusoid { dim, .. } | Self::Learned { dim, .. } => dim,
            Self::Fourier { weight } => 2 * weight.len(),
        }
    }

    /// `[t.len(), width]` row-major.
    pub fn project(&self, t: &[f32]) -> Result<Vec<f32>> {
        match *self {
            Self::Sinusoid {
                dim,
                flip_sin_to_cos,
                freq_shift,
            } => Ok(timestep_embedding(t, dim, flip_sin_to_cos, freq_shift).data),
            Self::Fourier { weight } => {
                let half = weight.len();
                let pi = std::f64::consts::PI as f32;
                let mut out = vec![0.0; t.len() * 2 * half];
                for (row, &ti) in out.chunks_mut(2 * half).zip(t) {
                    ensure!(
                        ti > 0.0,
                        "a fourier time embedding takes σ > 0, got timestep {ti}"
                    );
                    let log_t = ti.ln();
                    for (i, &w) in weight.iter().enumerate() {
                        // torch: x[:, None] * W[None, :] * 2 * π, each product rounded to f32.
                        let p = (log_t * w) * 2.0 * pi;
                        row[i] = (p as f64).sin() as f32;
                        row[half + i] = (p as f64).cos() as f32;
                    }
                }
                Ok(out)
            }
            Self::Learned { table, dim } => {
                ensure!(
                    dim > 0 && table.len() % dim == 0,
                    "a learned time embedding of {} values is not rows of {dim}",
                    table.len()
                );
                let rows = table.len() / dim;
                let mut out = Vec::with_capacity(t.len() * dim);
                for &ti in t {
                    ensure!(
                        ti.fract() == 0.0 && ti >= 0.0 && (ti as usize) < rows,
                        "a learned time embedding takes whole timesteps below {rows}, got {ti}"
                    );
                    out.extend_from_slice(&table[ti as usize * dim..][..dim]);
                }
                Ok(out)
            }
        }
    }
}

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

/// The embedding `emb` for every (step, image) of a model with the sinusoidal projection:
/// `timesteps[s][b]` is image b's timestep at step s. Returns the dispatches (run them once
/// before sampling) and the `[steps, B, dim]` table, densely packed.
pub fn time_embedding(
    ctx: &GpuContext,
    te: &TimeEmbedding,
    weights: &GpuWeights,
    timesteps: &[Vec<f32>],
) -> Result<(Vec<Dispatch>, EmbeddingTable)> {
    let mlp = (&te.linear_1, &te.linear_2);
    embedding_mlp(ctx, &Projection::sinusoid(te), mlp, weights, timesteps)
}

/// `linear_2(silu(linear_1(projection(t))))` for every `timesteps[s][b]`, as
/// [`time_embedding`]; also the `timestep`-type class embedding (its projection of the labels,
/// one step).
pub fn embedding_mlp(
    ctx: &GpuContext,
    projection: &Projection<'_>,
    (linear_1, linear_2): (&Linear, &Linear),
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
    let width = projection.width();
    ensure!(
        linear_1.in_features == width,
        "{} takes {} features, the time projection gives {width}",
        linear_1.weight,
        linear_1.in_features
    );
    let proj = ctx.tensor_from(
        "time projection",
        &projection.project(&flat)?,
        &[rows, width],
        Precision::F32,
    )?;
    let (w1, b1) = linear_tensors(linear_1, weights).context("embedding linear_1")?;
    let (w2, b2) = linear_tensors(linear_2, weights).context("embedding linear_2")?;
    let hidden = ctx.tensor(
        "time embedding hidden",
        &[rows, linear_1.out_features],
        Precision::F32,
    );
    let dim = linear_2.out_features;
    let emb = StepTable::packed(ctx, "time embedding", steps, batch, dim);
    let emb_rows = emb.tensor().reshape(&[rows, dim])?;
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

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub batch: u32,
    pub width: u32,
    pub row_groups: u32,
}

/// `emb[s, b] += rows[labels[b]]` for every step s: a class embedding added to the packed
/// `[steps, B, T]` embedding table (diffusers adds it after the time MLP). `rows` is an f32
/// `[K, T]` tensor: `class_embedding.weight` with the images' labels, or the `timestep`-type
/// class MLP's `[B, T]` output with labels `0..B`. A label outside `0..K` is refused.
pub fn add_class_rows(
    ctx: &GpuContext,
    emb: &EmbeddingTable,
    rows: &GpuTensor,
    labels: &[usize],
) -> Result<Dispatch> {
    let (steps, batch, width) = (emb.steps(), emb.batch(), emb.width());
    let table = emb.tensor().dense(
        "class embedding: the time embedding",
        &[steps, batch, width],
        Precision::F32,
    )?;
    ensure!(
        rows.rank() == 2 && rows.shape()[1] == width,
        "class embedding: rows {:?} are not [K, {width}]",
        rows.shape()
    );
    let k = rows.shape()[0];
    let rows_b = rows.dense("class embedding rows", &[k, width], Precision::F32)?;
    ensure!(
        labels.len() == batch,
        "class embedding: {} labels for a batch of {batch}",
        labels.len()
    );
    if let Some(bad) = labels.iter().find(|&&l| l >= k) {
        bail!("class label {bad} is outside 0..{k}");
    }
    let n = steps * batch * width;
    ensure!(
        n > 0 && n < u32::MAX as usize,
        "class embedding: {n} values are empty or overflow 32-bit indexing"
    );
    let kernel = ctx.kernel(&KernelSpec {
        shader: "embedding",
        source: SOURCE,
        entry: "add_rows",
        bindings: vec![
            Binding::Uniform,
            Binding::StorageRead,
            Binding::StorageRead,
            Binding::StorageReadWrite,
        ],
    })?;
    let grid = grid_2d(
        (n as u32).div_ceil(WORKGROUP),
        ctx.limits.max_compute_workgroups_per_dimension,
    );
    let params = Params {
        rows: (steps * batch) as u32,
        batch: batch as u32,
        width: width as u32,
        row_groups: grid[0],
    };
    let uniform = ctx.uniform("class embedding params", &params);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let label_buf = ctx.upload("class labels", &labels);
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[(&uniform).into(), (&label_buf).into(), rows_b, table],
    )?;
    Ok(Dispatch {
        label: "class embedding".into(),
        kernel,
        bind_group,
        workgroups: grid,
        dynamic_strides: vec![],
        flops: n as u64,
        // emb read and written, each row read once per step.
        bytes: 12 * n as u64,
    })
}
