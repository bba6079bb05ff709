//! `ddim bench`: timings and achieved rates — whole sampling runs (images/s, ms per step), the
//! forward's GFLOP/s, host encoding time, per-kernel GPU time (timestamp queries), GPU memory,
//! the GEMM ceiling (`--gemm`) and kernel micro-benchmarks at the model's shapes (`--kernels`).
//! `--json` prints the `ddim-bench/1` document (README.md, "Benchmark JSON").

use super::model_args::{AdapterArgs, ModelArgs};
use super::schedule::SolverArgs;

use crate::bench::compare;
use crate::bench::gemm::{self, GemmRow, GemmSize};
use crate::bench::kernels::CaseResult;
use crate::bench::run::Repeats;
use crate::bench::suite::{self, BuiltForward, Document, Options, Progress};
use anyhow::{Context, Result};
use ddim_wgpu::gpu::context::{enumerate_adapters, new_instance};
use ddim_wgpu::gpu::plan::{PlanOptions, UNetPlan};
use ddim_wgpu::gpu::{AdapterChoice, BackendChoice, GpuContext};
use ddim_wgpu::pipeline::Pipeline;
use ddim_wgpu::sampling::{SampleSettings, SamplerKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Gpu,
    Cpu,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per forward.
    #[arg(long, default_value_t = 8, value_parser = super::numbers::at_least::<usize, 1>)]
    pub batch: usize,
    /// Steps (model evaluations) per timed run.
    #[arg(long, default_value_t = 10, value_parser = super::numbers::at_least::<usize, 1>)]
    pub steps: usize,
    /// Sampler of the timed runs (eta 0).
    #[arg(long, value_parser = super::flags::sampler(), default_value_t = SamplerKind::Ddim)]
    pub sampler: SamplerKind,
    #[command(flatten)]
    pub solver: SolverArgs,
    /// Untimed runs before measuring.
    #[arg(long, default_value_t = 1, value_parser = super::numbers::at_least::<usize, 0>)]
    pub warmup: usize,
    /// Timed runs (median and spread are reported).
    #[arg(long, default_value_t = 5, value_parser = super::numbers::at_least::<usize, 1>)]
    pub iters: usize,
    /// Timed repetitions of per-kernel measurements (default: --iters).
    #[arg(long, value_parser = super::numbers::at_least::<usize, 1>)]
    pub kernel_iters: Option<usize>,
    /// gpu (a wgpu adapter) or cpu (the pure-Rust reference; whole runs only).
    #[arg(long, value_enum, default_value = "gpu")]
    pub device: DeviceArg,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Run on every adapter in turn (of --backend, or all); JSON output is an array.
    #[arg(long, conflicts_with = "adapter")]
    pub all_adapters: bool,
    /// Measure the GEMM ceiling: the best rate of our kernels on matrix products (`gemm_gflops`).
    #[arg(long)]
    pub gemm: bool,
    /// GEMM sizes for --gemm as MxNxK (repeatable; default: 1024³ and the cifar10 conv shapes).
    #[arg(long = "gemm-size", value_parser = parse_gemm_size)]
    pub gemm_sizes: Vec<GemmSize>,
    /// Kernel micro-benchmarks at the model's shapes (every distinct conv, norm, attention, the
    /// DDIM update) and the burn-comparison conv.
    #[arg(long)]
    pub kernels: bool,
    /// Everything (--gemm, --kernels and whole runs), with the targets checked from
    /// ratios measured in this one invocation.
    #[arg(long, conflicts_with_all = ["gemm", "kernels"])]
    pub targets: bool,
    /// Seed of the random weights (--arch).
    #[arg(long, default_value_t = 0, value_parser = super::numbers::at_least::<u64, 0>)]
    pub seed: u64,
    /// Print every dispatch of the forward, not only the per-kernel summary.
    #[arg(long)]
    pub per_dispatch: bool,
    /// Print the report as JSON (schema ddim-bench/1).
    #[arg(long)]
    pub json: bool,
    /// Measure nothing: print reports saved with --json (or by tools/bench_torch.py --json)
    /// side by side, and chart each kernel's GFLOP/s per adapter (--chart).
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["json", "all_adapters", "targets", "gemm", "kernels"])]
    pub compare: Vec<std::path::PathBuf>,
    /// Where --compare writes its chart.
    #[arg(
        long,
        value_name = "FILE.png",
        default_value = "bench-compare.png",
        requires = "compare"
    )]
    pub chart: std::path::PathBuf,
}

