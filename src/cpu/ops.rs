//! The reference ops: plain loops over NCHW f32 tensors with f64 accumulation in every reduction.
//!
//! These are the yardstick for the GPU kernels, so clarity beats speed; the only concessions to
//! speed are a cache-friendly loop order in `conv2d` and splitting independent output planes over
//! a few threads. Shape mismatches are programming errors here (user input is validated when the
//! model is loaded), so they panic with a message naming the shapes.

use crate::Tensor;

pub use crate::model::unet::{conv2d_output_size, Padding};

/// Number of worker threads for the parallel loops: the machine's cores, at most 16.
fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16)
}

/// Calls `f(i, chunk)` for every `chunk_len`-sized chunk `i` of `out` (the last may be shorter),
/// spread over scoped threads.
fn par_chunks_mut(out: &mut [f32], chunk_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if chunk_len == 0 || out.is_empty() {
        return;
    }
    let chunks = out.len().div_ceil(chunk_len);
    let threads = worker_count().min(chunks);
    if threads <= 1 {
        for (i, c) in out.chunks_mut(chunk_len).enumerate() {
            f(i, c);
        }
        return;
    }
    let per_thread = chunks.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, part) in out.chunks_mut(per_thread * chunk_len).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (j, c) in part.chunks_mut(chunk_len).enumerate() {
                    f(t * per_thread + j, c);
                }
            });
        }
    });
}

/// Output channels computed together in `conv2d`, sharing each loaded input row.
const CONV_CO_BLOCK: usize = 4;

/// 2-D cross-correlation as torch's `Conv2d` (weight `[Cout, Cin, KH, KW]`, no groups, no dilation).
///
/// Every output value is `bias + Σ_{ci, ky, kx} w · x` accumulated in f64 in that order. Loop
/// order: the input is widened to f64 once; then for a block of output channels of one image,
/// f64 accumulator planes are swept by every input channel and kernel tap over whole output rows,
/// so the innermost loop is a contiguous multiply-add along x. Padding is handled by clipping each
/// row's valid x range, not by branches.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    pad: Padding,
) -> Tensor {
    let (b, cin, h, w) = x.nchw();
    let (cout, wcin, kh, kw) = weight.nchw();
    assert_eq!(
        cin, wcin,
        "conv2d: input has {cin} channels but weight {:?} expects {wcin}",
        weight.shape
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), cout, "conv2d: bias length vs Cout");
    }
    let (oh, ow) = conv2d_output_size(h, w, kh, kw, stride, pad);
    let mut out = Tensor::zeros(&[b, cout, oh, ow]);
    let plane = oh * ow;
    let x64: Vec<f64> = x.data.iter().map(|&v| v as f64).collect();

    // For kernel column `kx`, the output columns whose input column lies inside the image:
    // ix = ox*stride + kx - left must satisfy 0 <= ix < w.
    let x_range = |kx: usize| -> (usize, usize) {
        let lo = pad.left.saturating_sub(kx).div_ceil(stride);
        let hi_excl = if w + pad.left > kx {
            ((w + pad.left - kx - 1) / stride + 1).min(ow)
        } else {
            0
        };
        (lo, hi_excl.max(lo))
    };
    let ranges: Vec<(usize, usize)> = (0..kw).map(x_range).collect();

    let ctx = ConvBlock {
        weight: &weight.data,
        bias,
        cin,
        h,
        w,
        kh,
        kw,
        oh,
        ow,
        stride,
        pad,
        ranges: &ranges,
    };
    for bi in 0..b {
        let image = &x64[bi * cin * h * w..][..cin * h * w];
        let out_image = &mut out.data[bi * cout * plane..][..cout * plane];
        par_chunks_mut(out_image, CONV_CO_BLOCK * plane, |block, out_planes| {
            ctx.run(image, block * CONV_CO_BLOCK, out_planes)
        });
    }
    out
}

