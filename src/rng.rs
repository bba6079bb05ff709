//! Noise generators for the sampler.
//!
//! * [`TorchRng`]: bit-compatible with `torch.manual_seed(seed); torch.randn(shape)` on the CPU for
//!   float32 tensors of at least 16 elements — an mt19937 stream turned into 24-bit uniforms, then
//!   Box–Muller applied in blocks of 16 (first 8 uniforms give the radii, the next 8 the angles; a
//!   tail that is not a multiple of 16 is redrawn as one more block over the last 16 positions).
//!   Drawing several tensors in a row continues the stream exactly as torch does, so the DDIM
//!   pipeline's order (x_T first, then one tensor per step when eta > 0) can be replayed.
//! * [`PhiloxRng`]: counter-based Philox4x32-10: element `i` of draw `d` depends only on
//!   (seed, d, i), so noise can be produced in any order or split across batches.

use anyhow::{bail, Result};
use std::f64::consts::PI;

/// The 32-bit Mersenne Twister (MT19937), seeded like `std::mt19937(seed)` / torch's CPU generator.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// torch-compatible standard-normal noise (CPU generator, float32).
#[derive(Clone)]
pub struct TorchRng {
    mt: Mt19937,
}

impl TorchRng {
    /// Like `torch.manual_seed(seed)`; torch seeds its mt19937 with the low 32 bits.
    pub fn new(seed: u64) -> Self {
        Self {
            mt: Mt19937::new(seed as u32),
        }
    }

    /// A float uniform in [0, 1) with 24 random bits, as torch draws them for float32.
    fn uniform24(&mut self) -> f32 {
        (self.mt.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// Like `torch.randn(n)` (any shape with n elements, row-major). torch uses another, scalar
    /// algorithm below 16 elements, which is not reproduced: such sizes are an error.
    pub fn randn(&mut self, n: usize) -> Result<Vec<f32>> {
        if n < 16 {
            bail!("torch-compatible noise needs at least 16 elements per draw, got {n}");
        }
        let mut out: Vec<f32> = (0..n).map(|_| self.uniform24()).collect();
        for block in out.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if n % 16 != 0 {
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform24();
            }
            box_muller_16(tail);
        }
        Ok(out)
    }
}

/// torch's `normal_fill_16`: pairs u[j] (radius) with u[j + 8] (angle).
/// Computed in f64 and rounded once; torch's vectorised f32 log/sin/cos differ by ≤ ~3e-7.
fn box_muller_16(u: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - u[j] as f64;
        let u2 = u[j + 8] as f64;
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * PI * u2;
        u[j] = (radius * theta.cos()) as f32;
        u[j + 8] = (radius * theta.sin()) as f32;
    }
}

/// Counter-based Philox4x32-10 normal noise.
#[derive(Clone)]
pub struct PhiloxRng {
    key: [u32; 2],
    draw: u32,
}

impl PhiloxRng {
    pub fn new(seed: u64) -> Self {
        Self {
            key: [seed as u32, (seed >> 32) as u32],
            draw: 0,
        }
    }

    /// The next tensor of `n` standard normals; each call advances the draw counter.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        let draw = self.draw;
        self.draw = self.draw.wrapping_add(1);
        let mut out = Vec::with_capacity(n + 3);
        let mut block = 0u64;
        while out.len() < n {
            let r = philox4x32_10([block as u32, (block >> 32) as u32, draw, 0], self.key);
            for pair in [[r[0], r[1]], [r[2], r[3]]] {
                // Uniforms in (0, 1]: 1 - u avoids ln(0).
                let u1 = 1.0 - pair[0] as f64 / 4_294_967_296.0;
                let u2 = pair[1] as f64 / 4_294_967_296.0;
                let radius = (-2.0 * u1.ln()).sqrt();
                out.push((radius * (2.0 * PI * u2).cos()) as f32);
                out.push((radius * (2.0 * PI * u2).sin()) as f32);
            }
            block += 1;
        }
        out.truncate(n);
        out
    }
}

/// Philox4x32 with 10 rounds (Salmon et al., SC'11).
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        let p0 = M0 * ctr[0] as u64;
        let p1 = M1 * ctr[2] as u64;
        ctr = [
            (p1 >> 32) as u32 ^ ctr[1] ^ key[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ ctr[3] ^ key[1],
            p0 as u32,
        ];
    }
    ctr
}

/// Which generator produces the sampler's noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RngKind {
    /// Bit-compatible with torch.manual_seed + torch.randn on the CPU.
    Torch,
    /// Counter-based Philox4x32-10.
    Philox,
}

impl RngKind {
    /// Every kind, in the order a list of choices shows them.
    pub const ALL: [Self; 2] = [Self::Torch, Self::Philox];

    /// Its name: `torch` or `philox`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Torch => "torch",
            Self::Philox => "philox",
        }
    }
}

impl std::fmt::Display for RngKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RngKind {
    type Err = anyhow::Error;

    /// The kind named `s` (as [`RngKind::as_str`] writes it).
    fn from_str(s: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|k| k.as_str() == s) {
            Some(k) => Ok(k),
            None => bail!("unknown noise generator {s:?}: expected torch or philox"),
        }
    }
}

/// A seeded noise source of either kind.
#[derive(Clone)]
pub enum NoiseSource {
    /// Boxed: the Mersenne Twister state is 2.5 KB.
    Torch(Box<TorchRng>),
    Philox(PhiloxRng),
}

impl NoiseSource {
    pub fn new(kind: RngKind, seed: u64) -> Self {
        match kind {
            RngKind::Torch => Self::Torch(Box::new(TorchRng::new(seed))),
            RngKind::Philox => Self::Philox(PhiloxRng::new(seed)),
        }
    }

    /// The next draw of `n` standard normals.
    pub fn randn(&mut self, n: usize) -> Result<Vec<f32>> {
        match self {
            Self::Torch(r) => r.randn(n),
            Self::Philox(r) => Ok(r.randn(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_stream() {
        // The C++ standard requires the 10000th output of a default-seeded (5489) mt19937 to be 4123659995.
        let mut mt = Mt19937::new(5489);
        let mut v = 0;
        for _ in 0..10000 {
            v = mt.next_u32();
        }
        assert_eq!(v, 4_123_659_995);
    }

    #[test]
    fn torch_randn_seed0_first_values() {
        // torch.manual_seed(0); torch.randn(1, 3, 32, 32)[0, 0, 0, :4]
        let x = TorchRng::new(0).randn(3 * 32 * 32).unwrap();
        let want = [-1.1258398f32, -1.1523602, -0.2505786, -0.4338788];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn torch_randn_rejects_tiny_draws() {
        assert!(TorchRng::new(0).randn(15).is_err());
    }

    #[test]
    fn philox_known_answer() {
        // Random123's known-answer vectors for philox4x32-10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
    }

    #[test]
    fn philox_is_deterministic_and_roughly_normal() {
        let a = PhiloxRng::new(7).randn(10_001);
        let b = PhiloxRng::new(7).randn(10_001);
        assert_eq!(a, b);
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
        let mut r = PhiloxRng::new(7);
        let first = r.randn(8);
        assert_ne!(first, r.randn(8), "successive draws must differ");
    }
}