fn parse_gemm_size(s: &str) -> Result<GemmSize, String> {
    let parts: Vec<usize> = s
        .split(['x', 'X'])
        .map(|p| p.trim().parse::<usize>().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [m, n, k] if m > 0 && n > 0 && k > 0 => Ok(GemmSize { m, n, k }),
        _ => Err(format!(
            "{s:?}: expected MxNxK with positive sizes, e.g. 1024x1024x1024"
        )),
    }
}

/// The GPU U-Net forward for the benchmark: the plan `ddim sample` uses, compiled for the
/// run's timesteps at `batch`.
fn build_forward(
    ctx: &GpuContext,
    pipe: &Pipeline,
    timesteps: &[f64],
    batch: usize,
) -> Result<BuiltForward> {
    let timesteps: Vec<Vec<f32>> = timesteps.iter().map(|&t| vec![t as f32; batch]).collect();
    let weights = pipe.gpu_weights(ctx)?;
    let plan = UNetPlan::new(
        ctx,
        &pipe.unet,
        &weights,
        &timesteps,
        PlanOptions::default(),
    )?;
    let activation_bytes = plan.activation_bytes();
    Ok(BuiltForward {
        forward: Box::new(plan),
        activation_bytes: Some(activation_bytes),
    })
}

fn per_cpu_s(rate: Option<f64>) -> String {
    rate.map(|r| format!("({r:.2} GFLOP per CPU-s)"))
        .unwrap_or_default()
}

/// Text-mode progress: one line per measured item, on stderr so stdout stays clean.
struct TextProgress;

impl Progress for TextProgress {
    fn gemm_row(&mut self, r: &GemmRow) {
        eprintln!(
            "  {:<22} {:>5}x{:<5}x{:<5} {:>9.3} ms  {:>7.2} GFLOP/s  {}",
            r.kernel,
            r.size.m,
            r.size.n,
            r.size.k,
            r.time_ms.median,
            r.gflops,
            per_cpu_s(r.gflop_per_cpu_s)
        );
    }
    fn kernel_case(&mut self, c: &CaseResult) {
        eprintln!(
            "  {:<62} {:>9.3} ms  {:>7.2} GFLOP/s {:>7.2} GB/s  {}",
            c.name,
            c.time_ms,
            c.gflops,
            c.gbps,
            per_cpu_s(c.gflop_per_cpu_s)
        );
    }
    fn note(&mut self, line: &str) {
        eprintln!("{line}:");
    }
}

fn options(args: &Args, label: String) -> Options {
    let everything = args.targets;
    Options {
        model_label: label,
        batch: args.batch,
        settings: SampleSettings {
            sampler: args.sampler,
            steps: args.steps,
            solver: args.solver.keys(),
            ..SampleSettings::default()
        },
        repeats: Repeats {
            warmup: args.warmup,
            iters: args.iters.max(1),
        },
        kernel_iters: args.kernel_iters.unwrap_or(args.iters).max(1),
        gemm: args.gemm || everything,
        gemm_sizes: if args.gemm_sizes.is_empty() {
            gemm::default_sizes()
        } else {
            args.gemm_sizes.clone()
        },
        kernels: args.kernels || everything,
        run: everything || !(args.gemm || args.kernels),
    }
}

