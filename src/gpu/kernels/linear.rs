//! Batched strided matrix products with a fused epilogue (`shaders/linear.wgsl`): linear layers
//! (`y = x Wᵀ + b`, optional SiLU on the input and/or output, optional residual add) and the
//! matrix products inside attention. The reference twin is `cpu::ops::linear`.

use anyhow::{ensure, Result};

use crate::gpu::kernel::{Binding, Dispatch, KernelSpec};
use crate::gpu::precision::{specialize, Precision};
use crate::gpu::{candidates, GpuContext};

pub const SOURCE: &str = include_str!("../../../shaders/linear.wgsl");
pub const SOURCE_K4: &str = include_str!("../../../shaders/linear_k4.wgsl");
/// Output tile per workgroup: 16×16 invocations, each owning 4×4 outputs.
const TILE: u32 = 64;

// `Params::flags` bits: the WGSL `const`s of the same names in linear.wgsl and linear_k4.wgsl
// (tests/shader_contracts.rs checks).
pub const HAS_BIAS: u32 = 1;
pub const HAS_RESIDUAL: u32 = 2;
pub const SILU_IN: u32 = 4;
pub const SILU_OUT: u32 = 8;
pub const BIAS_PER_ROW: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub inner_count: u32,
    pub a_m: u32,
    pub a_k: u32,
    pub a_outer: u32,
    pub a_inner: u32,
    pub b_k: u32,
    pub b_n: u32,
    pub b_outer: u32,
    pub b_inner: u32,
    pub c_m: u32,
    pub c_outer: u32,
    pub c_inner: u32,
    pub alpha: f32,
    pub flags: u32,
    pub a_base: u32,
    pub b_base: u32,
    pub c_base: u32,
    pub out_scale: f32,
    pub _pad: [u32; 3],
}

/// Element strides of one operand: (z, row, col) ↦ `offset + outer·(z / inner_count)
/// + inner·(z % inner_count) + row·row_stride + col·col_stride`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Strides {
    pub offset: usize,
    pub row: usize,
    pub col: usize,
    pub outer: usize,
    pub inner: usize,
}

/// `out[z] = (silu_out?(alpha · silu_in?(A[z]) · B[z] + bias) + residual[z]) · out_scale`, for z in 0..batch.
/// A is M×K, B is K×N, out (and residual) M×N with unit column stride.
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Number of products (grid z), split as (z / inner_count, z % inner_count).
    pub batch: usize,
    pub inner_count: usize,
    pub a: Strides,
    pub b: Strides,
    /// Output strides; `col` must be 1.
    pub c: Strides,
    pub alpha: f32,
    pub out_scale: f32,
    pub silu_in: bool,
    pub silu_out: bool,
    /// The bias is indexed by the output row m (length M) instead of the column n.
    pub bias_per_row: bool,
}

impl Matmul {
    /// A linear layer on `rows` vectors: x `[rows, in]` times W `[out, in]` transposed (torch layout).
    pub fn linear(rows: usize, in_features: usize, out_features: usize) -> Self {
        Self {
            m: rows,
            n: out_features,
            k: in_features,
            batch: 1,
            inner_count: 1,
            a: Strides {
                row: in_features,
                col: 1,
                ..Default::default()
            },
            b: Strides {
                row: 1,
                col: in_features,
                ..Default::default()
            },
            c: Strides {
                row: out_features,
                col: 1,
                ..Default::default()
            },
            alpha: 1.0,
            out_scale: 1.0,
            silu_in: false,
            silu_out: false,
            bias_per_row: false,
        }
    }

