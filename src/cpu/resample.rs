//! The resampling ops of diffusers' ResNet down/up paths and skip (NCSN++) blocks, on NCHW f32
//! tensors with f64 arithmetic, as the yardstick for their GPU kernels.
//!
//! - [`avg_pool2x2`]: `F.avg_pool2d(x, 2, stride=2)`, the `ResnetBlock2D(down=True)` path;
//! - [`fir_down2`] / [`fir_up2`]: `upfirdn2d_native` with the (1, 3, 3, 1) kernel, the
//!   `FirDownsample2D` / `FirUpsample2D` of the skip blocks (kernel `outer(k, k) / 64`, times 4
//!   when upsampling). Samples outside the image count as zero, so borders attenuate.
//!
//! Nearest-neighbour upsampling is [`super::ops::upsample_nearest2x`].

use crate::Tensor;

/// The 1-D taps of the FIR filter before normalisation.
pub const FIR_TAPS: [f64; 4] = [1.0, 3.0, 3.0, 1.0];

/// 2×2 average pooling with stride 2; odd sizes are floored (the last row/column is dropped).
pub fn avg_pool2x2(x: &Tensor) -> Tensor {
    let (n, c, h, w) = x.nchw();
    let (oh, ow) = (h / 2, w / 2);
    let mut out = Tensor::zeros(&[n, c, oh, ow]);
    for p in 0..n * c {
        let src = &x.data[p * h * w..][..h * w];
        let dst = &mut out.data[p * oh * ow..][..oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let at = |y: usize, x: usize| src[(2 * oy + y) * w + 2 * ox + x] as f64;
                dst[oy * ow + ox] = ((at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0) as f32;
            }
        }
    }
    out
}

/// One axis of the ×2 FIR downsampler: output `o` of `n_in` inputs (weights over 8, pad (1, 1)):
/// `(x[2o−1] + 3x[2o] + 3x[2o+1] + x[2o+2]) / 8`, zero outside `0..n_in`.
fn down_taps(o: usize, n_in: usize) -> impl Iterator<Item = (usize, f64)> {
    (0..4).filter_map(move |k| {
        let i = (2 * o + k) as isize - 1;
        (i >= 0 && (i as usize) < n_in).then_some((i as usize, FIR_TAPS[k] / 8.0))
    })
}

/// One axis of the ×2 FIR upsampler (weights over 4, pad (2, 1) after zero insertion):
/// `y[2j] = (x[j−1] + 3x[j]) / 4`, `y[2j+1] = (3x[j] + x[j+1]) / 4`, zero outside `0..n_in`.
fn up_taps(o: usize, n_in: usize) -> impl Iterator<Item = (usize, f64)> {
    let j = (o / 2) as isize;
    let pairs = if o % 2 == 0 {
        [(j - 1, 1.0), (j, 3.0)]
    } else {
        [(j, 3.0), (j + 1, 1.0)]
    };
    pairs
        .into_iter()
        .filter(move |&(i, _)| i >= 0 && (i as usize) < n_in)
        .map(|(i, w)| (i as usize, w / 4.0))
}

/// Applies a separable 2-D filter given per-axis taps; output size `(oh, ow)`. The 2-D weight of
/// a tap pair is the product of the 1-D weights (the outer product of diffusers' kernel).
fn separable<I: Iterator<Item = (usize, f64)>>(
    x: &Tensor,
    (oh, ow): (usize, usize),
    taps: impl Fn(usize, usize) -> I,
) -> Tensor {
    let (n, c, h, w) = x.nchw();
    let mut out = Tensor::zeros(&[n, c, oh, ow]);
    for p in 0..n * c {
        let src = &x.data[p * h * w..][..h * w];
        let dst = &mut out.data[p * oh * ow..][..oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0f64;
                for (iy, wy) in taps(oy, h) {
                    for (ix, wx) in taps(ox, w) {
                        acc += wy * wx * src[iy * w + ix] as f64;
                    }
                }
                dst[oy * ow + ox] = acc as f32;
            }
        }
    }
    out
}

/// The skip blocks' `FirDownsample2D` (no conv): `[N, C, H, W]` → `[N, C, ⌊H/2⌋, ⌊W/2⌋]`.
pub fn fir_down2(x: &Tensor) -> Tensor {
    let (_, _, h, w) = x.nchw();
    separable(x, (h / 2, w / 2), down_taps)
}

