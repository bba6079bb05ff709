//! One `ddim bench` invocation on one device: the sections asked for (GEMM ceiling, kernel
//! micro-benchmarks, whole run) gathered into one JSON document, plus the targets
//! evaluated from ratios measured in the same invocation.

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::gemm::{self, GemmSize, GemmSweep};
use super::kernels::{self, CaseResult};
use super::memory::{self, MemoryReport};
use super::report::{AdapterReport, BuildInfo, HostInfo, SCHEMA};
use super::run::{self, Repeats, RunResult};
use ddim_wgpu::gpu::choices::{FixedRule, Job};
use ddim_wgpu::gpu::kernels::attention::AttentionShape;
use ddim_wgpu::gpu::kernels::conv2d::Variant;
use ddim_wgpu::gpu::kernels::group_norm::GroupNormShape;
use ddim_wgpu::gpu::plan::{PlanOptions, StepForward};
use ddim_wgpu::gpu::precision::Precision;
use ddim_wgpu::gpu::profile::{Profiler, TimingSource};
use ddim_wgpu::gpu::sampler::{batch_capacity, RunUpdate};
use ddim_wgpu::gpu::tune::Choice;
use ddim_wgpu::gpu::tuning;
use ddim_wgpu::gpu::weights::attention_shape;
use ddim_wgpu::gpu::GpuContext;
use ddim_wgpu::model::unet::Op;
use ddim_wgpu::pipeline::Pipeline;
use ddim_wgpu::sampling::SampleSettings;

/// burn 0.22's WGSL conv2d on lavapipe at the [`kernels::burn_conv_shape`] (design.md).
pub const BURN_CONV_GFLOPS: f64 = 6.3;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Shown in the report: "bundled", "arch:cifar10", or the model directory.
    pub model_label: String,
    pub batch: usize,
    /// The sampler, its steps and options (eta 0).
    pub settings: SampleSettings,
    pub repeats: Repeats,
    /// Iterations of the per-dispatch profile (defaults to `repeats.iters`).
    pub kernel_iters: usize,
    pub gemm: bool,
    pub gemm_sizes: Vec<GemmSize>,
    pub kernels: bool,
    pub run: bool,
}

/// The model part of a report.
#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    pub source: String,
    /// Per image, [C, H, W].
    pub image: [usize; 3],
    pub params: u64,
    pub weights_bytes: u64,
    pub gflop_per_image: f64,
    /// At the benchmark's batch.
    pub gflop_per_forward: f64,
}

/// The settings part of a report.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// "gpu" or "cpu".
    pub device: &'static str,
    pub batch: usize,
    pub steps: usize,
    pub sampler: &'static str,
    pub eta: f64,
    /// Storage of weights and activations on the GPU: "f32" or "f16" (the CPU is always f32).
    pub precision: &'static str,
    pub warmup: usize,
    pub iters: usize,
    pub kernel_iters: usize,
}

/// One of the targets, checked against measurements from this invocation.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    pub name: &'static str,
    pub target: String,
    /// From wall-clock rates (the definition).
    pub measured: f64,
    pub met: bool,
    /// The same ratio from GFLOP per process CPU-second, where both rates have it: on a CPU
    /// adapter (lavapipe, llvmpipe) sharing a busy machine this is the robust comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_cpu_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met_cpu_time: Option<bool>,
}

impl TargetCheck {
    /// A "ratio ≥ threshold" target.
    fn at_least(
        name: &'static str,
        target: String,
        measured: f64,
        cpu: Option<f64>,
        threshold: f64,
    ) -> Self {
        Self {
            name,
            target,
            measured,
            met: measured >= threshold,
            measured_cpu_time: cpu,
            met_cpu_time: cpu.map(|c| c >= threshold),
        }
    }
}

/// A whole `ddim bench` report for one device (schema [`SCHEMA`]).
#[derive(Clone, Debug, Serialize)]
pub struct Document {
    pub schema: &'static str,
    pub build: BuildInfo,
    pub host: HostInfo,
    pub adapter: AdapterReport,
    pub settings: Settings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelReport>,
    /// Where per-kernel GPU times come from (GPU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timing: Option<TimingSource>,
    /// Best GEMM rate of our kernels (`--gemm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemm_gflops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemm: Option<GemmSweep>,
    /// Kernel micro-benchmarks at the model's shapes (`--kernels`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels: Option<Vec<CaseResult>>,
    /// Achieved GFLOP/s of the whole forward (the run section's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_gflops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunResult>,
    /// Which kernel variant each shape ran with, and how it was chosen (GPU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuning: Option<TuningReport>,
    /// The targets that this invocation measured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetCheck>,
}

