//! The whole U-Net forward on the CPU, walking the shared [`UNet`] description layer by layer.
//!
//! [`forward_with`] reports the time embedding (as `"time_embedding"`) and every layer's output
//! under the layer's name (skip pushes and the image path's capture excepted: they compute
//! nothing; a skip up block's image path reports the image path), which is what `ddim verify`
//! compares against the GPU.
//!
//! Timesteps are f32 and used as given: a fractional t (Euler, Heun, LMS, consistency models)
//! reaches the sinusoid unrounded, as it does in diffusers when t is a tensor. diffusers
//! truncates a Python-float t to an integer first (`torch.tensor([t], dtype=torch.long)`); pass
//! the truncated value to get that.

use crate::cpu::{ops, resample};
use crate::model::labels::{check_projectable, ClassLabels};
use crate::model::unet::{
    broadcast_timesteps, Attention, ClassEmbedding, Conv2d, GroupNorm, Linear, Op, Resample,
    Resnet, TimeProj, UNet,
};
use crate::model::Weights;
use crate::tensor::{nchw_to_nhwc, nhwc_to_nchw};
use crate::Tensor;
use anyhow::{bail, ensure, Context, Result};

/// Largest activation (batch × per-image elements) a forward pass may create: 2^30 f32 (4 GiB).
pub const MAX_ACTIVATION_ELEMENTS: usize = 1 << 30;

/// One U-Net evaluation of an unconditional model: `x` `[B, C, H, W]` and one timestep per batch
/// element (or one for all).
pub fn forward(unet: &UNet, weights: &Weights, x: &Tensor, timesteps: &[f32]) -> Result<Tensor> {
    forward_with(unet, weights, x, timesteps, None, &mut |_, _| {})
}

/// [`forward`] with class labels (one per image or one for all), which a class-conditional model
/// requires and an unconditional one refuses.
pub fn forward_labeled(
    unet: &UNet,
    weights: &Weights,
    x: &Tensor,
    timesteps: &[f32],
    labels: Option<&ClassLabels>,
) -> Result<Tensor> {
    forward_with(unet, weights, x, timesteps, labels, &mut |_, _| {})
}

