//! A model's weights on one device, uploaded once and shared by every plan built from them
//! (plans differ by batch and timestep schedule, never by weights).
//!
//! Conv weights are stored K-major as the conv kernel reads them; attention's q/k/v projections
//! are stacked into one matrix; everything else is uploaded as it is, by tensor name.

use std::collections::HashMap;

use anyhow::{Context, Result};

use super::kernels::attention::{AttentionParamsHost, AttentionShape, AttentionWeights};
use super::kernels::conv2d::ConvWeights;
use super::precision::Precision;
use super::tensor::GpuTensor;
use super::GpuContext;
use crate::model::unet::{Attention, ClassEmbedding, Conv2d, GroupNorm, Linear, Op, TimeProj};
use crate::model::{UNet, Weights};

/// Every weight of one U-Net on one device.
pub struct GpuWeights {
    /// Keyed by the conv's weight name.
    convs: HashMap<String, ConvWeights>,
    /// Norm scales and shifts, linear weights and biases, by tensor name.
    tensors: HashMap<String, GpuTensor>,
    /// Keyed by the block's `to_q` weight name.
    attention: HashMap<String, AttentionWeights>,
    /// Host copies of what runs on the host: the Fourier or learned time projection's weight.
    host: HashMap<String, Vec<f32>>,
    /// Bytes of all uploaded buffers.
    pub bytes: u64,
    /// How conv and attention weights are stored, and so the activations of every plan built
    /// over them; norm parameters, biases and the time-embedding layers stay f32.
    pub precision: Precision,
}

impl GpuWeights {
    /// Checks `weights` against `unet` and uploads every tensor it uses, in f32.
    pub fn upload(ctx: &GpuContext, unet: &UNet, weights: &Weights) -> Result<Self> {
        Self::upload_as(ctx, unet, weights, Precision::F32)
    }

    /// As [`GpuWeights::upload`], with conv and attention weights stored as `precision`
    /// (an error where the device cannot).
    pub fn upload_as(
        ctx: &GpuContext,
        unet: &UNet,
        weights: &Weights,
        precision: Precision,
    ) -> Result<Self> {
        precision.check(ctx.features, &ctx.describe())?;
        weights.check(&unet.weights())?;
        let mut up = Self {
            convs: HashMap::new(),
            tensors: HashMap::new(),
            attention: HashMap::new(),
            host: HashMap::new(),
            bytes: 0,
            precision,
        };
        up.linear(ctx, weights, &unet.time.linear_1)?;
        up.linear(ctx, weights, &unet.time.linear_2)?;
        // The time projection runs on the host (`kernels::time_embedding::Projection`).
        match &unet.time.proj {
            TimeProj::Positional { .. } => {}
            TimeProj::Fourier { weight, .. } | TimeProj::Learned { weight, .. } => {
                up.host
                    .insert(weight.clone(), weights.slice(weight)?.to_vec());
            }
        }
        match &unet.time.class {
            Some(ClassEmbedding::Table { weight, .. }) => up.upload_tensor(ctx, weights, weight)?,
            Some(ClassEmbedding::Timestep { linear_1, linear_2 }) => {
                up.linear(ctx, weights, linear_1)?;
                up.linear(ctx, weights, linear_2)?;
            }
            Some(ClassEmbedding::Identity) | None => {}
        }
        for layer in &unet.layers {
            let name = layer.name.as_str();
            match &layer.op {
                Op::Conv(c) => up.conv(ctx, weights, c),
                Op::Resnet(r) => {
                    up.norm(ctx, weights, &r.norm1)?;
                    up.conv(ctx, weights, &r.conv1)?;
                    up.linear(ctx, weights, &r.time_emb_proj)?;
                    up.norm(ctx, weights, &r.norm2)?;
                    up.conv(ctx, weights, &r.conv2)?;
                    r.shortcut
                        .as_ref()
                        .map_or(Ok(()), |s| up.conv(ctx, weights, s))
                }
                Op::Attention(a) => up.attention(ctx, weights, a, layer.input.h * layer.input.w),
                Op::GroupNormSilu(n) => up.norm(ctx, weights, n),
                Op::SkipImageDown(c) => up.conv(ctx, weights, c),
                Op::SkipImageUp { project, .. } => match project {
                    Some(p) => {
                        up.norm(ctx, weights, &p.norm)?;
                        up.conv(ctx, weights, &p.conv)
                    }
                    None => Ok(()),
                },
                Op::CenterInput
                | Op::UpsampleNearest2x
                | Op::PushSkip { .. }
                | Op::ConcatSkip { .. }
                | Op::SkipImageCapture
                | Op::SkipImageAdd
                | Op::DivideBySigma => Ok(()),
            }
            .with_context(|| format!("{name}: uploading weights"))?;
        }
        Ok(up)
    }