/// Every (backend, index) pair to run with --all-adapters.
fn all_adapter_choices(args: &super::model_args::AdapterArgs) -> Result<Vec<AdapterChoice>> {
    let (backend, memory_mib) = (args.backend, args.gpu_memory);
    let kernels = super::model_args::kernel_choice_from_env()?;
    let backends: Vec<BackendChoice> = match backend {
        Some(b) => vec![b],
        None => BackendChoice::ALL.to_vec(),
    };
    let mut out = Vec::new();
    for b in backends {
        let instance = new_instance(b.backends());
        let n = enumerate_adapters(&instance, b.backends()).len();
        out.extend((0..n).map(|i| AdapterChoice {
            backend: Some(b),
            index: Some(i),
            kernels,
            memory_mib,
            precision: args.precision,
            tune: args.tune,
            tune_cache: super::model_args::tune_cache_from_env(),
        }));
    }
    Ok(out)
}

fn compare(args: &Args) -> Result<()> {
    super::sample::check_outputs(&[("--chart", &args.chart)])?;
    let entries = compare::load(&args.compare)?;
    print!("{}", compare::table(&entries));
    let chart = compare::chart(&entries, 10);
    if chart.groups.is_empty() {
        println!(
            "no per-kernel rows in these reports (they come from whole runs): no chart written"
        );
        return Ok(());
    }
    chart
        .write_png(&args.chart)
        .with_context(|| format!("writing the chart {}", args.chart.display()))?;
    println!("chart: {}", args.chart.display());
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if !args.compare.is_empty() {
        return compare(&args);
    }
    let loaded = args.model.load(args.seed)?;
    super::fits::check_batch(
        &loaded.pipeline.unet,
        args.batch,
        args.device == DeviceArg::Cpu,
    )?;
    let (pipe, label) = (loaded.pipeline, loaded.label);
    let opts = options(&args, label);
    let mut quiet = suite::Quiet;
    let mut text = TextProgress;
    let progress: &mut dyn Progress = if args.json { &mut quiet } else { &mut text };

    if args.device == DeviceArg::Cpu {
        let doc = suite::cpu_document(&pipe, &opts)?;
        return print(&[doc], args.json, false, args.per_dispatch);
    }
    let choices = if args.all_adapters {
        let c = all_adapter_choices(&args.adapter)?;
        anyhow::ensure!(!c.is_empty(), "no GPU adapters found");
        c
    } else {
        vec![args.adapter.choice()?]
    };
    let mut docs = Vec::new();
    for choice in &choices {
        let ctx = GpuContext::new(choice)?;
        if !args.json {
            eprintln!("== {} ==", ctx.describe());
        }
        let doc = suite::gpu_document(&ctx, &pipe, &opts, &build_forward, progress)
            .with_context(|| format!("benchmarking on {}", ctx.describe()))?;
        if !args.json {
            print_text(&doc, args.per_dispatch);
        }
        docs.push(doc);
    }
    if args.json {
        print(&docs, true, args.all_adapters, args.per_dispatch)?;
    }
    Ok(())
}