/// The geometry of one convolution, shared by the blocks of output channels computed in parallel.
struct ConvBlock<'a> {
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    cin: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    pad: Padding,
    /// Valid output x range per kernel column.
    ranges: &'a [(usize, usize)],
}

impl ConvBlock<'_> {
    /// Output planes `co0 ..` of one image into `out_planes`.
    fn run(&self, image: &[f64], co0: usize, out_planes: &mut [f32]) {
        let (h, w, kh, kw, ow) = (self.h, self.w, self.kh, self.kw, self.ow);
        let (stride, left) = (self.stride, self.pad.left);
        let plane = self.oh * ow;
        let nco = out_planes.len() / plane;
        let mut acc = vec![0f64; nco * plane];
        for (j, a) in acc.chunks_mut(plane).enumerate() {
            a.fill(self.bias.map_or(0.0, |b| b[co0 + j] as f64));
        }
        for ci in 0..self.cin {
            let src = &image[ci * h * w..][..h * w];
            for ky in 0..kh {
                for oy in 0..self.oh {
                    let iy = (oy * stride + ky) as isize - self.pad.top as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let row = &src[iy as usize * w..][..w];
                    for (kx, &(lo, hi)) in self.ranges.iter().enumerate() {
                        for j in 0..nco {
                            let wv = self.weight[(((co0 + j) * self.cin + ci) * kh + ky) * kw + kx]
                                as f64;
                            let acc_row = &mut acc[j * plane + oy * ow..][..ow];
                            if stride == 1 {
                                // ix = ox + kx - left, contiguous.
                                let start = lo + kx - left;
                                let src_row = &row[start..start + (hi - lo)];
                                for (a, &v) in acc_row[lo..hi].iter_mut().zip(src_row) {
                                    *a += wv * v;
                                }
                            } else {
                                for (ox, a) in acc_row.iter_mut().enumerate().take(hi).skip(lo) {
                                    *a += wv * row[ox * stride + kx - left];
                                }
                            }
                        }
                    }
                }
            }
        }
        for (o, a) in out_planes.iter_mut().zip(&acc) {
            *o = *a as f32;
        }
    }
}

/// torch `GroupNorm`: per sample and group of `C/groups` consecutive channels, normalise with the
/// mean and the biased variance over (C/groups)·H·W values, then scale and shift per channel.
/// Works on any tensor of shape `[N, C, ...]`.
pub fn group_norm(x: &Tensor, groups: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Tensor {
    assert!(
        x.shape.len() >= 2,
        "group_norm needs [N, C, ...], got {:?}",
        x.shape
    );
    let c = x.shape[1];
    assert!(
        groups > 0 && c % groups == 0,
        "group_norm: {c} channels not divisible into {groups} groups"
    );
    assert!(
        gamma.len() == c && beta.len() == c,
        "group_norm: gamma/beta length vs {c} channels"
    );
    let spatial: usize = x.shape[2..].iter().product();
    let group_len = c / groups * spatial;
    let mut out = Tensor::zeros(&x.shape);
    par_chunks_mut(&mut out.data, group_len, |idx, dst| {
        let (ni, g) = (idx / groups, idx % groups);
        let start = (ni * c + g * (c / groups)) * spatial;
        let src = &x.data[start..start + group_len];
        let mean = src.iter().map(|&v| v as f64).sum::<f64>() / group_len as f64;
        let var = src
            .iter()
            .map(|&v| (v as f64 - mean) * (v as f64 - mean))
            .sum::<f64>()
            / group_len as f64;
        let inv_std = 1.0 / (var + eps as f64).sqrt();
        for (k, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
            let ch = g * (c / groups) + k / spatial;
            *d = ((s as f64 - mean) * inv_std * gamma[ch] as f64 + beta[ch] as f64) as f32;
        }
    });
    out
}

/// SiLU (swish): x·sigmoid(x), computed in f64 and rounded.
pub fn silu(x: &Tensor) -> Tensor {
    let data = x
        .data
        .iter()
        .map(|&v| {
            let v = v as f64;
            (v / (1.0 + (-v).exp())) as f32
        })
        .collect();
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

/// torch `Linear`: y = x Wᵀ + b with x `[N, in]`, W `[out, in]`, y `[N, out]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&[f32]>) -> Tensor {
    assert_eq!(
        x.shape.len(),
        2,
        "linear: x must be [N, in], got {:?}",
        x.shape
    );
    assert_eq!(
        weight.shape.len(),
        2,
        "linear: weight must be [out, in], got {:?}",
        weight.shape
    );
    let (n, inp) = (x.shape[0], x.shape[1]);
    let (outp, winp) = (weight.shape[0], weight.shape[1]);
    assert_eq!(
        inp, winp,
        "linear: x {:?} vs weight {:?}",
        x.shape, weight.shape
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), outp, "linear: bias length vs out features");
    }
    let mut out = Tensor::zeros(&[n, outp]);
    par_chunks_mut(&mut out.data, outp, |ni, row| {
        let xr = &x.data[ni * inp..][..inp];
        for (o, y) in row.iter_mut().enumerate() {
            let wr = &weight.data[o * inp..][..inp];
            let dot: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
            *y = (dot + bias.map_or(0.0, |b| b[o] as f64)) as f32;
        }
    });
    out
}

