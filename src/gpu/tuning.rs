//! The tuning pass, run before a plan is built: for each (kernel, shape) the plan's dry run
//! asked for ([`Job`]), choose a variant from the cache, by the fixed rule, or by trying every
//! candidate that applies on this adapter. Trying validates before it times (as llm.c's
//! `dev/cuda` drivers do): each candidate's output on the job's tuning input is compared once
//! with the fixed variant's, and a candidate outside the kernel tolerance is rejected with a
//! warning that names it (and the rejection is cached) instead of being timed.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use super::candidates;
use super::choices::{Choices, FixedRule, Job};
use super::context::run_dispatches;
use super::kernel::Dispatch;
use super::kernels::attention::softmax_rows;
use super::kernels::conv2d::{conv2d, ConvIo, ConvShape, ConvWeights};
use super::kernels::group_norm::{group_norm, GroupNormIo, GroupNormScratch, GroupNormShape};
use super::kernels::linear::{encode, Matmul, MatmulTypes};
use super::precision::Precision;
use super::tensor::GpuTensor;
use super::tune::Trial;
use super::variants::{ConvVariant, MatmulVariant, Reduction};
use super::GpuContext;
use crate::Tensor;

/// How far (rel. L2) a candidate's output may be from the fixed variant's on the tuning input:
/// variants differ only in summation order (measured ≤ 1e-6 in f32; f16 storage rounds each
/// output to 11 bits).
pub const TOLERANCE_F32: f64 = 1e-5;
pub const TOLERANCE_F16: f64 = 3e-3;

/// The name of the deliberately wrong conv candidate that [`super::KernelChoice`]'s
/// `inject_faulty_conv` adds (for the test that shows validation rejects it): the fixed
/// variant's dispatch with no workgroups, so it is the fastest and writes nothing.
pub const FAULTY: &str = "faulty";

/// Chooses a variant for every job (see the module docs) and returns the choices to build
/// the plan with.
pub fn decide(ctx: &GpuContext, rule: FixedRule, jobs: &[Job]) -> Result<Choices> {
    // The tuning inputs are dropped before the plan is built: not the plan's memory.
    let created = ctx.bytes_created();
    let choices = decide_each(ctx, rule, jobs);
    ctx.uncount_created(ctx.bytes_created() - created);
    choices
}

fn decide_each(ctx: &GpuContext, rule: FixedRule, jobs: &[Job]) -> Result<Choices> {
    let mut decided = HashMap::new();
    for job in jobs {
        let names = candidates_for(ctx, &rule, job);
        let pairs: Vec<(&'static str, &'static str)> = names.iter().map(|&n| (n, n)).collect();
        let fixed = rule.variant(job);
        let bench = OnceCell::new();
        let reference = RefCell::new(None);
        let name = ctx
            .tuner
            .choose(job.kernel(), &job.key(), &pairs, fixed, |name, best| {
                let bench = match bench.get() {
                    Some(b) => b,
                    None => {
                        let b = Bench::new(ctx, job).context("tuning input")?;
                        bench.get_or_init(|| b)
                    }
                };
                trial(ctx, bench, &reference, (name, fixed), best)
            })?;
        if name == FAULTY {
            bail!(
                "tuning chose the injected faulty variant for {} {}",
                job.kernel(),
                job.key()
            );
        }
        decided.insert((job.kernel(), job.key()), name);
    }
    Ok(Choices::decided(rule, decided))
}

/// The variants of `job` worth trying on this adapter: a forced variant alone; on CPU adapters
/// only the barrier-free kernels (the workgroup-tiled ones measured 1.3–56× slower on lavapipe,
/// and compiling them is most of a cold first run's tuning cost); subgroup reductions only where
/// the context uses subgroups.
fn candidates_for(ctx: &GpuContext, rule: &FixedRule, job: &Job) -> Vec<&'static str> {
    let cpu = ctx.is_cpu();
    let mut names: Vec<&'static str> = match job {
        Job::Conv { .. } if rule.forced.conv.is_some() => vec![rule.variant(job)],
        Job::Conv { .. } => ConvVariant::ALL
            .into_iter()
            .filter(|v| !cpu || *v == ConvVariant::Register)
            .map(ConvVariant::name)
            .collect(),
        Job::Matmul { .. } if rule.forced.matmul.is_some() => vec![rule.variant(job)],
        Job::Matmul { op, .. } => MatmulVariant::ALL
            .into_iter()
            .filter(|v| *v != MatmulVariant::K4 || op.fits_k4())
            .filter(|v| !cpu || *v != MatmulVariant::Tiled)
            .map(MatmulVariant::name)
            .collect(),
        Job::GroupNorm(_) | Job::Softmax { .. } if rule.subgroups => {
            Reduction::ALL.map(Reduction::name).to_vec()
        }
        Job::GroupNorm(_) | Job::Softmax { .. } => vec![Reduction::Serial.name()],
    };
    if rule.forced.inject_faulty_conv && matches!(job, Job::Conv { .. }) {
        names.push(FAULTY);
    }
    names
}