    /// Highest element index (exclusive) an operand with `s` touches for an R×C matrix.
    fn extent(&self, s: &Strides, rows: usize, cols: usize) -> usize {
        let zo = (self.batch - 1) / self.inner_count;
        let zi = if self.batch > self.inner_count {
            self.inner_count - 1
        } else {
            self.batch - 1
        };
        s.offset + zo * s.outer + zi * s.inner + (rows - 1) * s.row + (cols - 1) * s.col + 1
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.m > 0 && self.n > 0 && self.k > 0 && self.batch > 0 && self.inner_count > 0,
            "matmul: empty product {self:?}"
        );
        ensure!(self.c.col == 1, "matmul: output column stride must be 1");
        ensure!(
            self.batch <= 65535,
            "matmul: batch {} exceeds the grid limit",
            self.batch
        );
        for (what, s, r, c) in [
            ("A", &self.a, self.m, self.k),
            ("B", &self.b, self.k, self.n),
            ("out", &self.c, self.m, self.n),
        ] {
            ensure!(
                self.extent(s, r, c) < u32::MAX as usize,
                "matmul: {what} indices overflow 32 bits"
            );
        }
        Ok(())
    }

    /// Useful floating-point operations (a multiply-add counts 2).
    pub fn flops(&self) -> u64 {
        2 * (self.batch * self.m * self.n * self.k) as u64
    }

    /// Compulsory bytes (f32 operands): each operand read once, the output written once.
    pub fn bytes(&self) -> u64 {
        self.bytes_as(MatmulTypes::F32)
    }

    /// Compulsory bytes for operands stored as `t`.
    pub fn bytes_as(&self, t: MatmulTypes) -> u64 {
        let z = self.batch;
        (z * (self.m * self.k * t.a.bytes()
            + self.k * self.n * t.b.bytes()
            + self.m * self.n * t.c.bytes())) as u64
    }
}

/// Storage types of a product's operands: A, B, and out with the residual. Whatever they are,
/// products accumulate in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulTypes {
    pub a: Precision,
    pub b: Precision,
    pub c: Precision,
}

impl MatmulTypes {
    pub const F32: MatmulTypes = MatmulTypes::all(Precision::F32);

    /// Every operand stored in `p`.
    pub const fn all(p: Precision) -> Self {
        Self { a: p, b: p, c: p }
    }
}

/// The half-precision combinations a plan uses: every operand f16 (linear layers, the q/k/v
/// projections), f32 scores from f16 q and k, and f16 heads from f32 probabilities.
pub const F16_TYPES: [MatmulTypes; 3] = [
    MatmulTypes::all(Precision::F16),
    MatmulTypes {
        a: Precision::F16,
        b: Precision::F16,
        c: Precision::F32,
    },
    MatmulTypes {
        a: Precision::F32,
        b: Precision::F16,
        c: Precision::F16,
    },
];

/// `source` (linear.wgsl or linear_k4.wgsl, named `shader`) for the operand types `t`.
pub fn specialized(
    source: &'static str,
    shader: &'static str,
    t: MatmulTypes,
) -> (&'static str, &'static str) {
    specialize(shader, source, &[("a_t", t.a), ("b_t", t.b), ("c_t", t.c)])
}

/// Which kernel computes a product; both give the same result up to summation order.
pub use crate::gpu::variants::MatmulVariant;

impl MatmulVariant {
    /// The context's forced variant ([`crate::gpu::KernelChoice`]; K4 falls back to Strided
    /// where it does not apply), else on CPU adapters (lavapipe, where barriers are slow) the
    /// barrier-free kernels, and the workgroup-memory one elsewhere.
    pub fn for_context(ctx: &GpuContext, op: &Matmul) -> Self {
        match ctx.kernels.matmul {
            Some(Self::K4) if !op.fits_k4() => Self::Strided,
            Some(v) => v,
            None if !ctx.is_cpu() => Self::Tiled,
            None if op.fits_k4() => Self::K4,
            None => Self::Strided,
        }
    }
}

impl MatmulVariant {
    /// The variant for `op` with operands stored as `types`: the context's forced one, else
    /// the tuner's choice among the variants that apply ([`crate::gpu::tune`]), else (tuning
    /// off) [`MatmulVariant::for_context`]'s rule.
    pub fn for_op(ctx: &GpuContext, op: &Matmul, types: MatmulTypes) -> Result<Self> {
        let fixed = Self::for_context(ctx, op);
        if ctx.kernels.matmul.is_some() {
            return Ok(fixed);
        }
        let candidates: Vec<_> = Self::ALL
            .into_iter()
            .filter(|v| *v != Self::K4 || op.fits_k4())
            .map(|v| (v.name(), v))
            .collect();
        ctx.tuner
            .choose("matmul", &op.key(types), &candidates, fixed, |v, best| {
                time_variant(ctx, op, v, types, best)
            })
    }
}

