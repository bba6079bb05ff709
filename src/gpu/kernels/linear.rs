//! Batched strided matrix products with a fused epilogue (`shaders/linear.wgsl`): linear layers
//! (`y = x Wᵀ + b`, optional SiLU on the input and/or output, optional residual add) and the
//! matrix products inside attention. The reference twin is `cpu::ops::linear`.

use anyhow::{ensure, Result};

use crate::gpu::kernel::{Binding, Dispatch, KernelSpec};
use crate::gpu::precision::{specialize, Precision};
use crate::gpu::tensor::GpuTensor;
use crate::gpu::GpuContext;

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
    /// Highest element index (exclusive) an operand with `s` touches for an R×C matrix.
    pub(crate) fn extent(&self, s: &Strides, rows: usize, cols: usize) -> usize {
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
    /// The context's fixed variant for `op` ([`MatmulVariant::fixed`]).
    pub fn for_context(ctx: &GpuContext, op: &Matmul) -> Self {
        Self::fixed(ctx.kernels.matmul, ctx.is_cpu(), op)
    }

    /// A forced variant (K4 falls back to Strided where it does not apply), else on CPU
    /// adapters (lavapipe, where barriers are slow) the barrier-free kernels, and the
    /// workgroup-memory one elsewhere.
    pub fn fixed(forced: Option<Self>, cpu: bool, op: &Matmul) -> Self {
        match forced {
            Some(Self::K4) if !op.fits_k4() => Self::Strided,
            Some(v) => v,
            None if !cpu => Self::Tiled,
            None if op.fits_k4() => Self::K4,
            None => Self::Strided,
        }
    }
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

/// The scalar part of a product's epilogue (see [`Matmul`]).
#[derive(Clone, Copy, Debug)]
pub struct MatmulOptions {
    pub alpha: f32,
    pub out_scale: f32,
    pub silu_in: bool,
    pub silu_out: bool,
    /// The bias is indexed by the output row (length M) instead of the column.
    pub bias_per_row: bool,
}

impl Default for MatmulOptions {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            out_scale: 1.0,
            silu_in: false,
            silu_out: false,
            bias_per_row: false,
        }
    }
}

/// The operands of one product as tensors: `a` `[.., M, K]`, `b` `[.., K, N]`, `out` (and
/// `residual`, laid out like `out`) `[.., M, N]`, with up to two leading batch dimensions
/// (outer, inner); an operand with a batch dimension of 1 (or fewer dimensions) is shared by
/// every product. Views are taken as they are (a transposed weight, the heads of q/k/v).
/// `bias` is a contiguous f32 vector of N (or M with `bias_per_row`).
pub struct MatmulArgs<'a> {
    pub a: &'a GpuTensor,
    pub b: &'a GpuTensor,
    pub bias: Option<&'a GpuTensor>,
    pub residual: Option<&'a GpuTensor>,
    pub out: &'a GpuTensor,
}

/// A tensor as `[outer, inner, rows, cols]` sizes and strides (missing batch dimensions and
/// batch dimensions of size 1 get stride 0, so they broadcast).
fn as4(what: &str, t: &GpuTensor) -> Result<([usize; 4], Strides)> {
    ensure!(
        (2..=4).contains(&t.rank()),
        "matmul: {what} must have 2 to 4 dimensions, got {:?}",
        t.shape()
    );
    let pad = 4 - t.rank();
    let mut shape = [1; 4];
    let mut strides = [0; 4];
    for i in 0..t.rank() {
        shape[pad + i] = t.shape()[i];
        let batch_dim = pad + i < 2;
        strides[pad + i] = if batch_dim && t.shape()[i] == 1 {
            0
        } else {
            t.strides()[i]
        };
    }
    let s = Strides {
        offset: t.offset(),
        outer: strides[0],
        inner: strides[1],
        row: strides[2],
        col: strides[3],
    };
    Ok((shape, s))
}

