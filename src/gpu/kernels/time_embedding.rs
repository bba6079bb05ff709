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
use crate::cpu::ops::{fourier_embedding, timestep_embedding};
use crate::gpu::kernel::{grid_2d, Binding, Dispatch, KernelSpec};
use crate::gpu::precision::Precision;
use crate::gpu::tensor::{GpuTensor, StepTable};
use crate::gpu::weights::GpuWeights;
use crate::gpu::GpuContext;
use crate::model::unet::{ClassEmbedding, Linear, TimeEmbedding, TimeProj};
use crate::model::ClassLabels;

/// A per-step table of time-embedding values on the device (see [`StepTable`]).
pub type EmbeddingTable = StepTable;

pub const SOURCE: &str = include_str!("../../../shaders/embedding.wgsl");
const WORKGROUP: u32 = 64;

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

/// diffusers' `time_proj`: what the time MLP sees of a timestep, computed on the host in f32 as
/// the CPU reference computes it (`cpu::forward::time_projection`).
#[derive(Clone, Copy, Debug)]
pub enum Projection<'a> {
    /// `Timesteps(dim, flip_sin_to_cos, freq_shift)`: `cpu::ops::timestep_embedding`.
    Sinusoid {
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    },
    /// `GaussianFourierProjection` (log = True, [sin | cos], the config's flip is not passed):
    /// `cpu::ops::fourier_embedding`, width `2·len(W)`. `t` is σ > 0.
    Fourier { weight: &'a [f32] },
    /// `nn.Embedding(rows, dim)`: row `t` of `table`; `t` must be a whole number below `rows`.
    Learned { table: &'a [f32], dim: usize },
}

impl<'a> Projection<'a> {
    /// The model's projection, reading its weight from the host copy `weights` keeps.
    pub fn of(proj: &TimeProj, weights: &'a GpuWeights) -> Result<Self> {
        Ok(match *proj {
            TimeProj::Positional {
                dim,
                flip_sin_to_cos,
                freq_shift,
            } => Self::Sinusoid {
                dim,
                flip_sin_to_cos,
                freq_shift,
            },
            TimeProj::Fourier { ref weight, .. } => Self::Fourier {
                weight: weights.host(weight)?,
            },
            TimeProj::Learned {
                ref weight, dim, ..
            } => Self::Learned {
                table: weights.host(weight)?,
                dim,
            },
        })
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
        if let Some(bad) = t.iter().find(|v| !v.is_finite()) {
            bail!("timestep {bad} is not a finite number");
        }
        match *self {
            Self::Sinusoid {
                dim,
                flip_sin_to_cos,
                freq_shift,
            } => Ok(timestep_embedding(t, dim, flip_sin_to_cos, freq_shift).data),
            Self::Fourier { weight } => {
                if let Some(bad) = t.iter().find(|&&v| v <= 0.0) {
                    bail!("a Fourier time embedding takes σ > 0, got timestep {bad}");
                }
                Ok(fourier_embedding(t, weight).data)
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

/// The label-dependent input of a class embedding, on the device: rewritten whenever the images'
/// labels change ([`Embedding::write_labels`]), after which the embedding's dispatches run again.
enum ClassInput {
    /// `class_embedding.weight` rows, indexed by the labels in `labels` (u32 per image).
    Table { labels: wgpu::Buffer },
    /// The labels' time projection `[B, width]`, fed to the class MLP (`class_embed_type:
    /// "timestep"`).
    Timestep { proj: GpuTensor },
    /// The caller's `[B, T]` vectors (`class_embed_type: "identity"`).
    Identity { vectors: GpuTensor },
}

/// The time embedding every resnet reads, for every (step, image): the time MLP, then the
/// class embedding added (labels are per image and may change between chunks of a run, so
/// its input is a buffer that [`Embedding::write_labels`] rewrites before the dispatches run
/// again).
pub struct Embedding {
    /// The time MLP's dispatches (they overwrite `emb`).
    pub time: Vec<Dispatch>,
    /// The class embedding's dispatches, adding to `emb` (none for an unconditional model).
    pub class: Vec<Dispatch>,
    /// `[steps, B, T]`, packed.
    pub emb: EmbeddingTable,
    input: Option<ClassInput>,
    batch: usize,
}

impl Embedding {
    /// The embedding of `te` for `timesteps[s][b]`, with the class input zeroed (label 0)
    /// until [`Embedding::write_labels`].
    pub fn new(
        ctx: &GpuContext,
        te: &TimeEmbedding,
        weights: &GpuWeights,
        timesteps: &[Vec<f32>],
    ) -> Result<Self> {
        let projection = Projection::of(&te.proj, weights)?;
        let mlp = (&te.linear_1, &te.linear_2);
        let (time, emb) = embedding_mlp(ctx, &projection, mlp, weights, timesteps)?;
        let batch = emb.batch();
        let width = emb.width();
        let identity: Vec<u32> = (0..batch as u32).collect();
        let (class, input) = match &te.class {
            None => (vec![], None),
            Some(ClassEmbedding::Table { weight, .. }) => {
                let labels = ctx.upload("class labels", &vec![0u32; batch]);
                let rows = weights.tensor(weight)?;
                let d = add_rows(ctx, &emb, rows, &labels)?;
                (vec![d], Some(ClassInput::Table { labels }))
            }
            Some(ClassEmbedding::Timestep { linear_1, linear_2 }) => {
                let pw = projection.width();
                let proj = ctx.tensor("class projection", &[batch, pw], Precision::F32);
                let class = StepTable::packed(ctx, "class embedding", 1, batch, width);
                let class_rows = class.tensor().reshape(&[batch, width])?;
                let mut ds = mlp_dispatches(ctx, &proj, (linear_1, linear_2), weights, &class_rows)
                    .context("class embedding")?;
                let labels = ctx.upload("class rows", &identity);
                ds.push(add_rows(ctx, &emb, &class_rows, &labels)?);
                (ds, Some(ClassInput::Timestep { proj }))
            }
            Some(ClassEmbedding::Identity) => {
                let vectors = ctx.tensor("class vectors", &[batch, width], Precision::F32);
                let labels = ctx.upload("class rows", &identity);
                let d = add_rows(ctx, &emb, &vectors, &labels)?;
                (vec![d], Some(ClassInput::Identity { vectors }))
            }
        };
        Ok(Self {
            time,
            class,
            emb,
            input,
            batch,
        })
    }

    /// Whether the embedding depends on class labels.
    pub fn is_conditional(&self) -> bool {
        self.input.is_some()
    }

    /// Writes the class input for `labels` (one per image of the batch, or one for all),
    /// checked against the model; the dispatches must run again afterwards.
    pub fn write_labels(
        &self,
        ctx: &GpuContext,
        te: &TimeEmbedding,
        weights: &GpuWeights,
        labels: Option<&ClassLabels>,
    ) -> Result<()> {
        ClassLabels::check(labels, te)?;
        let (Some(input), Some(labels)) = (&self.input, labels) else {
            return Ok(());
        };
        let labels = labels.for_batch(self.batch)?;
        match (input, &labels) {
            (ClassInput::Table { labels: buf }, ClassLabels::Indices(v)) => {
                ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(v));
            }
            (ClassInput::Timestep { proj }, ClassLabels::Indices(v)) => {
                let as_t: Vec<f32> = v.iter().map(|&l| l as f32).collect();
                let p = Projection::of(&te.proj, weights)?.project(&as_t)?;
                ctx.queue
                    .write_buffer(proj.buffer(), 0, bytemuck::cast_slice(&p));
            }
            (ClassInput::Identity { vectors }, ClassLabels::Vectors { data, .. }) => {
                ctx.queue
                    .write_buffer(vectors.buffer(), 0, bytemuck::cast_slice(data));
            }
            _ => bail!("class labels of the wrong kind for the model's class embedding"),
        }
        Ok(())
    }

    /// Every dispatch, in order: the time MLP, then the class embedding.
    pub fn dispatches(&self) -> impl Iterator<Item = &Dispatch> {
        self.time.iter().chain(&self.class)
    }
}

/// The embedding `emb` for every (step, image) of a model without class conditioning:
/// `timesteps[s][b]` is image b's timestep at step s. Returns the dispatches (run them once
/// before sampling) and the `[steps, B, dim]` table, densely packed.
pub fn time_embedding(
    ctx: &GpuContext,
    te: &TimeEmbedding,
    weights: &GpuWeights,
    timesteps: &[Vec<f32>],
) -> Result<(Vec<Dispatch>, EmbeddingTable)> {
    let projection = Projection::of(&te.proj, weights)?;
    let mlp = (&te.linear_1, &te.linear_2);
    embedding_mlp(ctx, &projection, mlp, weights, timesteps)
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
    let dim = linear_2.out_features;
    let emb = StepTable::packed(ctx, "time embedding", steps, batch, dim);
    let emb_rows = emb.tensor().reshape(&[rows, dim])?;
    let dispatches = mlp_dispatches(ctx, &proj, (linear_1, linear_2), weights, &emb_rows)?;
    Ok((dispatches, emb))
}

/// `out = linear_2(silu(linear_1(proj)))` for f32 `proj` `[rows, in]` and `out` `[rows, T]`.
fn mlp_dispatches(
    ctx: &GpuContext,
    proj: &GpuTensor,
    (linear_1, linear_2): (&Linear, &Linear),
    weights: &GpuWeights,
    out: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    let rows = proj.shape()[0];
    let (w1, b1) = linear_tensors(linear_1, weights).context("embedding linear_1")?;
    let (w2, b2) = linear_tensors(linear_2, weights).context("embedding linear_2")?;
    let hidden = ctx.tensor(
        "time embedding hidden",
        &[rows, linear_1.out_features],
        Precision::F32,
    );
    Ok(vec![
        matmul_fixed(
            ctx,
            &MatmulArgs {
                a: proj,
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
                out,
            },
            MatmulOptions::default(),
        )?,
    ])
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
    let (batch, width) = (emb.batch(), emb.width());
    ensure!(
        rows.rank() == 2 && rows.shape()[1] == width,
        "class embedding: rows {:?} are not [K, {width}]",
        rows.shape()
    );
    let k = rows.shape()[0];
    ensure!(
        labels.len() == batch,
        "class embedding: {} labels for a batch of {batch}",
        labels.len()
    );
    if let Some(bad) = labels.iter().find(|&&l| l >= k) {
        bail!("class label {bad} is outside 0..{k}");
    }
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    add_rows(ctx, emb, rows, &ctx.upload("class labels", &labels))
}

/// [`add_class_rows`] with the labels in a u32 buffer of B entries, each below K (the caller
/// checked them: the shader reads whatever row they name).
fn add_rows(
    ctx: &GpuContext,
    emb: &EmbeddingTable,
    rows: &GpuTensor,
    labels: &wgpu::Buffer,
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
        labels.size() >= (batch * 4) as u64,
        "class embedding: a label buffer of {} bytes for a batch of {batch}",
        labels.size()
    );
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
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[(&uniform).into(), labels.into(), rows_b, table],
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