/// Validates candidate `name` against the fixed variant's output (which `reference` holds once
/// the fixed variant has run: it runs first), then times it.
fn trial(
    ctx: &GpuContext,
    bench: &Bench,
    reference: &RefCell<Option<Vec<f32>>>,
    (name, fixed): (&'static str, &'static str),
    best_so_far: f64,
) -> Result<Trial> {
    let dispatches = bench.dispatches(ctx, name, fixed)?;
    bench.reset(ctx);
    run_dispatches(ctx, &dispatches, 0)?;
    let out = ctx.read_as(bench.out.buffer(), bench.out.numel(), bench.out.precision())?;
    if name == fixed {
        *reference.borrow_mut() = Some(out);
    } else {
        let reference = reference.borrow();
        let want = reference
            .as_ref()
            .context("the fixed variant runs before the candidates")?;
        let err = rel_l2(&out, want);
        let tolerance = match bench.out.precision() {
            Precision::F32 => TOLERANCE_F32,
            _ => TOLERANCE_F16,
        };
        // NaN (an element only one of them wrote) fails too.
        if err.is_nan() || err > tolerance {
            return Ok(Trial::Rejected(format!(
                "rel. L2 {err:.2e} (tolerance {tolerance:.0e})"
            )));
        }
    }
    let ms = candidates::time_dispatch(
        ctx,
        &dispatches[bench.timed],
        candidates::runs_for(ctx),
        best_so_far,
    )?;
    Ok(Trial::Time(ms))
}

/// ‖a − b‖ / ‖b‖ over the elements either wrote: outputs start as NaN, so an element left
/// NaN by both (a gap in a strided output) is skipped, and one left NaN (or made non-finite) by
/// only one gives NaN, as do different lengths.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        if x.is_nan() && y.is_nan() {
            continue;
        }
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Fixed pseudo-random values in [-scale, scale).
fn pseudo_random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// One job's tuning input: its operands filled with fixed values, and what to run.
struct Bench {
    kind: BenchKind,
    out: GpuTensor,
    /// An input that the kernel overwrites (softmax works in place), restored before each run.
    restore: Option<Vec<f32>>,
    /// Which of the job's dispatches is timed (the group norm's combine; else the only one).
    timed: usize,
}

enum BenchKind {
    Conv {
        shape: ConvShape,
        weights: ConvWeights,
        x_a: GpuTensor,
        x_b: Option<GpuTensor>,
    },
    Matmul {
        op: Matmul,
        types: MatmulTypes,
        a: wgpu::Buffer,
        b: wgpu::Buffer,
    },
    GroupNorm {
        shape: GroupNormShape,
        scratch: GroupNormScratch,
        x: GpuTensor,
        gamma: GpuTensor,
        beta: GpuTensor,
    },
    Softmax,
}

impl Bench {
    fn new(ctx: &GpuContext, job: &Job) -> Result<Self> {
        match job {
            Job::Conv { shape, precision } => Self::conv(ctx, *shape, *precision),
            Job::Matmul { op, types, .. } => Self::matmul(ctx, *op, *types),
            Job::GroupNorm(shape) => Self::group_norm(ctx, *shape),
            Job::Softmax { rows, len, .. } => {
                let data = pseudo_random(rows * len, 4, 4.0);
                let out = ctx.tensor_from("tune softmax", &data, &[*rows, *len], Precision::F32)?;
                Ok(Self {
                    kind: BenchKind::Softmax,
                    out,
                    restore: Some(data),
                    timed: 0,
                })
            }
        }
    }

    fn conv(ctx: &GpuContext, mut shape: ConvShape, p: Precision) -> Result<Self> {
        // On a CPU adapter the rate does not depend on the problem size once every core has
        // work: try the candidates on just enough images.
        if ctx.is_cpu() {
            let per_image = (shape.flops() / shape.batch.max(1) as u64).max(1);
            let images = candidates::CPU_TUNE_FLOPS.div_ceil(per_image) as usize;
            shape.batch = shape.batch.min(images).max(1);
        }
        let (b, h, w) = (shape.batch, shape.src_h, shape.src_w);
        let k = shape.k();
        let weight = Tensor::new(
            vec![shape.cout, shape.cin(), shape.kh, shape.kw],
            pseudo_random(shape.cout * k, 1, 1.0 / (k as f32).sqrt()),
        )?;
        let bias = pseudo_random(shape.cout, 2, 0.1);
        let weights = ConvWeights::upload_as(ctx, "tune conv", &weight, Some(&bias), p)?;
        let input = |label: &str, c: usize, seed: u64| {
            ctx.tensor_from(
                label,
                &pseudo_random(b * h * w * c, seed, 1.0),
                &[b, h, w, c],
                p,
            )
        };
        let x_a = input("tune conv x_a", shape.c1, 3)?;
        let x_b = match shape.c2 {
            0 => None,
            c2 => Some(input("tune conv x_b", c2, 5)?),
        };
        let (oh, ow) = shape.out_hw()?;
        let out = ctx.tensor("tune conv out", &[b, oh, ow, shape.cout], p);
        Ok(Self {
            kind: BenchKind::Conv {
                shape,
                weights,
                x_a,
                x_b,
            },
            out,
            restore: None,
            timed: 0,
        })
    }