    fn upload_tensor(&mut self, ctx: &GpuContext, weights: &Weights, name: &str) -> Result<()> {
        if !self.tensors.contains_key(name) {
            let host = weights.get(name)?;
            let t = ctx.tensor_from(name, &host.data, &host.shape, Precision::F32)?;
            self.bytes += t.buffer().size();
            self.tensors.insert(name.to_string(), t);
        }
        Ok(())
    }

    fn norm(&mut self, ctx: &GpuContext, weights: &Weights, n: &GroupNorm) -> Result<()> {
        self.upload_tensor(ctx, weights, &n.weight)?;
        self.upload_tensor(ctx, weights, &n.bias)
    }

    fn linear(&mut self, ctx: &GpuContext, weights: &Weights, l: &Linear) -> Result<()> {
        self.upload_tensor(ctx, weights, &l.weight)?;
        self.upload_tensor(ctx, weights, &l.bias)
    }

    fn conv(&mut self, ctx: &GpuContext, weights: &Weights, c: &Conv2d) -> Result<()> {
        let w = ConvWeights::upload_as(
            ctx,
            &c.weight,
            weights.get(&c.weight)?,
            Some(weights.slice(&c.bias)?),
            self.precision,
        )?;
        self.bytes += w.weight.size() + w.bias.size();
        self.convs.insert(c.weight.clone(), w);
        Ok(())
    }

    fn attention(
        &mut self,
        ctx: &GpuContext,
        weights: &Weights,
        a: &Attention,
        tokens: usize,
    ) -> Result<()> {
        let (gamma, beta) = match &a.norm {
            Some(n) => (weights.slice(&n.weight)?, weights.slice(&n.bias)?),
            None => (&[][..], &[][..]),
        };
        let host = AttentionParamsHost {
            gamma,
            beta,
            wq: weights.slice(&a.to_q.weight)?,
            bq: weights.slice(&a.to_q.bias)?,
            wk: weights.slice(&a.to_k.weight)?,
            bk: weights.slice(&a.to_k.bias)?,
            wv: weights.slice(&a.to_v.weight)?,
            bv: weights.slice(&a.to_v.bias)?,
            wo: weights.slice(&a.to_out.weight)?,
            bo: weights.slice(&a.to_out.bias)?,
        };
        let shape = attention_shape(a, 1, tokens, self.precision);
        let w = AttentionWeights::upload(ctx, &shape, &host)?;
        self.bytes += [&w.gamma, &w.beta, &w.wqkv, &w.bqkv, &w.bv, &w.wo, &w.bo]
            .iter()
            .map(|t| t.buffer().size())
            .sum::<u64>();
        self.attention.insert(a.to_q.weight.clone(), w);
        Ok(())
    }

    pub fn conv_weights(&self, c: &Conv2d) -> Result<&ConvWeights> {
        self.convs
            .get(&c.weight)
            .with_context(|| format!("{} was not uploaded", c.weight))
    }

    /// A tensor uploaded as it is (norm scale/shift, linear weight/bias), in its file's shape.
    /// A weight kept on the host (the Fourier or learned time projection's).
    pub fn host(&self, name: &str) -> Result<&[f32]> {
        self.host
            .get(name)
            .map(Vec::as_slice)
            .with_context(|| format!("{name} was not kept on the host"))
    }

    pub fn tensor(&self, name: &str) -> Result<&GpuTensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("{name} was not uploaded"))
    }

    pub fn attention_weights(&self, a: &Attention) -> Result<&AttentionWeights> {
        self.attention
            .get(&a.to_q.weight)
            .with_context(|| format!("the attention block of {} was not uploaded", a.to_q.weight))
    }
}

/// The kernel's view of an attention block at `batch` images of `tokens` tokens.
pub fn attention_shape(
    a: &Attention,
    batch: usize,
    tokens: usize,
    precision: Precision,
) -> AttentionShape {
    AttentionShape {
        batch,
        tokens,
        channels: a.channels,
        heads: a.heads,
        head_dim: a.head_dim,
        norm: a.norm.as_ref().map(|n| (n.groups, n.eps)),
        rescale_output_factor: a.rescale_output_factor,
        precision,
    }
}