/// diffusers `get_timestep_embedding` (max_period 10000, scale 1) reproducing torch's f32 rounding:
/// exponent_i = f32(-ln 10000)·i / (dim/2 − freq_shift) in f32, freq_i = f32(exp(exponent_i)),
/// arg = f32(t)·freq_i rounded to f32, then sin/cos of that f32 argument evaluated in f64.
/// Output `[B, dim]` is `[sin | cos]`, or `[cos | sin]` when `flip_sin_to_cos`; an odd `dim`
/// gets a zero last column.
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Tensor {
    let half = dim / 2;
    let neg_log_period = -(10000f64.ln()) as f32;
    let divisor = half as f32 - freq_shift;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (neg_log_period * i as f32) / divisor;
            (exponent as f64).exp() as f32
        })
        .collect();
    let mut out = Tensor::zeros(&[timesteps.len(), dim]);
    for (b, &t) in timesteps.iter().enumerate() {
        let row = &mut out.data[b * dim..][..dim];
        for (i, &f) in freqs.iter().enumerate() {
            let arg = (t * f) as f64;
            let (sin, cos) = (arg.sin() as f32, arg.cos() as f32);
            let (first, second) = if flip_sin_to_cos {
                (cos, sin)
            } else {
                (sin, cos)
            };
            row[i] = first;
            row[half + i] = second;
        }
    }
    out
}

/// diffusers `GaussianFourierProjection` (log=True, [sin | cos]) reproducing torch's f32
/// rounding: p_i = f32(f32(f32(ln t) · w_i) · 2) · f32(π), then sin and cos of that f32
/// argument evaluated in f64. Output `[B, 2·len(w)]`. t must be positive (the caller checks).
pub fn fourier_embedding(timesteps: &[f32], w: &[f32]) -> Tensor {
    let n = w.len();
    let pi = std::f32::consts::PI;
    let mut out = Tensor::zeros(&[timesteps.len(), 2 * n]);
    for (b, &t) in timesteps.iter().enumerate() {
        let ln_t = (t as f64).ln() as f32;
        let row = &mut out.data[b * 2 * n..][..2 * n];
        for (i, &wi) in w.iter().enumerate() {
            let arg = ((ln_t * wi) * 2.0 * pi) as f64;
            row[i] = arg.sin() as f32;
            row[n + i] = arg.cos() as f32;
        }
    }
    out
}