    fn matmul(ctx: &GpuContext, mut op: Matmul, types: MatmulTypes) -> Result<Self> {
        if ctx.is_cpu() {
            let per_row = (op.flops() / op.m as u64).max(1);
            op.m =
                op.m.min(candidates::CPU_TUNE_FLOPS.div_ceil(per_row) as usize)
                    .max(1);
        }
        let operand = |label: &str, elements: usize, p: Precision, seed: u64| {
            ctx.upload_as(label, &pseudo_random(elements, seed, 1.0), p)
        };
        let a = operand("tune matmul A", op.extent(&op.a, op.m, op.k), types.a, 6);
        let b = operand("tune matmul B", op.extent(&op.b, op.k, op.n), types.b, 7);
        let out_len = op.extent(&op.c, op.m, op.n);
        let out = ctx.tensor("tune matmul out", &[out_len], types.c);
        Ok(Self {
            kind: BenchKind::Matmul { op, types, a, b },
            out,
            restore: None,
            timed: 0,
        })
    }

    fn group_norm(ctx: &GpuContext, shape: GroupNormShape) -> Result<Self> {
        let p = shape.precision;
        let dims = [shape.batch, shape.hw, shape.channels];
        let x = ctx.tensor_from("tune gn x", &pseudo_random(shape.numel(), 8, 2.0), &dims, p)?;
        let c = [shape.channels];
        let gamma = ctx.tensor_from(
            "tune gn gamma",
            &pseudo_random(c[0], 9, 1.0),
            &c,
            Precision::F32,
        )?;
        let beta = ctx.tensor_from(
            "tune gn beta",
            &pseudo_random(c[0], 10, 1.0),
            &c,
            Precision::F32,
        )?;
        Ok(Self {
            kind: BenchKind::GroupNorm {
                shape,
                scratch: GroupNormScratch::new(ctx, &[shape]),
                x,
                gamma,
                beta,
            },
            out: ctx.tensor("tune gn y", &dims, p),
            restore: None,
            timed: 1,
        })
    }

    /// Poisons the output with NaN (so that an element a candidate does not write is caught),
    /// or restores the input of a kernel that works in place.
    fn reset(&self, ctx: &GpuContext) {
        let p = self.out.precision();
        let mut bytes = match &self.restore {
            Some(data) => p.encode(data),
            None => p.encode(&vec![f32::NAN; self.out.numel()]),
        };
        // Copies move whole words; the buffer is padded to them.
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        ctx.queue.write_buffer(self.out.buffer(), 0, &bytes);
    }

    /// The dispatches of variant `name` (`fixed` is the fixed rule's, which [`FAULTY`] breaks).
    fn dispatches(&self, ctx: &GpuContext, name: &str, fixed: &str) -> Result<Vec<Dispatch>> {
        let unused = ctx.placeholder();
        Ok(match &self.kind {
            BenchKind::Conv {
                shape,
                weights,
                x_a,
                x_b,
            } => {
                let io = ConvIo {
                    x_a,
                    x_b: x_b.as_ref(),
                    chan_add: None,
                    residual: None,
                    residual_resample: Default::default(),
                    image_div: None,
                    out: &self.out,
                    out_scale: 1.0,
                };
                let variant = ConvVariant::parse(if name == FAULTY { fixed } else { name })?;
                let mut d = conv2d(ctx, variant, "tune conv2d", shape, weights, &io)?;
                if name == FAULTY {
                    d.workgroups = [0, 0, 0];
                }
                vec![d]
            }
            BenchKind::Matmul { op, types, a, b } => {
                let buffers = [a, b, unused, unused, self.out.buffer()];
                let variant = MatmulVariant::parse(name)?;
                vec![encode(ctx, op, *types, variant, buffers, false, false)?]
            }
            BenchKind::GroupNorm {
                shape,
                scratch,
                x,
                gamma,
                beta,
            } => {
                let io = GroupNormIo {
                    x,
                    gamma,
                    beta,
                    y: &self.out,
                };
                group_norm(ctx, shape, Reduction::parse(name)?, scratch, &io)?
            }
            BenchKind::Softmax => vec![softmax_rows(ctx, Reduction::parse(name)?, &self.out)?],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_l2_rejects_what_is_not_finite_or_not_alike() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!(rel_l2(&[f32::NAN], &[1.0]).is_nan());
        assert_eq!(rel_l2(&[f32::NAN, 1.0], &[f32::NAN, 1.0]), 0.0);
        assert!(rel_l2(&[1.0], &[1.0, 2.0]).is_nan());
        assert!((rel_l2(&[1.1], &[1.0]) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn pseudo_random_values_are_fixed_and_in_range() {
        let a = pseudo_random(1000, 3, 2.0);
        assert_eq!(a, pseudo_random(1000, 3, 2.0));
        assert!(a.iter().all(|v| (-2.0..2.0).contains(v)));
        assert!(a.iter().any(|v| *v < -1.0) && a.iter().any(|v| *v > 1.0));
    }
}
