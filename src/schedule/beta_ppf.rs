//! The inverse of the regularised incomplete beta function, `scipy.stats.beta.ppf(q, a, b)`, for
//! the "beta" σ schedule (diffusers' `_convert_to_beta`, a = b = 0.6). Written here from the
//! textbook definitions: log Γ by Lanczos' approximation (g = 7, nine terms), I_x(a, b) by its
//! continued fraction (modified Lentz), and the inverse by bisection on [0, 1] down to adjacent
//! doubles, which needs no starting guess and cannot leave the interval. `tests/sigma_schedule.rs`
//! checks it against scipy's values.

use anyhow::{ensure, Result};

/// ln Γ(x) for x > 0 (Lanczos, g = 7; relative error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (k, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + k as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The continued fraction of I_x(a, b) (converges fast for x < (a + 1)/(a + b + 2)).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        // Odd step.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b), x in [0, 1], a, b > 0.
pub fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(1.0 - x, b, a) / b
    }
}

/// `scipy.stats.beta.ppf(q, a, b)`: the x in [0, 1] with I_x(a, b) = q.
pub fn beta_ppf(q: f64, a: f64, b: f64) -> Result<f64> {
    ensure!(
        a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite(),
        "the beta distribution needs a, b > 0, got a = {a}, b = {b}"
    );
    ensure!(
        (0.0..=1.0).contains(&q),
        "a beta quantile needs q in [0, 1], got {q}"
    );
    if q == 0.0 || q == 1.0 {
        return Ok(q);
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    // Bisection to adjacent doubles (at most ~1100 halvings from [0, 1], usually ~60).
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if incomplete_beta(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-14);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
    }

    #[test]
    fn symmetric_beta_has_its_median_at_one_half() {
        assert!((beta_ppf(0.5, 0.6, 0.6).unwrap() - 0.5).abs() < 1e-15);
        assert_eq!(beta_ppf(0.0, 0.6, 0.6).unwrap(), 0.0);
        assert_eq!(beta_ppf(1.0, 0.6, 0.6).unwrap(), 1.0);
        assert!(beta_ppf(1.5, 0.6, 0.6).is_err());
        assert!(beta_ppf(0.5, 0.0, 0.6).is_err());
    }
}