/// Multi-head scaled dot-product attention over token sequences.
/// q, k, v: `[B, L, C]`; head h uses channels `h·d .. (h+1)·d` with d = C/heads (diffusers'
/// `head_to_batch_dim` split). Per head: softmax(q kᵀ / √d) v, the softmax over keys with the
/// row maximum subtracted, everything in f64. Returns `[B, L, C]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
    assert_eq!(
        q.shape.len(),
        3,
        "attention: q must be [B, L, C], got {:?}",
        q.shape
    );
    assert!(
        q.shape == k.shape && q.shape == v.shape,
        "attention: q {:?}, k {:?}, v {:?} must match",
        q.shape,
        k.shape,
        v.shape
    );
    let (_b, l, c) = (q.shape[0], q.shape[1], q.shape[2]);
    assert!(
        heads > 0 && c % heads == 0,
        "attention: {c} channels not divisible into {heads} heads"
    );
    let d = c / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = Tensor::zeros(&q.shape);
    // One chunk per (batch, query token) row of the output.
    par_chunks_mut(&mut out.data, c, |row_idx, dst| {
        let (bi, qi) = (row_idx / l, row_idx % l);
        let base = bi * l * c;
        let mut scores = vec![0f64; l];
        for h in 0..heads {
            let qr = &q.data[base + qi * c + h * d..][..d];
            let mut max = f64::NEG_INFINITY;
            for (kj, s) in scores.iter_mut().enumerate() {
                let kr = &k.data[base + kj * c + h * d..][..d];
                let dot: f64 = qr.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum();
                *s = dot * scale;
                max = max.max(*s);
            }
            let mut denom = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                denom += *s;
            }
            let mut acc = vec![0f64; d];
            for (kj, &p) in scores.iter().enumerate() {
                let vr = &v.data[base + kj * c + h * d..][..d];
                for (a, &vv) in acc.iter_mut().zip(vr) {
                    *a += p * vv as f64;
                }
            }
            for (o, a) in dst[h * d..(h + 1) * d].iter_mut().zip(&acc) {
                *o = (a / denom) as f32;
            }
        }
    });
    out
}

/// Nearest-neighbour 2× upsampling (torch `interpolate(scale_factor=2, mode="nearest")`):
/// out[y][x] = in[y/2][x/2].
pub fn upsample_nearest2x(x: &Tensor) -> Tensor {
    let (b, c, h, w) = x.nchw();
    let (oh, ow) = (2 * h, 2 * w);
    let mut out = Tensor::zeros(&[b, c, oh, ow]);
    for p in 0..b * c {
        let src = &x.data[p * h * w..][..h * w];
        let dst = &mut out.data[p * oh * ow..][..oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                dst[oy * ow + ox] = src[(oy / 2) * w + ox / 2];
            }
        }
    }
    out
}

/// Concatenates two NCHW tensors along channels: `[a | b]` (torch `cat([a, b], dim=1)`).
pub fn concat_channels(a: &Tensor, b: &Tensor) -> Tensor {
    let (n, ca, h, w) = a.nchw();
    let (nb, cb, hb, wb) = b.nchw();
    assert!(
        n == nb && h == hb && w == wb,
        "concat_channels: {:?} vs {:?}",
        a.shape,
        b.shape
    );
    let plane = h * w;
    let mut data = Vec::with_capacity(n * (ca + cb) * plane);
    for i in 0..n {
        data.extend_from_slice(&a.data[i * ca * plane..(i + 1) * ca * plane]);
        data.extend_from_slice(&b.data[i * cb * plane..(i + 1) * cb * plane]);
    }
    Tensor {
        shape: vec![n, ca + cb, h, w],
        data,
    }
}

