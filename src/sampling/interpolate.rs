//! Interpolation between two noise tensors, for `ddim interpolate`.

/// Spherical linear interpolation between two noise tensors (DDIM paper, eq. 67):
/// `sin((1 − α)θ)/sin θ · a + sin(αθ)/sin θ · b`, θ the angle between a and b; computed in f64.
/// Falls back to linear interpolation when a and b are (nearly) parallel.
pub fn slerp(a: &[f32], b: &[f32], alpha: f64) -> Vec<f32> {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let cos = (dot / (na * nb)).clamp(-1.0, 1.0);
    let theta = cos.acos();
    if theta.sin().abs() < 1e-6 {
        return lerp(a, b, alpha);
    }
    let (wa, wb) = (
        ((1.0 - alpha) * theta).sin() / theta.sin(),
        (alpha * theta).sin() / theta.sin(),
    );
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (wa * x as f64 + wb * y as f64) as f32)
        .collect()
}

/// Linear interpolation `(1 − α)·a + α·b`, for comparison with [`slerp`].
pub fn lerp(a: &[f32], b: &[f32], alpha: f64) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| ((1.0 - alpha) * x as f64 + alpha * y as f64) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slerp_keeps_endpoints_and_norm() {
        let a: Vec<f32> = (0..64).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
        let b: Vec<f32> = (0..64).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        for (x, y) in slerp(&a, &b, 0.0).iter().zip(&a) {
            assert!((x - y).abs() < 1e-6);
        }
        for (x, y) in slerp(&a, &b, 1.0).iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
        // With equal norms, slerp stays on the sphere while lerp cuts inside it.
        let b_scaled: Vec<f32> = b
            .iter()
            .map(|&y| y * (norm(&a) / norm(&b)) as f32)
            .collect();
        let mid = slerp(&a, &b_scaled, 0.5);
        assert!((norm(&mid) - norm(&a)).abs() / norm(&a) < 1e-5);
        assert!(norm(&lerp(&a, &b_scaled, 0.5)) < norm(&a) * 0.99);
    }
}