/// [`forward_labeled`], calling `on_layer(name, output)` after the time embedding and after
/// every layer.
pub fn forward_with(
    unet: &UNet,
    weights: &Weights,
    x: &Tensor,
    timesteps: &[f32],
    labels: Option<&ClassLabels>,
    on_layer: &mut dyn FnMut(&str, &Tensor),
) -> Result<Tensor> {
    ensure!(
        x.shape.len() == 4,
        "the input must be [batch, channels, height, width], got shape {:?}",
        x.shape
    );
    let (b, c, h, w) = x.nchw();
    ensure!(
        (c, h, w) == (unet.input.c, unet.input.h, unet.input.w),
        "the input has shape {:?}, the model was built for [B, {}, {}, {}]",
        x.shape,
        unet.input.c,
        unet.input.h,
        unet.input.w
    );
    ensure!(b > 0, "the input batch is empty");
    ensure!(
        b.saturating_mul(unet.max_activation()) <= MAX_ACTIVATION_ELEMENTS,
        "batch {b} at {h}x{w} would need activations of {} values (limit {MAX_ACTIVATION_ELEMENTS}); use a smaller batch",
        b.saturating_mul(unet.max_activation())
    );
    let timesteps = broadcast_timesteps(timesteps, b)?;
    ClassLabels::check(labels, &unet.time)?;
    let labels = labels.map(|l| l.for_batch(b)).transpose()?;
    weights.check(&unet.weights())?;

    let mut emb = time_mlp(unet, weights, &timesteps)?;
    on_layer("time_embedding", &emb);
    if let Some(class) = class_embedding(unet, weights, labels.as_ref())? {
        on_layer("class_embedding", &class);
        emb = ops::add(&emb, &class);
    }

    let mut skips: Vec<Option<Tensor>> = vec![None; unet.skips.len()];
    // The skip blocks' image path. diffusers resets it to None before the up blocks; the op list
    // has that built in (the first skip up block's `upsample` is false: it starts from 0).
    let mut image: Option<Tensor> = None;
    let mut h = x.clone();
    for layer in &unet.layers {
        let out = match &layer.op {
            Op::CenterInput => Tensor {
                shape: h.shape.clone(),
                data: h.data.iter().map(|&v| 2.0 * v - 1.0).collect(),
            },
            Op::Conv(conv) => conv2d(conv, weights, &h)?,
            Op::Resnet(r) => resnet(r, weights, &h, &emb)?,
            Op::Attention(a) => attention_block(a, weights, &h)?,
            Op::UpsampleNearest2x => ops::upsample_nearest2x(&h),
            Op::GroupNormSilu(n) => ops::silu(&group_norm(n, weights, &h)?),
            Op::PushSkip { slot } => {
                skips[*slot] = Some(h.clone());
                continue;
            }
            Op::ConcatSkip { slot } => {
                let skip = skips[*slot]
                    .take()
                    .with_context(|| format!("{}: skip {slot} was never stored", layer.name))?;
                ops::concat_channels(&h, &skip)
            }
            Op::SkipImageCapture => {
                image = Some(h.clone());
                continue;
            }
            Op::SkipImageDown(conv) => {
                let s = resample::fir_down2(image.as_ref().context("no image path to downsample")?);
                let added = conv2d(conv, weights, &s)?;
                image = Some(s);
                ops::add(&h, &added)
            }
            Op::SkipImageUp { upsample, project } => {
                let upsampled = match (&image, upsample) {
                    (Some(s), true) => Some(resample::fir_up2(s)),
                    _ => None,
                };
                let projected = project
                    .as_ref()
                    .map(|p| {
                        let a = ops::silu(&group_norm(&p.norm, weights, &h)?);
                        conv2d(&p.conv, weights, &a)
                    })
                    .transpose()?;
                let s = match (upsampled, projected) {
                    (Some(u), Some(p)) => ops::add(&u, &p),
                    (Some(s), None) | (None, Some(s)) => s,
                    (None, None) => bail!("{}: nothing to do on the image path", layer.name),
                };
                on_layer(&layer.name, &s);
                image = Some(s);
                continue;
            }
            Op::SkipImageAdd => ops::add(&h, image.as_ref().context("no image path to add")?),
            Op::DivideBySigma => {
                let per_image = h.numel() / b;
                let mut out = h.clone();
                for (chunk, &t) in out.data.chunks_mut(per_image).zip(&timesteps) {
                    chunk.iter_mut().for_each(|v| *v /= t);
                }
                out
            }
        };
        on_layer(&layer.name, &out);
        h = out;
    }
    Ok(h)
}

/// The time projection of `values` (timesteps, or `"timestep"` class labels), `[B, proj dim]`.
pub fn time_projection(proj: &TimeProj, weights: &Weights, values: &[f32]) -> Result<Tensor> {
    for &t in values {
        check_projectable(proj, t, "timestep")?;
    }
    Ok(match proj {
        TimeProj::Positional {
            dim,
            flip_sin_to_cos,
            freq_shift,
        } => ops::timestep_embedding(values, *dim, *flip_sin_to_cos, *freq_shift),
        TimeProj::Fourier { weight, .. } => ops::fourier_embedding(values, weights.slice(weight)?),
        TimeProj::Learned { weight, dim, .. } => {
            let table = weights.slice(weight)?;
            let data = values
                .iter()
                .flat_map(|&t| table[t as usize * dim..][..*dim].iter().copied())
                .collect();
            Tensor::new(vec![values.len(), *dim], data)?
        }
    })
}

/// `linear_2(silu(linear_1(x)))`.
fn mlp(l1: &Linear, l2: &Linear, weights: &Weights, x: &Tensor) -> Result<Tensor> {
    linear(l2, weights, &ops::silu(&linear(l1, weights, x)?))
}

/// diffusers' `time_embedding` module: `linear_2(silu(linear_1(proj(t))))`, `[B, time_embed_dim]`.
pub fn time_mlp(unet: &UNet, weights: &Weights, timesteps: &[f32]) -> Result<Tensor> {
    let t = &unet.time;
    let proj = time_projection(&t.proj, weights, timesteps)?;
    mlp(&t.linear_1, &t.linear_2, weights, &proj)
}