impl Matmul {
    /// The product `args` describe, with operand types from the tensors' precisions.
    pub fn of(args: &MatmulArgs<'_>, opts: MatmulOptions) -> Result<(Self, MatmulTypes)> {
        let (cs, c) = as4("out", args.out)?;
        let (as_, a) = as4("A", args.a)?;
        let (bs, b) = as4("B", args.b)?;
        let [outer, inner, m, n] = cs;
        let k = as_[3];
        ensure!(
            as_[2] == m && bs[2] == k && bs[3] == n,
            "matmul: A {:?} · B {:?} does not give out {:?}",
            args.a.shape(),
            args.b.shape(),
            args.out.shape()
        );
        for (what, s) in [("A", as_), ("B", bs)] {
            ensure!(
                (s[0] == 1 || s[0] == outer) && (s[1] == 1 || s[1] == inner),
                "matmul: {what} batch dimensions {:?} do not broadcast to out's {:?}",
                &s[..2],
                &cs[..2]
            );
        }
        // The kernel spans the outer batch with the inner one folded in: z = o · inner + i.
        let op = Self {
            m,
            n,
            k,
            batch: outer * inner,
            inner_count: inner,
            a,
            b,
            c,
            alpha: opts.alpha,
            out_scale: opts.out_scale,
            silu_in: opts.silu_in,
            silu_out: opts.silu_out,
            bias_per_row: opts.bias_per_row,
        };
        if let Some(r) = args.residual {
            ensure!(
                r.shape() == args.out.shape()
                    && r.strides() == args.out.strides()
                    && r.offset() == args.out.offset()
                    && r.precision() == args.out.precision(),
                "matmul: the residual {:?} must be laid out like out {:?}",
                r.shape(),
                args.out.shape()
            );
        }
        if let Some(bias) = args.bias {
            let len = if opts.bias_per_row { m } else { n };
            bias.dense("matmul bias", &[len], Precision::F32)?;
        }
        let types = MatmulTypes {
            a: args.a.precision(),
            b: args.b.precision(),
            c: args.out.precision(),
        };
        Ok((op, types))
    }
}

/// One dispatch computing `args.out` with `variant` (an error if it does not apply). `out`
/// must not alias any input.
pub fn matmul(
    ctx: &GpuContext,
    variant: MatmulVariant,
    args: &MatmulArgs<'_>,
    opts: MatmulOptions,
) -> Result<Dispatch> {
    let (op, types) = Matmul::of(args, opts)?;
    let unused = ctx.placeholder();
    encode(
        ctx,
        &op,
        types,
        variant,
        [
            args.a.buffer(),
            args.b.buffer(),
            args.bias.map_or(unused, |t| t.buffer()),
            args.residual.map_or(unused, |t| t.buffer()),
            args.out.buffer(),
        ],
        args.bias.is_some(),
        args.residual.is_some(),
    )
}

/// [`matmul`] with the adapter's fixed variant ([`MatmulVariant::for_context`]): for products
/// run once, like the time embedding, where tuning would cost more than it saves.
pub fn matmul_fixed(
    ctx: &GpuContext,
    args: &MatmulArgs<'_>,
    opts: MatmulOptions,
) -> Result<Dispatch> {
    let (op, _) = Matmul::of(args, opts)?;
    matmul(ctx, MatmulVariant::for_context(ctx, &op), args, opts)
}

/// The dispatch for `op` over (A, B, bias, residual, out) buffers that the caller checked hold
/// the op's extents (tensors, or the tuner's scratch). Bias stays f32.
pub(crate) fn encode(
    ctx: &GpuContext,
    op: &Matmul,
    types: MatmulTypes,
    variant: MatmulVariant,
    [a, b, bias, residual, out]: [&wgpu::Buffer; 5],
    has_bias: bool,
    has_residual: bool,
) -> Result<Dispatch> {
    op.validate()?;
    ensure!(
        variant != MatmulVariant::K4 || op.fits_k4(),
        "matmul: the vec4-along-k variant does not apply to {op:?}"
    );
    let mut flags = 0;
    flags |= if has_bias { HAS_BIAS } else { 0 };
    flags |= if has_residual { HAS_RESIDUAL } else { 0 };
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
    let bind_group = kernel.bind_group(
        &ctx.device,
        &[
            (&uniform).into(),
            a.into(),
            b.into(),
            bias.into(),
            residual.into(),
            out.into(),
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