/// Milliseconds of one run of `variant` on `op` (scratch operands, no bias or residual; on a
/// CPU adapter only as many rows as [`candidates::CPU_TUNE_FLOPS`] needs).
fn time_variant(
    ctx: &GpuContext,
    op: &Matmul,
    variant: MatmulVariant,
    types: MatmulTypes,
    best_so_far: f64,
) -> Result<f64> {
    let mut op = *op;
    if ctx.is_cpu() {
        let per_row = (op.flops() / op.m as u64).max(1);
        op.m =
            op.m.min(candidates::CPU_TUNE_FLOPS.div_ceil(per_row) as usize)
                .max(1);
    }
    let op = &op;
    let scratch = |label: &str, elements: usize, p: Precision| {
        candidates::scratch(ctx, label, (elements * p.bytes()) as u64)
    };
    let a = scratch("tune matmul A", op.extent(&op.a, op.m, op.k), types.a);
    let b = scratch("tune matmul B", op.extent(&op.b, op.k, op.n), types.b);
    let out = scratch("tune matmul out", op.extent(&op.c, op.m, op.n), types.c);
    let bufs = MatmulBuffers {
        a: &a,
        b: &b,
        bias: None,
        residual: None,
        out: &out,
    };
    let d = matmul_typed(ctx, op, &bufs, variant, types)?;
    candidates::time_dispatch(ctx, &d, candidates::runs_for(ctx), best_so_far)
}

impl Matmul {
    /// The tuning key: sizes, operand layouts and types (what can change the fastest variant).
    pub fn key(&self, t: MatmulTypes) -> String {
        let layout = |s: &Strides| match (s.row, s.col) {
            (_, 1) => "rows",
            (1, _) => "cols",
            _ => "strided",
        };
        format!(
            "z{} m{} n{} k{} a {} b {}{} {}/{}/{}",
            self.batch,
            self.m,
            self.n,
            self.k,
            layout(&self.a),
            layout(&self.b),
            if self.fits_k4() { " k4-aligned" } else { "" },
            t.a,
            t.b,
            t.c
        )
    }

    /// Whether version 2 applies: unit k strides and every other stride, offset and K a
    /// multiple of 4 (so that vec4 loads are aligned).
    pub fn fits_k4(&self) -> bool {
        let a = &self.a;
        let b = &self.b;
        a.col == 1
            && b.row == 1
            && [
                self.k, a.row, a.outer, a.inner, a.offset, b.col, b.outer, b.inner, b.offset,
            ]
            .iter()
            .all(|v| v % 4 == 0)
    }
}

pub fn spec_for(variant: MatmulVariant) -> KernelSpec {
    spec_typed(variant, MatmulTypes::F32)
}

/// The pipeline of `variant` for operands stored as `types`.
pub fn spec_typed(variant: MatmulVariant, types: MatmulTypes) -> KernelSpec {
    let (file, name, entry) = match variant {
        MatmulVariant::Strided => (SOURCE, "linear", "matmul_reg4x4"),
        MatmulVariant::Tiled => (SOURCE, "linear", "matmul_tiled"),
        MatmulVariant::K4 => (SOURCE_K4, "linear_k4", "matmul_k4"),
    };
    let (shader, source) = specialized(file, name, types);
    KernelSpec {
        shader,
        source,
        entry,
        ..spec()
    }
}

pub fn spec() -> KernelSpec {
    KernelSpec {
        shader: "linear",
        source: SOURCE,
        entry: "matmul_reg4x4",
        bindings: vec![
            Binding::Uniform,          // params
            Binding::StorageRead,      // A
            Binding::StorageRead,      // B
            Binding::StorageRead,      // bias
            Binding::StorageRead,      // residual
            Binding::StorageReadWrite, // out
        ],
    }
}

/// Operand buffers of one product. Absent bias/residual are bound to a small placeholder.
pub struct MatmulBuffers<'a> {
    pub a: &'a wgpu::Buffer,
    pub b: &'a wgpu::Buffer,
    pub bias: Option<&'a wgpu::Buffer>,
    pub residual: Option<&'a wgpu::Buffer>,
    pub out: &'a wgpu::Buffer,
}

fn check_len(what: &str, buffer: &wgpu::Buffer, elements: usize, p: Precision) -> Result<()> {
    ensure!(
        buffer.size() >= (elements * p.bytes()) as u64,
        "matmul: {what} holds {} bytes, needs {elements} {p}",
        buffer.size(),
    );
    Ok(())
}

/// One dispatch for `op` with the fixed variant for the adapter (see
/// [`MatmulVariant::for_context`]; for products run once, like the time embedding, where
/// tuning would cost more than it saves). `out` must not alias any input.
pub fn matmul(ctx: &GpuContext, op: &Matmul, bufs: &MatmulBuffers<'_>) -> Result<Dispatch> {
    matmul_with(ctx, op, bufs, MatmulVariant::for_context(ctx, op))
}