/// The time embedding every resnet reads: [`time_mlp`] plus the class embedding when the model
/// has one, `[B, time_embed_dim]`. `labels` has one entry per image and was checked against the
/// model ([`ClassLabels::check`]).
pub fn time_embedding(
    unet: &UNet,
    weights: &Weights,
    timesteps: &[f32],
    labels: Option<&ClassLabels>,
) -> Result<Tensor> {
    let emb = time_mlp(unet, weights, timesteps)?;
    Ok(match class_embedding(unet, weights, labels)? {
        Some(class) => ops::add(&emb, &class),
        None => emb,
    })
}

/// diffusers' `class_embedding` module's output for `labels` (one entry per image), `[B,
/// time_embed_dim]`, or `None` for an unconditional model.
pub fn class_embedding(
    unet: &UNet,
    weights: &Weights,
    labels: Option<&ClassLabels>,
) -> Result<Option<Tensor>> {
    let t = &unet.time;
    let class = match (&t.class, labels) {
        (None, _) => return Ok(None),
        (Some(ClassEmbedding::Table { weight, .. }), Some(ClassLabels::Indices(v))) => {
            let (table, width) = (weights.slice(weight)?, t.embed_dim());
            let data = v
                .iter()
                .flat_map(|&l| table[l as usize * width..][..width].iter().copied())
                .collect();
            Tensor::new(vec![v.len(), width], data)?
        }
        (Some(ClassEmbedding::Timestep { linear_1, linear_2 }), Some(ClassLabels::Indices(v))) => {
            let as_t: Vec<f32> = v.iter().map(|&l| l as f32).collect();
            let proj = time_projection(&t.proj, weights, &as_t)?;
            mlp(linear_1, linear_2, weights, &proj)?
        }
        (Some(_), Some(ClassLabels::Mixed(v))) => {
            // Each end's embedding, then (1 − t)·E(a) + t·E(b) per image.
            let end = |pick: fn(&(u32, u32, f32)) -> u32| {
                let ends = ClassLabels::Indices(v.iter().map(pick).collect());
                class_embedding(unet, weights, Some(&ends))?
                    .context("a class-conditional model has a class embedding")
            };
            let (a, b) = (end(|e| e.0)?, end(|e| e.1)?);
            let width = t.embed_dim();
            let data = a
                .data
                .chunks(width)
                .zip(b.data.chunks(width))
                .zip(v)
                .flat_map(|((ea, eb), &(_, _, w))| {
                    ea.iter().zip(eb).map(move |(&x, &y)| (1.0 - w) * x + w * y)
                })
                .collect();
            Tensor::new(vec![v.len(), width], data)?
        }
        (Some(ClassEmbedding::Identity), Some(ClassLabels::Vectors { width, data })) => {
            Tensor::new(vec![data.len() / width, *width], data.clone())?
        }
        _ => bail!("class labels missing or of the wrong kind for the model's class embedding"),
    };
    ensure!(
        class.shape[1] == t.embed_dim(),
        "class embedding of width {} for a time embedding of width {}",
        class.shape[1],
        t.embed_dim()
    );
    Ok(Some(class))
}

pub fn conv2d(conv: &Conv2d, weights: &Weights, x: &Tensor) -> Result<Tensor> {
    Ok(ops::conv2d(
        x,
        weights.get(&conv.weight)?,
        Some(weights.slice(&conv.bias)?),
        conv.stride,
        conv.padding,
    ))
}

pub fn group_norm(norm: &GroupNorm, weights: &Weights, x: &Tensor) -> Result<Tensor> {
    Ok(ops::group_norm(
        x,
        norm.groups,
        weights.slice(&norm.weight)?,
        weights.slice(&norm.bias)?,
        norm.eps,
    ))
}

pub fn linear(lin: &Linear, weights: &Weights, x: &Tensor) -> Result<Tensor> {
    Ok(ops::linear(
        x,
        weights.get(&lin.weight)?,
        Some(weights.slice(&lin.bias)?),
    ))
}