/// Elementwise sum of two tensors of the same shape.
pub fn add(a: &Tensor, b: &Tensor) -> Tensor {
    assert_eq!(a.shape, b.shape, "add: shapes differ");
    Tensor {
        shape: a.shape.clone(),
        data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], f: impl Fn(usize) -> f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), (0..n).map(f).collect()).unwrap()
    }

    /// The straightforward definition, with bounds checks per tap, to hold the fast loop against.
    #[allow(clippy::needless_range_loop)]
    fn conv2d_naive(x: &Tensor, wt: &Tensor, bias: &[f32], stride: usize, p: Padding) -> Tensor {
        let (b, cin, h, w) = x.nchw();
        let (cout, _, kh, kw) = wt.nchw();
        let (oh, ow) = conv2d_output_size(h, w, kh, kw, stride, p);
        let mut out = Tensor::zeros(&[b, cout, oh, ow]);
        for bi in 0..b {
            for co in 0..cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[co] as f64;
                        for ci in 0..cin {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * stride + ky) as isize - p.top as isize;
                                    let ix = (ox * stride + kx) as isize - p.left as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        acc += wt.data[((co * cin + ci) * kh + ky) * kw + kx]
                                            as f64
                                            * x.data[((bi * cin + ci) * h + iy as usize) * w
                                                + ix as usize]
                                                as f64;
                                    }
                                }
                            }
                        }
                        out.data[((bi * cout + co) * oh + oy) * ow + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn conv2d_matches_naive_definition() {
        let x = t(&[2, 3, 7, 6], |i| ((i * 37 % 23) as f32 - 11.0) / 7.0);
        for (k, stride, pad) in [
            (3, 1, Padding::same(1)),
            (3, 2, Padding::same(1)),
            (
                3,
                2,
                Padding {
                    top: 0,
                    left: 0,
                    bottom: 1,
                    right: 1,
                },
            ),
            (1, 1, Padding::same(0)),
            (
                2,
                3,
                Padding {
                    top: 2,
                    left: 1,
                    bottom: 0,
                    right: 3,
                },
            ),
        ] {
            let wt = t(&[5, 3, k, k], |i| ((i * 13 % 17) as f32 - 8.0) / 9.0);
            let bias = [0.5, -0.25, 0.0, 1.0, -2.0];
            let fast = conv2d(&x, &wt, Some(&bias), stride, pad);
            let slow = conv2d_naive(&x, &wt, &bias, stride, pad);
            assert_eq!(fast.shape, slow.shape);
            assert_eq!(fast.data, slow.data, "k={k} stride={stride} pad={pad:?}");
        }
    }

    #[test]
    fn group_norm_normalises_each_group() {
        let x = t(&[1, 4, 2, 2], |i| i as f32);
        let y = group_norm(&x, 2, &[1.0; 4], &[0.0; 4], 0.0);
        // Each group of 8 values 0..8 (or 8..16) has mean 3.5/11.5 and variance 5.25.
        let expect0 = (0.0 - 3.5) / 5.25f64.sqrt();
        assert!((y.data[0] as f64 - expect0).abs() < 1e-6);
        let s: f64 = y.data[..8].iter().map(|&v| v as f64).sum();
        assert!(s.abs() < 1e-5);
    }

    #[test]
    fn timestep_embedding_matches_reference_values() {
        // Values from the semantics reference (torch, dim 128, shift 1, no flip).
        let e = timestep_embedding(&[1.0, 999.0], 128, false, 1.0);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-7;
        assert!(close(e.data[0], 0.841_470_96));
        assert!(close(e.data[1], 0.760_438_74));
        assert!(close(e.data[64], 0.540_302_34));
        assert!(close(e.data[128], -0.026_460_75));
        assert!(close(e.data[128 + 127], 0.995_014_13));
    }

    #[test]
    fn attention_rows_are_convex_combinations() {
        let q = t(&[1, 3, 4], |i| i as f32 * 0.1);
        let k = t(&[1, 3, 4], |i| (i % 5) as f32 * 0.2);
        let v = t(&[1, 3, 4], |_| 2.0);
        let o = attention(&q, &k, &v, 2);
        assert!(o.data.iter().all(|&x| (x - 2.0).abs() < 1e-6));
    }
}
