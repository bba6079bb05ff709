//! The kernel variants a plan is built with, as values.
//!
//! Building a plan asks a [`Choices`] which variant runs each (kernel, shape). A first build
//! (the plan's dry run) asks [`Choices::fixed`]: it answers with the fixed rule and records every
//! distinct question as a [`Job`]. The tuning pass ([`super::tuning`]) answers those jobs from
//! the cache or by validating and timing the candidates, and the real build asks the resulting
//! [`Choices`]. No kernel wrapper chooses anything itself.
//!
//! A variant is chosen per image shape, never per batch: every batch of one model on one adapter
//! (and one tuning cache) runs the same variants, so an image is the same bits whatever batch it
//! is made in (two variants sum in different orders, so they may differ in the last bits).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use super::context::GpuContext;
use super::kernels::conv2d::ConvShape;
use super::kernels::group_norm::GroupNormShape;
use super::kernels::linear::{Matmul, MatmulTypes};
use super::precision::Precision;
use super::variants::{ConvVariant, KernelChoice, MatmulVariant, Reduction};

/// One (kernel, shape) a plan needs a variant for.
#[derive(Clone, Debug)]
pub enum Job {
    Conv {
        shape: ConvShape,
        precision: Precision,
    },
    /// A product over `images` images (the factor of its batch or rows that counts them).
    Matmul {
        op: Matmul,
        types: MatmulTypes,
        images: usize,
    },
    /// The group norm's statistics combine.
    GroupNorm(GroupNormShape),
    /// Softmax over `rows` rows of `len` f32, for `images` images.
    Softmax {
        rows: usize,
        len: usize,
        images: usize,
    },
}

impl Job {
    /// The kernel family, as the tuning cache names it.
    pub fn kernel(&self) -> &'static str {
        match self {
            Self::Conv { .. } => "conv2d",
            Self::Matmul { .. } => "matmul",
            Self::GroupNorm(_) => "group_norm_combine",
            Self::Softmax { .. } => "softmax",
        }
    }

    /// Everything about one image's shape that can change which variant is fastest (the batch
    /// is left out: see the module docs).
    pub fn key(&self) -> String {
        match self {
            Self::Conv { shape, precision } => shape.key(*precision),
            Self::Matmul { op, types, images } => per_image(op, *images).key(*types),
            Self::GroupNorm(s) => {
                format!("hw{} c{} g{} {}", s.hw, s.channels, s.groups, s.precision)
            }
            Self::Softmax { rows, len, images } => {
                format!("rows{} len{len}", rows / (*images).max(1))
            }
        }
    }

    fn id(&self) -> JobId {
        (self.kernel(), self.key())
    }
}

/// (kernel, shape key): what identifies a job.
pub type JobId = (&'static str, String);

/// The variant per (kernel, shape) that plans are built with.
pub struct Choices {
    rule: FixedRule,
    /// Variant names by (kernel, shape key), from the tuning pass.
    decided: HashMap<JobId, &'static str>,
    /// Questions answered by the fixed rule, in first-asked order (the tuning pass's jobs).
    asked: RefCell<(Vec<Job>, HashSet<JobId>)>,
}

/// What a variant is when nothing was tuned: a forced variant, else the device type's rule.
#[derive(Clone, Copy, Debug)]
pub struct FixedRule {
    pub forced: KernelChoice,
    pub cpu: bool,
    pub subgroups: bool,
}

impl FixedRule {
    pub fn of(ctx: &GpuContext) -> Self {
        Self {
            forced: ctx.kernels,
            cpu: ctx.is_cpu(),
            subgroups: ctx.uses_subgroups(),
        }
    }

    /// The fixed rule's variant for `job`, by name.
    pub fn variant(&self, job: &Job) -> &'static str {
        match job {
            Job::Conv { .. } => self
                .forced
                .conv
                .unwrap_or(if self.cpu {
                    ConvVariant::Register
                } else {
                    ConvVariant::Tiled
                })
                .name(),
            Job::Matmul { op, .. } => MatmulVariant::fixed(self.forced.matmul, self.cpu, op).name(),
            Job::GroupNorm(_) | Job::Softmax { .. } => self.reduction().name(),
        }
    }

    fn reduction(&self) -> Reduction {
        if self.subgroups {
            Reduction::Subgroup
        } else {
            Reduction::Serial
        }
    }
}

impl Choices {
    /// Every variant by the fixed rule; the questions asked are recorded ([`Choices::jobs`]).
    pub fn fixed(ctx: &GpuContext) -> Self {
        Self::decided(FixedRule::of(ctx), HashMap::new())
    }

    /// The tuning pass's answers; anything else by the fixed rule.
    pub fn decided(rule: FixedRule, decided: HashMap<JobId, &'static str>) -> Self {
        Self {
            rule,
            decided,
            asked: RefCell::new((Vec::new(), HashSet::new())),
        }
    }

    /// The distinct jobs the fixed rule answered, in the order they were asked.
    pub fn jobs(&self) -> Vec<Job> {
        self.asked.borrow().0.clone()
    }

    fn name_for(&self, job: Job) -> &'static str {
        let id = job.id();
        if let Some(&name) = self.decided.get(&id) {
            return name;
        }
        let name = self.rule.variant(&job);
        let mut asked = self.asked.borrow_mut();
        if asked.1.insert(id) {
            asked.0.push(job);
        }
        name
    }

    pub fn conv(&self, shape: &ConvShape, precision: Precision) -> ConvVariant {
        let name = self.name_for(Job::Conv {
            shape: *shape,
            precision,
        });
        ConvVariant::parse(name).expect("conv variant names come from ConvVariant::name")
    }

    /// The variant of a product over `images` images.
    pub fn matmul(&self, op: &Matmul, types: MatmulTypes, images: usize) -> MatmulVariant {
        let name = self.name_for(Job::Matmul {
            op: *op,
            types,
            images,
        });
        MatmulVariant::parse(name).expect("matmul variant names come from MatmulVariant::name")
    }

    pub fn group_norm(&self, shape: &GroupNormShape) -> Reduction {
        Reduction::parse(self.name_for(Job::GroupNorm(*shape)))
            .expect("reduction names come from Reduction::name")
    }

    /// The variant of a softmax over `rows` rows of `len` for `images` images.
    pub fn softmax(&self, rows: usize, len: usize, images: usize) -> Reduction {
        Reduction::parse(self.name_for(Job::Softmax { rows, len, images }))
            .expect("reduction names come from Reduction::name")
    }
}

/// `op` for one of its `images` images: its batch of products divided by the images or, for a
/// product over the rows of every image (a linear layer), its rows.
fn per_image(op: &Matmul, images: usize) -> Matmul {
    let mut one = *op;
    if images > 1 && op.batch % images == 0 {
        one.batch = op.batch / images;
        one.inner_count = one.inner_count.clamp(1, one.batch);
    } else if images > 1 && op.m % images == 0 {
        one.m = op.m / images;
    }
    one
}