/// diffusers `ResnetBlock2D.forward` (see [`Resnet`]).
pub fn resnet(r: &Resnet, weights: &Weights, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
    let cout = r.out_channels;
    let t = linear(&r.time_emb_proj, weights, &ops::silu(emb))?;
    let t_width = t.shape[1];

    let a = ops::silu(&group_norm(&r.norm1, weights, x)?);
    // Both paths are resampled after norm1 + SiLU (the shortcut sees the resampled x).
    let (x, a) = match r.resample {
        None => (x.clone(), a),
        Some(s) => (resample_2x(s, x), resample_2x(s, &a)),
    };
    let x = &x;
    let (b, _, hh, ww) = x.nchw();
    let plane = hh * ww;
    let mut y = conv2d(&r.conv1, weights, &a)?;
    if r.scale_shift {
        y = group_norm(&r.norm2, weights, &y)?;
        for bi in 0..b {
            for c in 0..cout {
                let scale = t.data[bi * t_width + c];
                let shift = t.data[bi * t_width + cout + c];
                for v in &mut y.data[(bi * cout + c) * plane..][..plane] {
                    *v = *v * (1.0 + scale) + shift;
                }
            }
        }
    } else {
        for bi in 0..b {
            for c in 0..cout {
                let add = t.data[bi * t_width + c];
                for v in &mut y.data[(bi * cout + c) * plane..][..plane] {
                    *v += add;
                }
            }
        }
        y = group_norm(&r.norm2, weights, &y)?;
    }
    let y = conv2d(&r.conv2, weights, &ops::silu(&y))?;
    let residual = match &r.shortcut {
        Some(s) => conv2d(s, weights, x)?,
        None => x.clone(),
    };
    let mut out = ops::add(&residual, &y);
    if r.output_scale_factor != 1.0 {
        for v in &mut out.data {
            *v /= r.output_scale_factor;
        }
    }
    Ok(out)
}

/// A resnet's resampling of one path.
fn resample_2x(s: Resample, x: &Tensor) -> Tensor {
    match s {
        Resample::AvgPool2x2 => resample::avg_pool2x2(x),
        Resample::Nearest2x => ops::upsample_nearest2x(x),
        Resample::FirDown2 => resample::fir_down2(x),
        Resample::FirUp2 => resample::fir_up2(x),
    }
}

/// `[B, C, H, W]` → `[B·H·W, C]` (token index y·W + x within each image).
pub fn to_tokens(x: &Tensor) -> Tensor {
    let (b, c, h, w) = x.nchw();
    Tensor {
        shape: vec![b * h * w, c],
        data: nchw_to_nhwc(&x.data, b, c, h, w),
    }
}

/// `[B·H·W, C]` → `[B, C, H, W]`, the inverse of [`to_tokens`].
pub fn from_tokens(t: &Tensor, b: usize, h: usize, w: usize) -> Tensor {
    let c = t.shape[1];
    Tensor {
        shape: vec![b, c, h, w],
        data: nhwc_to_nchw(&t.data, b, c, h, w),
    }
}

/// diffusers `Attention` on an image (see [`Attention`]).
pub fn attention_block(a: &Attention, weights: &Weights, x: &Tensor) -> Result<Tensor> {
    let (b, _, h, w) = x.nchw();
    let l = h * w;
    let normed = match &a.norm {
        Some(n) => group_norm(n, weights, x)?,
        None => x.clone(),
    };
    let tokens = to_tokens(&normed);
    let seq = |t: Tensor| Tensor {
        shape: vec![b, l, t.shape[1]],
        data: t.data,
    };
    let q = seq(linear(&a.to_q, weights, &tokens)?);
    let k = seq(linear(&a.to_k, weights, &tokens)?);
    let v = seq(linear(&a.to_v, weights, &tokens)?);
    let o = ops::attention(&q, &k, &v, a.heads);
    let o = Tensor {
        shape: vec![b * l, a.inner_dim()],
        data: o.data,
    };
    let projected = from_tokens(&linear(&a.to_out, weights, &o)?, b, h, w);
    let mut out = ops::add(&projected, x);
    if a.rescale_output_factor != 1.0 {
        for v in &mut out.data {
            *v /= a.rescale_output_factor;
        }
    }
    Ok(out)
}