/// The tuner's state after the measurements: mode, time spent timing, every choice.
#[derive(Clone, Debug, Serialize)]
pub struct TuningReport {
    pub mode: String,
    pub from_cache: bool,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    pub choices: Vec<Choice>,
}

impl TuningReport {
    pub fn of(ctx: &GpuContext) -> Self {
        let r = ctx.tuner.report();
        Self {
            mode: ctx.tuner.mode().to_string(),
            from_cache: r.from_cache(),
            seconds: r.seconds,
            warning: r.warning.clone(),
            choices: r.choices,
        }
    }
}

fn model_report(pipe: &Pipeline, batch: usize) -> ModelReport {
    let u = &pipe.unet;
    let per_image = u.flops() as f64 * 1e-9;
    ModelReport {
        source: String::new(),
        image: [u.input.c, u.input.h, u.input.w],
        params: u.params(),
        weights_bytes: memory::weights_bytes(u),
        gflop_per_image: per_image,
        gflop_per_forward: per_image * batch as f64,
    }
}

fn settings(device: &'static str, o: &Options, precision: Precision) -> Settings {
    Settings {
        device,
        batch: o.batch,
        steps: o.settings.steps,
        sampler: o.settings.sampler.as_str(),
        eta: 0.0,
        precision: precision.wgsl(),
        warmup: o.repeats.warmup,
        iters: o.repeats.iters,
        kernel_iters: o.kernel_iters,
    }
}

/// The CPU reference: the run section only.
pub fn cpu_document(pipe: &Pipeline, o: &Options) -> Result<Document> {
    if o.gemm || o.kernels {
        bail!("--gemm and --kernels measure GPU kernels; they do not apply to --device cpu");
    }
    let host = HostInfo::current();
    let mut model = model_report(pipe, o.batch);
    model.source = o.model_label.clone();
    let mut result = run::bench_cpu(pipe, o.batch, &o.settings, o.repeats)?;
    result.memory = None;
    Ok(Document {
        schema: SCHEMA,
        build: BuildInfo::current(),
        host,
        adapter: AdapterReport::cpu_reference(),
        settings: settings("cpu", o, Precision::F32),
        model: Some(model),
        timing: None,
        gemm_gflops: None,
        gemm: None,
        kernels: None,
        forward_gflops: Some(result.forward_gflops),
        run: Some(result),
        tuning: None,
        targets: Vec::new(),
    })
}

/// A compiled GPU forward for the benchmark, with the bytes of the buffers it allocated.
pub struct BuiltForward {
    pub forward: Box<dyn StepForward>,
    /// Sum of the plan's activation buffer sizes, when the plan reports it.
    pub activation_bytes: Option<u64>,
}

/// Builds the U-Net forward plan on the GPU for the run's timesteps at `batch`.
pub type ForwardBuilder<'a> =
    dyn Fn(&GpuContext, &Pipeline, &[f64], usize) -> Result<BuiltForward> + 'a;

/// Every distinct group norm (+SiLU) and attention block of the model at `batch`, with
/// activations stored as `precision`.
fn model_norms_and_attention(
    pipe: &Pipeline,
    batch: usize,
    precision: Precision,
) -> (Vec<GroupNormShape>, Vec<AttentionShape>) {
    let mut norms: Vec<GroupNormShape> = Vec::new();
    let mut attns: Vec<AttentionShape> = Vec::new();
    for l in &pipe.unet.layers {
        let hw = l.input.h * l.input.w;
        let mut add_norm = |channels: usize, groups: usize, eps: f32| {
            let s = GroupNormShape {
                batch,
                hw,
                channels,
                groups,
                eps,
                silu: true,
                precision,
            };
            if !norms
                .iter()
                .any(|n| (n.hw, n.channels, n.groups) == (s.hw, s.channels, s.groups))
            {
                norms.push(s);
            }
        };
        match &l.op {
            Op::Resnet(r) => {
                add_norm(r.norm1.channels, r.norm1.groups, r.norm1.eps);
                add_norm(r.norm2.channels, r.norm2.groups, r.norm2.eps);
            }
            Op::GroupNormSilu(n) => add_norm(n.channels, n.groups, n.eps),
            Op::Attention(a) => {
                let s = attention_shape(a, batch, hw, precision);
                if !attns
                    .iter()
                    .any(|x| (x.tokens, x.channels, x.heads) == (s.tokens, s.channels, s.heads))
                {
                    attns.push(s);
                }
            }
            _ => {}
        }
    }
    (norms, attns)
}