fn print(docs: &[Document], json: bool, array: bool, per_dispatch: bool) -> Result<()> {
    if json {
        let text = if array {
            serde_json::to_string_pretty(docs)?
        } else {
            serde_json::to_string_pretty(&docs[0])?
        };
        println!("{text}");
    } else {
        for d in docs {
            print_text(d, per_dispatch);
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn print_text(doc: &Document, per_dispatch: bool) {
    let a = &doc.adapter;
    println!(
        "adapter: {} ({}, {}) driver {} {}",
        a.name, a.backend, a.device_type, a.driver, a.driver_info
    );
    if let Some(load) = doc.host.load_avg_1m {
        println!("host: {} CPUs, load average {load:.2}", doc.host.cpus);
    }
    if let Some(t) = doc.timing {
        println!("kernel timing: {}", t.describe());
    }
    if let Some(t) = &doc.tuning {
        println!("variants: {}", super::tune::summary(t));
    }
    if let Some(m) = &doc.model {
        println!(
            "model: {} — {:.2} M params ({:.1} MiB), {:.3} GFLOP per image, batch {} → {:.2} GFLOP per forward",
            m.source,
            m.params as f64 * 1e-6,
            mib(m.weights_bytes),
            m.gflop_per_image,
            doc.settings.batch,
            m.gflop_per_forward
        );
    }
    if let Some(g) = &doc.gemm {
        match &g.best {
            Some(b) => println!(
                "gemm_gflops: {:.2} ({} at {}x{}x{})",
                g.gemm_gflops, b.kernel, b.size.m, b.size.n, b.size.k
            ),
            None => println!("gemm_gflops: none measured"),
        }
    }
    if let Some(run) = &doc.run {
        println!(
            "run ({} DDIM steps, batch {}): {} ms, {:.3} images/s, {:.2} ms/step",
            doc.settings.steps,
            doc.settings.batch,
            run.run_ms.short(1),
            run.images_per_s,
            run.step_ms
        );
        println!(
            "forward: {} ms → forward_gflops {:.2}",
            run.forward_ms.short(2),
            run.forward_gflops
        );
        if let Some(r) = run.gflop_per_cpu_s {
            println!("work per CPU-second (load-independent on CPU adapters): {r:.2} GFLOP/s");
        }
        if let (Some(e), Some(f)) = (&run.host_encode_ms, run.host_encode_fraction) {
            println!(
                "host encoding: {:.3} ms per step ({:.2} % of the step)",
                e.median,
                f * 100.0
            );
        }
        if let Some(m) = &run.memory {
            let mut parts = Vec::new();
            if let Some(b) = m.allocator_delta_bytes {
                parts.push(format!(
                    "{:.1} MiB allocated by the plan (driver report)",
                    mib(b)
                ));
            }
            if let (Some(b), Some(a)) = (m.buffers_bytes, m.activation_buffers_bytes) {
                parts.push(format!(
                    "{:.1} MiB weights + activation buffers ({:.1} MiB activations)",
                    mib(b),
                    mib(a)
                ));
            }
            if parts.is_empty() {
                parts.push("not reported".into());
            }
            println!(
                "GPU memory: {}; weights {:.1} MiB, largest live activations {:.1} MiB, budget {:.1} MiB{}",
                parts.join(", "),
                mib(m.weights_bytes),
                mib(m.largest_live_activations_bytes),
                mib(m.budget_bytes),
                m.measured_bytes
                    .map(|b| format!(" (measured {:.1} MiB with the weights)", mib(b)))
                    .unwrap_or_default()
            );
        }
        if !run.kernels.is_empty() {
            println!(
                "{:<44} {:>5} {:>10} {:>6} {:>9} {:>8}",
                "kernel", "calls", "ms", "share", "GFLOP/s", "GB/s"
            );
            let rows = if per_dispatch {
                &run.dispatches
            } else {
                &run.kernels
            };
            for k in rows {
                println!(
                    "{:<44} {:>5} {:>10.3} {:>5.1}% {:>9.2} {:>8.2}",
                    k.name,
                    k.calls,
                    k.time_ms,
                    k.share * 100.0,
                    k.gflops,
                    k.gbps
                );
            }
        }
    }
    for t in &doc.targets {
        let cpu = match (t.measured_cpu_time, t.met_cpu_time) {
            (Some(m), Some(ok)) => format!(
                "; per CPU-second {m:.3} {}",
                if ok { "met" } else { "MISSED" }
            ),
            _ => String::new(),
        };
        println!(
            "target {:<28} {:>8.3} {}{cpu}  ({})",
            t.name,
            t.measured,
            if t.met { "met" } else { "MISSED" },
            t.target
        );
    }
}