/// The skip blocks' `FirUpsample2D` (no conv): `[N, C, H, W]` → `[N, C, 2H, 2W]`.
pub fn fir_up2(x: &Tensor) -> Tensor {
    let (_, _, h, w) = x.nchw();
    separable(x, (2 * h, 2 * w), up_taps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], f: impl Fn(usize) -> f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), (0..n).map(f).collect()).unwrap()
    }

    /// upfirdn2d as diffusers defines it, literally: zero-insert, pad, full 2-D convolution with
    /// the outer-product kernel, keep every `down`-th sample.
    fn upfirdn_literal(x: &Tensor, up: usize, down: usize, pad: (usize, usize)) -> Tensor {
        let (n, c, h, w) = x.nchw();
        let gain = (up * up) as f64;
        let k: Vec<f64> = FIR_TAPS.iter().map(|v| v / 8.0).collect();
        let (uh, uw) = (h * up, w * up);
        let (ph, pw) = (uh + pad.0 + pad.1, uw + pad.0 + pad.1);
        let (oh, ow) = ((ph - 4) / down + 1, (pw - 4) / down + 1);
        let mut out = Tensor::zeros(&[n, c, oh, ow]);
        for p in 0..n * c {
            let mut padded = vec![0.0f64; ph * pw];
            for y in 0..h {
                for xx in 0..w {
                    padded[(y * up + pad.0) * pw + xx * up + pad.0] =
                        x.data[p * h * w + y * w + xx] as f64;
                }
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for a in 0..4 {
                        for b in 0..4 {
                            // True convolution: the kernel is flipped (it is symmetric anyway).
                            acc += gain
                                * k[3 - a]
                                * k[3 - b]
                                * padded[(oy * down + a) * pw + ox * down + b];
                        }
                    }
                    out.data[p * oh * ow + oy * ow + ox] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn fir_filters_equal_the_literal_upfirdn2d() {
        for (h, w) in [(4, 6), (5, 7), (2, 3), (8, 8)] {
            let x = t(&[2, 3, h, w], |i| ((i * 29 % 31) as f32 - 15.0) / 7.0);
            let down = fir_down2(&x);
            let literal = upfirdn_literal(&x, 1, 2, (1, 1));
            assert_eq!(down.shape, literal.shape, "{h}x{w}");
            assert_eq!(down.shape, vec![2, 3, h / 2, w / 2]);
            for (a, b) in down.data.iter().zip(&literal.data) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "down {h}x{w}: {a} vs {b}"
                );
            }
            let upped = fir_up2(&x);
            let literal = upfirdn_literal(&x, 2, 1, (2, 1));
            assert_eq!(upped.shape, literal.shape, "{h}x{w}");
            assert_eq!(upped.shape, vec![2, 3, 2 * h, 2 * w]);
            for (a, b) in upped.data.iter().zip(&literal.data) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "up {h}x{w}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn fir_keeps_constants_inside_and_attenuates_borders() {
        let x = t(&[1, 1, 6, 6], |_| 1.0);
        let d = fir_down2(&x);
        assert_eq!(d.data[4], 1.0, "interior (row 1, column 1 of 3x3)");
        assert_eq!(
            d.data[0],
            (7.0f64 / 8.0).powi(2) as f32,
            "corner loses x[-1]"
        );
        let u = fir_up2(&x);
        assert_eq!(u.data[12 * 5 + 5], 1.0, "interior");
        assert_eq!(
            u.data[0],
            (3.0f64 / 4.0).powi(2) as f32,
            "corner loses x[-1]"
        );
    }

    #[test]
    fn avg_pool_floors_odd_sizes() {
        let x = t(&[1, 2, 3, 5], |i| i as f32);
        let y = avg_pool2x2(&x);
        assert_eq!(y.shape, vec![1, 2, 1, 2]);
        assert_eq!(y.data[0], (0.0 + 1.0 + 5.0 + 6.0) / 4.0);
        // Channel 1 starts at 15: its second window holds 17, 18, 22 and 23.
        assert_eq!(y.data[3], (17.0 + 18.0 + 22.0 + 23.0) / 4.0);
    }
}