/// Kernel micro-benchmarks: the burn comparison conv (both variants), every distinct conv of
/// the model (the variant the plan uses; name suffixed ×count), norms, attention, DDIM update.
fn kernel_section(
    ctx: &GpuContext,
    profiler: &Profiler,
    pipe: &Pipeline,
    o: &Options,
    progress: &mut dyn FnMut(&CaseResult),
) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    let mut push = |r: CaseResult, out: &mut Vec<CaseResult>| {
        progress(&r);
        out.push(r);
    };
    let iters = o.kernel_iters;
    let w = o.repeats.warmup;
    for v in Variant::ALL {
        let case = kernels::conv_case(
            ctx,
            v,
            &format!("burn-comparison conv3x3 128->128 32x32 B8 ({v:?})"),
            &kernels::burn_conv_shape(),
        )?;
        push(kernels::measure(ctx, profiler, &case, w, iters)?, &mut out);
    }
    for mc in kernels::model_convs(&pipe.unet, o.batch) {
        let s = &mc.shape;
        let job = Job::Conv {
            shape: *s,
            precision: ctx.precision,
        };
        let variant = tuning::decide(ctx, FixedRule::of(ctx), &[job])?.conv(s, ctx.precision);
        let name = format!(
            "conv {}x{} {}{}->{} {}x{}{}{} x{} ({}, {})",
            s.kh,
            s.kw,
            s.c1,
            if s.c2 > 0 {
                format!("+{}", s.c2)
            } else {
                String::new()
            },
            s.cout,
            s.src_h,
            s.src_w,
            if s.upsample { " up2" } else { "" },
            if s.stride > 1 { " s2" } else { "" },
            mc.count,
            mc.layer,
            variant.name()
        );
        let case = kernels::conv_case(ctx, variant, &name, s)?;
        push(kernels::measure(ctx, profiler, &case, w, iters)?, &mut out);
    }
    let (norms, attns) = model_norms_and_attention(pipe, o.batch, ctx.precision);
    for n in &norms {
        let case = kernels::group_norm_case(ctx, n)?;
        push(kernels::measure(ctx, profiler, &case, w, iters)?, &mut out);
    }
    for a in &attns {
        let case = kernels::attention_case(ctx, a)?;
        push(kernels::measure(ctx, profiler, &case, w, iters)?, &mut out);
    }
    let u = &pipe.unet;
    let case = kernels::ddim_update_case(ctx, o.batch, u.output.numel())?;
    push(kernels::measure(ctx, profiler, &case, w, iters)?, &mut out);
    Ok(out)
}