/// A product run every step, with operands stored as `types` and the tuned variant
/// ([`MatmulVariant::for_op`]).
pub fn matmul_as(
    ctx: &GpuContext,
    op: &Matmul,
    bufs: &MatmulBuffers<'_>,
    types: MatmulTypes,
) -> Result<Dispatch> {
    let variant = MatmulVariant::for_op(ctx, op, types)?;
    matmul_typed(ctx, op, bufs, variant, types)
}

/// One dispatch for `op` with a chosen variant (an error if it does not apply).
pub fn matmul_with(
    ctx: &GpuContext,
    op: &Matmul,
    bufs: &MatmulBuffers<'_>,
    variant: MatmulVariant,
) -> Result<Dispatch> {
    matmul_typed(ctx, op, bufs, variant, MatmulTypes::F32)
}

/// One dispatch for `op` with a chosen variant and operand types. Bias stays f32.
pub fn matmul_typed(
    ctx: &GpuContext,
    op: &Matmul,
    bufs: &MatmulBuffers<'_>,
    variant: MatmulVariant,
    types: MatmulTypes,
) -> Result<Dispatch> {
    op.validate()?;
    ensure!(
        variant != MatmulVariant::K4 || op.fits_k4(),
        "matmul: the vec4-along-k variant does not apply to {op:?}"
    );
    check_len("A", bufs.a, op.extent(&op.a, op.m, op.k), types.a)?;
    check_len("B", bufs.b, op.extent(&op.b, op.k, op.n), types.b)?;
    check_len("out", bufs.out, op.extent(&op.c, op.m, op.n), types.c)?;
    if let Some(bias) = bufs.bias {
        let n = if op.bias_per_row { op.m } else { op.n };
        check_len("bias", bias, n, Precision::F32)?;
    }
    if let Some(res) = bufs.residual {
        check_len("residual", res, op.extent(&op.c, op.m, op.n), types.c)?;
    }
    let mut flags = 0;
    flags |= if bufs.bias.is_some() { HAS_BIAS } else { 0 };
    flags |= if bufs.residual.is_some() {
        HAS_RESIDUAL
    } else {
        0
    };
    flags |= if op.silu_in { SILU_IN } else { 0 };
    flags |= if op.silu_out { SILU_OUT } else { 0 };
    flags |= if op.bias_per_row { BIAS_PER_ROW } else { 0 };
    let u = |v: usize| v as u32;
    let params = Params {
        m: u(op.m),
        n: u(op.n),
        k: u(op.k),
        inner_count: u(op.inner_count),
        a_m: u(op.a.row),
        a_k: u(op.a.col),
        a_outer: u(op.a.outer),
        a_inner: u(op.a.inner),
        b_k: u(op.b.row),
        b_n: u(op.b.col),
        b_outer: u(op.b.outer),
        b_inner: u(op.b.inner),
        c_m: u(op.c.row),
        c_outer: u(op.c.outer),
        c_inner: u(op.c.inner),
        alpha: op.alpha,
        flags,
        a_base: u(op.a.offset),
        b_base: u(op.b.offset),
        c_base: u(op.c.offset),
        out_scale: op.out_scale,
        _pad: [0; 3],
    };
    let kernel = ctx.kernel(&spec_typed(variant, types))?;
    let uniform = ctx.uniform("matmul params", &params);
    let placeholder = ctx.storage("matmul placeholder", 16);
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[
            (&uniform).into(),
            bufs.a.into(),
            bufs.b.into(),
            bufs.bias.unwrap_or(&placeholder).into(),
            bufs.residual.unwrap_or(&placeholder).into(),
            bufs.out.into(),
        ],
    )?;
    let groups = [u(op.n).div_ceil(TILE), u(op.m).div_ceil(TILE), u(op.batch)];
    let max_dim = ctx.limits.max_compute_workgroups_per_dimension;
    ensure!(
        groups.iter().all(|&g| g <= max_dim),
        "matmul: grid {groups:?} exceeds {max_dim} workgroups per dimension"
    );
    Ok(Dispatch {
        label: format!(
            "matmul[{variant:?}] {}x{}x{} x{}",
            op.m, op.n, op.k, op.batch
        ),
        kernel,
        bind_group,
        workgroups: groups,
        dynamic_strides: vec![],
        flops: op.flops(),
        bytes: op.bytes_as(types),
    })
}
