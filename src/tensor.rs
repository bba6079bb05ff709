//! A plain host tensor: a shape and row-major f32 data. NCHW for images.
//! Used by the CPU reference, file I/O and the tests that compare GPU output with it.

use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that `data` holds exactly `shape.iter().product()` values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            );
        }
        Ok(Self { shape, data })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Images `range` of an NCHW batch, as a new `[range.len(), C, H, W]` tensor.
    pub fn images(&self, range: std::ops::Range<usize>) -> Result<Self> {
        let (n, c, h, w) = self.nchw();
        anyhow::ensure!(
            range.start <= range.end && range.end <= n,
            "images {range:?} of a batch of {n}"
        );
        let per = c * h * w;
        Self::new(
            vec![range.len(), c, h, w],
            self.data[range.start * per..range.end * per].to_vec(),
        )
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The four dimensions of an NCHW tensor; panics on another rank (a programming error).
    pub fn nchw(&self) -> (usize, usize, usize, usize) {
        assert_eq!(
            self.shape.len(),
            4,
            "expected an NCHW tensor, got shape {:?}",
            self.shape
        );
        (self.shape[0], self.shape[1], self.shape[2], self.shape[3])
    }
}

/// NCHW → NHWC for `n` images of `c` channels and `h`×`w` pixels. NHWC is the GPU's activation
/// layout (and, as `[N·H·W, C]`, the CPU attention's token layout); the one permutation both use.
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        n * c * h * w,
        "nchw_to_nhwc: {} values for {n}x{c}x{h}x{w}",
        x.len()
    );
    let hw = h * w;
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for (p, &v) in x[(b * c + ch) * hw..][..hw].iter().enumerate() {
                out[(b * hw + p) * c + ch] = v;
            }
        }
    }
    out
}

/// NHWC → NCHW, the inverse of [`nchw_to_nhwc`].
pub fn nhwc_to_nchw(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        n * c * h * w,
        "nhwc_to_nchw: {} values for {n}x{c}x{h}x{w}",
        x.len()
    );
    let hw = h * w;
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for p in 0..hw {
            for (ch, &v) in x[(b * hw + p) * c..][..c].iter().enumerate() {
                out[(b * c + ch) * hw + p] = v;
            }
        }
    }
    out
}

/// Relative L2 error ‖a − b‖ / ‖b‖ (b is the reference), accumulated in f64.
/// Returns +inf when a NaN is present or the lengths differ, so such output never passes.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        let d = x as f64 - y as f64;
        num += d * d;
        den += (y as f64) * (y as f64);
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// Largest absolute difference and its index; NaN anywhere counts as infinite.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f64, usize) {
    if a.len() != b.len() {
        return (f64::INFINITY, 0);
    }
    let mut best = (0.0f64, 0usize);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let d = if x.is_finite() && y.is_finite() {
            (x as f64 - y as f64).abs()
        } else {
            f64::INFINITY
        };
        if d > best.0 || (d.is_infinite() && !best.0.is_infinite()) {
            best = (d, i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_l2_catches_nan_and_mismatch() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!(rel_l2(&[f32::NAN, 2.0], &[1.0, 2.0]).is_infinite());
        assert!(rel_l2(&[1.0], &[1.0, 2.0]).is_infinite());
        assert!((rel_l2(&[1.1, 0.0], &[1.0, 0.0]) - 0.1).abs() < 1e-6);
        assert!(Tensor::new(vec![2, 3], vec![0.0; 5]).is_err());
    }
}
