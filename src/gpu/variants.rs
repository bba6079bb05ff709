//! The kernel variants a caller may force, as plain values: the library never reads the
//! environment for them (the CLI reads `DDIM_CONV_VARIANT` / `DDIM_MATMUL_VARIANT`).

use anyhow::{bail, Result};

/// Which kernel computes a convolution's GEMM; every variant gives the same result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvVariant {
    /// Row kernels for 3×3 stride-1 convs, 8 pixels × 8 channels per invocation for the rest; no
    /// workgroup memory or barriers (best on CPU adapters).
    Register,
    /// 64×64 workgroup tiles through workgroup memory (for real GPUs).
    Tiled,
    /// 128×64 workgroup tiles, 8×4 outputs per invocation, next K step prefetched into
    /// registers (for real GPUs with large problems).
    Tiled128,
}

impl ConvVariant {
    pub const ALL: [ConvVariant; 3] = [
        ConvVariant::Register,
        ConvVariant::Tiled,
        ConvVariant::Tiled128,
    ];

    /// The name [`ConvVariant::parse`] reads (and the tuning cache stores).
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "reg",
            Self::Tiled => "tiled",
            Self::Tiled128 => "tiled128",
        }
    }

    /// `reg` (or `register`), `tiled` or `tiled128`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "reg" | "register" => Ok(Self::Register),
            "tiled" => Ok(Self::Tiled),
            "tiled128" => Ok(Self::Tiled128),
            other => bail!("unknown conv variant {other:?}: expected reg, tiled or tiled128"),
        }
    }
}

/// Which kernel computes a matrix product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Version 1 (`linear.wgsl`): any strides, scalar loads.
    Strided,
    /// Version 2 (`linear_k4.wgsl`): A and B contiguous along k with vec4 loads (`Matmul::fits_k4`).
    K4,
    /// Version 3 (`linear.wgsl`): 64×64 tiles staged through workgroup memory (real GPUs).
    Tiled,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 3] = [
        MatmulVariant::Strided,
        MatmulVariant::K4,
        MatmulVariant::Tiled,
    ];

    /// The name [`MatmulVariant::parse`] reads (and the tuning cache stores).
    pub fn name(self) -> &'static str {
        match self {
            Self::Strided => "strided",
            Self::K4 => "k4",
            Self::Tiled => "tiled",
        }
    }

    /// `strided`, `k4` or `tiled`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "strided" => Ok(Self::Strided),
            "k4" => Ok(Self::K4),
            "tiled" => Ok(Self::Tiled),
            other => bail!("unknown matmul variant {other:?}: expected strided, k4 or tiled"),
        }
    }
}

/// How a reduction (group-norm statistics, softmax rows) combines its partial results: serially
/// per invocation, or by a workgroup of subgroups (devices with `SUBGROUP` only). Both give the
/// same result up to summation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    Serial,
    Subgroup,
}

impl Reduction {
    pub const ALL: [Reduction; 2] = [Reduction::Subgroup, Reduction::Serial];

    /// The name [`Reduction::parse`] reads (and the tuning cache stores).
    pub fn name(self) -> &'static str {
        match self {
            Self::Serial => "serial",
            Self::Subgroup => "subgroup",
        }
    }

    /// `serial` or `subgroup`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "serial" => Ok(Self::Serial),
            "subgroup" => Ok(Self::Subgroup),
            other => bail!("unknown reduction {other:?}: expected serial or subgroup"),
        }
    }
}

/// Variants forced on every kernel of a context; None chooses per adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelChoice {
    pub conv: Option<ConvVariant>,
    pub matmul: Option<MatmulVariant>,
    /// Reduce group-norm statistics and softmax rows without subgroup operations even where
    /// the adapter has `SUBGROUP` (the path every other adapter takes; for tests and comparison).
    pub no_subgroups: bool,
    /// Adds a deliberately wrong conv candidate to the tuning pass, which its validation must
    /// reject (for the test that shows it does; see `gpu::tuning::FAULTY`).
    #[doc(hidden)]
    pub inject_faulty_conv: bool,
}