/// Progress lines while measuring (text mode prints them; JSON mode ignores them).
pub trait Progress {
    fn gemm_row(&mut self, _row: &gemm::GemmRow) {}
    fn kernel_case(&mut self, _case: &CaseResult) {}
    fn note(&mut self, _line: &str) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// Measures the sections `o` asks for on `ctx`.
/// Refuses a batch the adapter cannot hold before any section allocates for it, naming the
/// limit (one storage binding, or the memory budget) and the largest batch that fits.
fn check_batch(ctx: &GpuContext, pipe: &Pipeline, o: &Options) -> Result<()> {
    let steps = run::sampler_steps(pipe, &o.settings)?;
    let timesteps: Vec<f64> = (0..steps.len()).map(|i| steps.timestep(i)).collect();
    let weights = pipe.gpu_weights(ctx)?;
    let update = RunUpdate::new(&pipe.scheduler, &steps);
    let cap = batch_capacity(
        ctx,
        &pipe.unet,
        &weights,
        &update,
        &timesteps,
        PlanOptions::default(),
        0,
    )?;
    if o.batch > cap.max_batch {
        bail!(
            "--batch {} does not fit on {}: {}; at most {} image(s) per batch fit",
            o.batch,
            ctx.info.name,
            cap.limit,
            cap.max_batch
        );
    }
    Ok(())
}

pub fn gpu_document(
    ctx: &GpuContext,
    pipe: &Pipeline,
    o: &Options,
    build_forward: &ForwardBuilder<'_>,
    progress: &mut dyn Progress,
) -> Result<Document> {
    if o.kernels || o.run {
        check_batch(ctx, pipe, o)?;
    }
    let host = HostInfo::current();
    let profiler = Profiler::new(ctx);
    let mut model = model_report(pipe, o.batch);
    model.source = o.model_label.clone();
    let mut doc = Document {
        schema: SCHEMA,
        build: BuildInfo::current(),
        host,
        adapter: AdapterReport::from_context(ctx),
        settings: settings("gpu", o, ctx.precision),
        model: (o.kernels || o.run).then_some(model),
        timing: Some(profiler.source()),
        gemm_gflops: None,
        gemm: None,
        kernels: None,
        forward_gflops: None,
        run: None,
        tuning: None,
        targets: Vec::new(),
    };
    if o.gemm {
        progress.note("GEMM ceiling");
        let sweep = gemm::sweep(
            ctx,
            &profiler,
            &gemm::GemmKernel::ALL,
            &o.gemm_sizes,
            o.repeats.warmup,
            o.kernel_iters,
            &mut |r| progress.gemm_row(r),
        )?;
        doc.gemm_gflops = Some(sweep.gemm_gflops);
        doc.gemm = Some(sweep);
    }
    if o.kernels {
        progress.note("kernels at the model's shapes");
        let cases = kernel_section(ctx, &profiler, pipe, o, &mut |c| progress.kernel_case(c))?;
        doc.kernels = Some(cases);
    }
    if o.run {
        progress.note("whole runs");
        let steps = run::sampler_steps(pipe, &o.settings)?;
        let timesteps: Vec<f64> = (0..steps.len()).map(|i| steps.timestep(i)).collect();
        // Uploaded (once per pipeline and device) before the plan's allocation is measured, so
        // the delta is the plan's alone whichever section ran first.
        let weights_bytes = pipe.gpu_weights(ctx)?.bytes;
        let before = memory::allocator_bytes(ctx)?;
        let built =
            build_forward(ctx, pipe, &timesteps, o.batch).context("building the GPU forward")?;
        let after = memory::allocator_bytes(ctx)?;
        let x_t = run::bench_input(pipe, o.batch)?;
        let mut result = run::bench_gpu(
            ctx,
            &profiler,
            pipe,
            run::GpuRun {
                forward: built.forward.as_ref(),
                steps: &steps,
                x_t: &x_t,
            },
            o.repeats,
            o.kernel_iters,
        )?;
        let delta = before.zip(after).map(|(b, a)| a.saturating_sub(b));
        result.memory = Some(MemoryReport::new(
            &pipe.unet,
            o.batch,
            (weights_bytes, ctx.precision.bytes()),
            built.activation_bytes,
            delta,
        ));
        doc.forward_gflops = Some(result.forward_gflops);
        doc.run = Some(result);
    }
    doc.tuning = Some(TuningReport::of(ctx));
    doc.targets = targets(&doc);
    Ok(doc)
}

/// A model conv case's occurrence count, carried in its name (" xN (layer)").
fn occurrences(name: &str) -> f64 {
    name.rsplit_once(" x")
        .and_then(|(_, r)| r.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(1.0)
}

/// Occurrence-weighted rate over cases whose name starts with `prefix`: total FLOPs over total
/// time, from wall-clock rates or (`cpu`) from per-CPU-second rates (None if any case lacks one).
fn aggregate_rate(cases: &[CaseResult], prefix: &str, cpu: bool) -> Option<f64> {
    let mut flops = 0.0;
    let mut time = 0.0;
    for c in cases.iter().filter(|c| c.name.starts_with(prefix)) {
        let f = c.flops as f64 * occurrences(&c.name);
        let rate = if cpu { c.gflop_per_cpu_s? } else { c.gflops };
        if rate > 0.0 {
            flops += f;
            time += f / rate;
        }
    }
    (time > 0.0).then(|| flops / time)
}

/// The targets that the measured sections allow checking.
pub fn targets(doc: &Document) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let gemm = doc.gemm_gflops.filter(|g| *g > 0.0);
    let gemm_cpu = doc.gemm.as_ref().and_then(|g| {
        g.table
            .iter()
            .filter_map(|r| r.gflop_per_cpu_s)
            .reduce(f64::max)
    });
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    if let Some(cases) = &doc.kernels {
        let burn: Vec<&CaseResult> = cases
            .iter()
            .filter(|c| c.name.starts_with("burn-comparison"))
            .collect();
        let burn_best = burn.iter().map(|c| c.gflops).fold(0.0, f64::max);
        let burn_best_cpu = burn
            .iter()
            .filter_map(|c| c.gflop_per_cpu_s)
            .reduce(f64::max);
        out.push(TargetCheck::at_least(
            "conv_vs_burn",
            format!(
                ">= 2 x burn's {BURN_CONV_GFLOPS} GFLOP/s (conv3x3 128->128 32x32 B8; burn measured \
                 at another time, compare under equal load)"
            ),
            burn_best / BURN_CONV_GFLOPS,
            None,
            2.0,
        ));
        if let Some(g) = gemm {
            out.push(TargetCheck::at_least(
                "conv_burn_shape_vs_gemm",
                ">= 0.70 x gemm_gflops".into(),
                burn_best / g,
                ratio(burn_best_cpu, gemm_cpu),
                0.7,
            ));
            if let Some(rate) = aggregate_rate(cases, "conv ", false) {
                out.push(TargetCheck::at_least(
                    "conv_model_shapes_vs_gemm",
                    ">= 0.70 x gemm_gflops (all the model's convs, weighted by occurrences)".into(),
                    rate / g,
                    ratio(aggregate_rate(cases, "conv ", true), gemm_cpu),
                    0.7,
                ));
            }
        }
    }
    if let Some(run) = &doc.run {
        if let Some(g) = gemm {
            out.push(TargetCheck::at_least(
                "forward_vs_gemm",
                ">= 0.50 x gemm_gflops".into(),
                run.forward_gflops / g,
                ratio(run.gflop_per_cpu_s, gemm_cpu),
                0.5,
            ));
        }
        if let Some(f) = run.host_encode_fraction {
            out.push(TargetCheck {
                name: "host_encode_fraction",
                target: "<= 0.02 of step time".into(),
                measured: f,
                met: f <= 0.02,
                measured_cpu_time: None,
                met_cpu_time: None,
            });
        }
        if let Some(m) = &run.memory {
            if let Some(measured) = m.measured_bytes {
                out.push(TargetCheck {
                    name: "gpu_memory_vs_budget",
                    target: "<= weights + 3 x largest live activations (measured: weights + the \
                             plan's allocator delta where reported, else weights + activation \
                             buffers)"
                        .into(),
                    measured: measured as f64 / m.budget_bytes.max(1) as f64,
                    met: measured <= m.budget_bytes,
                    measured_cpu_time: None,
                    met_cpu_time: None,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, flops: u64, gflops: f64, cpu: Option<f64>) -> CaseResult {
        CaseResult {
            name: name.into(),
            time_ms: flops as f64 / gflops / 1e6,
            flops,
            bytes: 0,
            gflops,
            gbps: 0.0,
            spread_ms: crate::bench::Summary::of(&[1.0]).unwrap(),
            gflop_per_cpu_s: cpu,
            dispatches: Vec::new(),
        }
    }

    #[test]
    fn conv_rate_is_weighted_by_occurrences() {
        assert_eq!(
            occurrences("conv 3x3 64+32->64 16x16 x3 (up_blocks.1.resnets.0.conv1)"),
            3.0
        );
        assert_eq!(occurrences("conv 1x1 8->8 4x4 up2 x12 (a)"), 12.0);
        let cases = [
            case("conv 3x3 a x3 (l)", 1000, 2.0, Some(4.0)),
            case("conv 1x1 b x1 (m)", 1000, 1.0, None),
            case("burn-comparison conv", 1000, 100.0, Some(100.0)),
        ];
        // 4000 FLOPs in 3·500 + 1000 ns.
        assert_eq!(
            aggregate_rate(&cases, "conv ", false),
            Some(4000.0 / 2500.0)
        );
        // A case without a CPU-time rate makes the CPU-time aggregate unknown.
        assert_eq!(aggregate_rate(&cases, "conv ", true), None);
        assert_eq!(aggregate_rate(&cases[..1], "conv ", true), Some(4.0));
        assert_eq!(aggregate_rate(&cases, "attention", false), None);
    }
}
