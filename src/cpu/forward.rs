//! The whole U-Net forward on the CPU, walking the shared [`UNet`] description layer by layer.
//!
//! [`forward_with`] reports the time embedding (as `"time_embedding"`) and every layer's output
//! under the layer's name (skip pushes excepted: they compute nothing), which is what
//! `ddim verify` compares against the GPU.

use crate::cpu::ops;
use crate::model::unet::{
    broadcast_timesteps, Attention, Conv2d, GroupNorm, Linear, Op, Resnet, UNet,
};
use crate::model::Weights;
use crate::tensor::{nchw_to_nhwc, nhwc_to_nchw};
use crate::Tensor;
use anyhow::{ensure, Context, Result};

/// Largest activation (batch × per-image elements) a forward pass may create: 2^30 f32 (4 GiB).
pub const MAX_ACTIVATION_ELEMENTS: usize = 1 << 30;

/// One U-Net evaluation: `x` `[B, C, H, W]` and one timestep per batch element (or one for all).
pub fn forward(unet: &UNet, weights: &Weights, x: &Tensor, timesteps: &[f32]) -> Result<Tensor> {
    forward_with(unet, weights, x, timesteps, &mut |_, _| {})
}

/// [`forward`], calling `on_layer(name, output)` after the time embedding and after every layer.
pub fn forward_with(
    unet: &UNet,
    weights: &Weights,
    x: &Tensor,
    timesteps: &[f32],
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
    weights.check(&unet.weights())?;

    let emb = time_embedding(unet, weights, &timesteps)?;
    on_layer("time_embedding", &emb);

    let mut skips: Vec<Option<Tensor>> = vec![None; unet.skips.len()];
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
        };
        on_layer(&layer.name, &out);
        h = out;
    }
    Ok(h)
}

/// `emb = linear_2(silu(linear_1(sinusoidal(t))))`, `[B, time_embed_dim]`.
pub fn time_embedding(unet: &UNet, weights: &Weights, timesteps: &[f32]) -> Result<Tensor> {
    let t = &unet.time;
    let proj = ops::timestep_embedding(timesteps, t.proj_dim, t.flip_sin_to_cos, t.freq_shift);
    let hidden = ops::silu(&linear(&t.linear_1, weights, &proj)?);
    linear(&t.linear_2, weights, &hidden)
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
    let (b, _, hh, ww) = x.nchw();
    let plane = hh * ww;
    let cout = r.out_channels;
    let t = linear(&r.time_emb_proj, weights, &ops::silu(emb))?;
    let t_width = t.shape[1];

    let mut y = conv2d(
        &r.conv1,
        weights,
        &ops::silu(&group_norm(&r.norm1, weights, x)?),
    )?;
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
