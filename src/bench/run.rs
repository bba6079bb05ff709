//! Whole-model measurements: the sampling run (images/s, ms per step), the forward in one pass
//! (achieved GFLOP/s), host encoding time, and per-kernel GPU times, on a GPU forward plan or on
//! the CPU reference.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::memory::MemoryReport;
use super::report::{kernel_rows, median_per_dispatch, KernelRow};
use super::{gflops, Summary};
use ddim_wgpu::gpu::plan::StepForward;
use ddim_wgpu::gpu::profile::{time_one_pass, Profiler, TimingSource};
use ddim_wgpu::gpu::sampler::{sample, RunUpdate};
use ddim_wgpu::gpu::{Dispatch, GpuContext};
use ddim_wgpu::pipeline::Pipeline;
use ddim_wgpu::sampling::{SampleSettings, SamplerSteps};
use ddim_wgpu::Tensor;

/// How many times to run each measurement.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Repeats {
    pub warmup: usize,
    pub iters: usize,
}

/// A reading of this process's CPU time (Linux `/proc`; None elsewhere). On a CPU adapter
/// (lavapipe, llvmpipe) the driver's threads are ours, so work per CPU-second is a rate that a
/// busy shared machine disturbs much less than wall-clock.
///
/// Two clocks: the process's user + system ticks (`/proc/self/stat`: every thread, exited ones
/// included, but 10 ms resolution) and the summed nanosecond run times of the live threads
/// (`/proc/self/task/*/schedstat`: fine-grained, but threads that exit take their time with
/// them, as the CPU reference's scoped worker threads do). [`CpuTime::since`] uses the ticks
/// when they span at least half a second, the fine clock otherwise.
#[derive(Clone, Copy, Debug)]
pub struct CpuTime {
    ticks_s: Option<f64>,
    threads_s: Option<f64>,
}

impl CpuTime {
    pub fn now() -> Self {
        Self {
            ticks_s: process_ticks_seconds(),
            threads_s: thread_run_time_seconds(),
        }
    }

    /// CPU seconds from `start` to now, when measurable.
    pub fn since(start: &Self) -> Option<f64> {
        let now = Self::now();
        let ticks = now.ticks_s.zip(start.ticks_s).map(|(b, a)| b - a);
        let threads = now
            .threads_s
            .zip(start.threads_s)
            .map(|(b, a)| b - a)
            .filter(|d| *d > 0.0);
        match ticks {
            Some(t) if t >= 0.5 => Some(t),
            _ => threads.or(ticks.filter(|t| *t > 0.0)),
        }
    }
}

fn thread_run_time_seconds() -> Option<f64> {
    let mut total_ns: u64 = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        // A thread may exit while we read; skip it.
        if let Ok(text) = std::fs::read_to_string(path) {
            total_ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total_ns as f64 * 1e-9)
}

fn process_ticks_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux configuration in practice.
    Some((utime + stime) / 100.0)
}

/// Runs `f` `warmup` times untimed, then `iters` times; returns the wall-clock of each timed
/// run in nanoseconds and the CPU seconds per timed run (when known).
pub fn repeat_timed(
    repeats: Repeats,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(Vec<f64>, Option<f64>)> {
    for _ in 0..repeats.warmup {
        f()?;
    }
    let iters = repeats.iters.max(1);
    let cpu0 = CpuTime::now();
    let mut ns = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        ns.push(start.elapsed().as_nanos() as f64);
    }
    let cpu = CpuTime::since(&cpu0).map(|c| c / iters as f64);
    Ok((ns, cpu))
}

/// The steps of the benchmarked run (`settings`: sampler, steps, solver options; eta 0) with the
/// pipeline's scheduler.
pub fn sampler_steps(pipe: &Pipeline, settings: &SampleSettings) -> Result<SamplerSteps> {
    pipe.steps(settings)
        .with_context(|| format!("building the {} table", settings.sampler.as_str()))
}

/// Deterministic x_T for `batch` images (NCHW): a cheap hash, not torch's generator; the
/// timings do not depend on the values.
pub fn bench_input(pipe: &Pipeline, batch: usize) -> Result<Tensor> {
    let (c, h, w) = (pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w);
    let n = batch * c * h * w;
    let data = (0..n)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 3.0)
        .collect();
    Tensor::new(vec![batch, c, h, w], data)
}

/// Everything measured for one (device, model, batch, steps).
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Wall-clock of a whole sampling run (x_T upload, `steps` steps, read back), ms.
    pub run_ms: Summary,
    /// batch / median run time.
    pub images_per_s: f64,
    /// Median run time / steps.
    pub step_ms: f64,
    /// Wall-clock of one forward (one pass on a GPU, submit to completion), ms.
    pub forward_ms: Summary,
    /// GFLOP per forward / median forward time: the achieved rate of the whole U-Net.
    pub forward_gflops: f64,
    /// Host time to encode one step's commands (GPU only), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_encode_ms: Option<Summary>,
    /// Median host encoding time / median step time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_encode_fraction: Option<f64>,
    /// Process CPU seconds per run (user + system; on a CPU adapter this includes the driver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_run: Option<f64>,
    /// GFLOP of the run's forwards per process CPU-second: comparable across machine loads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflop_per_cpu_s: Option<f64>,
    /// Where the per-kernel times come from (GPU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_timing: Option<TimingSource>,
    /// Sum of the per-dispatch medians of one forward, ms (one pass per dispatch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels_total_ms: Option<f64>,
    /// Per kernel (`shader::entry`), summed over one forward, largest first.
    pub kernels: Vec<KernelRow>,
    /// Per dispatch of one forward, in execution order.
    pub dispatches: Vec<KernelRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
}

/// One benchmarked sampling run on the GPU: a compiled forward, its steps, and x_T.
pub struct GpuRun<'a> {
    pub forward: &'a dyn StepForward,
    pub steps: &'a SamplerSteps,
    pub x_t: &'a Tensor,
}

/// Measures the sampler on the GPU with a compiled `forward` (built for `steps`' timesteps at
/// batch `x_t.shape[0]`). `memory` is filled in by the caller, who knows the plan's buffers.
pub fn bench_gpu(
    ctx: &GpuContext,
    profiler: &Profiler,
    pipe: &Pipeline,
    run: GpuRun<'_>,
    repeats: Repeats,
    kernel_iters: usize,
) -> Result<RunResult> {
    let GpuRun {
        forward,
        steps,
        x_t,
    } = run;
    let batch = x_t.shape[0];
    let update = RunUpdate::new(&pipe.scheduler, steps);
    let spec = update.spec();
    let flops = pipe.unet.flops() * batch as u64;
    let dispatches: Vec<&Dispatch> = forward.dispatches().iter().collect();

    // Whole runs, as `ddim sample` runs them. Samplers that draw at some steps (Euler ancestral,
    // Euler with churn) get zeros there: the upload is timed, the values do not matter.
    let numel = x_t.numel();
    let mut noise = |s: usize| Ok(steps.draws_noise(s).then(|| vec![0.0f32; numel]));
    let (run_ns, cpu_per_run) = repeat_timed(repeats, || {
        sample(ctx, forward, &spec, x_t, &mut noise, &mut |_, _| {}).map(|_| ())
    })?;
    let run = Summary::of(&run_ns).context("no run timings")?;

    // One forward in one pass: wall-clock and host encoding.
    let mut encode = Vec::new();
    let mut execute = Vec::new();
    for i in 0..repeats.warmup + repeats.iters.max(1) {
        let t = time_one_pass(ctx, &dispatches, 0)?;
        if i >= repeats.warmup {
            encode.push(t.encode_ns);
            execute.push(t.execute_ns);
        }
    }
    let forward_ns = Summary::of(&execute).context("no forward timings")?;
    let encode_ns = Summary::of(&encode).context("no encoding timings")?;

    // Per dispatch, one pass each.
    let mut runs = Vec::new();
    for i in 0..repeats.warmup + kernel_iters.max(1) {
        let t = profiler.time_each(ctx, &dispatches, 0)?;
        if i >= repeats.warmup {
            runs.push(t);
        }
    }
    let medians = median_per_dispatch(&runs);
    let described: Vec<(String, String, u64, u64)> = dispatches
        .iter()
        .map(|d| (d.label.clone(), d.kernel.label.clone(), d.flops, d.bytes))
        .collect();
    let (per_dispatch, per_kernel) = kernel_rows(&described, &medians);

    let step_ns = run.median / steps.len().max(1) as f64;
    let run_flops = flops * steps.len() as u64;
    Ok(RunResult {
        run_ms: run.scaled(1e-6),
        images_per_s: batch as f64 / (run.median * 1e-9),
        step_ms: step_ns * 1e-6,
        forward_ms: forward_ns.scaled(1e-6),
        forward_gflops: gflops(flops, forward_ns.median),
        host_encode_ms: Some(encode_ns.scaled(1e-6)),
        host_encode_fraction: Some(encode_ns.median / step_ns),
        cpu_s_per_run: cpu_per_run,
        gflop_per_cpu_s: cpu_per_run
            .filter(|&c| c > 0.0)
            .map(|c| run_flops as f64 * 1e-9 / c),
        kernel_timing: Some(profiler.source()),
        kernels_total_ms: Some(medians.iter().sum::<f64>() * 1e-6),
        kernels: per_kernel,
        dispatches: per_dispatch,
        memory: None,
    })
}

/// Measures the CPU reference: whole sampling runs through [`Pipeline::sample`], and single
/// forwards at the same batch.
pub fn bench_cpu(
    pipe: &Pipeline,
    batch: usize,
    settings: &SampleSettings,
    repeats: Repeats,
) -> Result<RunResult> {
    use ddim_wgpu::pipeline::{Device, Noise, SampleRequest};
    let steps = settings.steps;
    let x_t = bench_input(pipe, batch)?;
    let request = SampleRequest {
        settings: settings.clone(),
        noise: Noise::Given {
            x_t: x_t.clone(),
            seed: 0,
        },
        batch: Some(batch),
        ..SampleRequest::default()
    };
    let (run_ns, cpu_per_run) =
        repeat_timed(repeats, || pipe.sample(&Device::Cpu, &request).map(|_| ()))?;
    let run = Summary::of(&run_ns).context("no run timings")?;
    let t = sampler_steps(pipe, settings)?.timestep(0) as f32;
    let (fwd_ns, _) = repeat_timed(repeats, || {
        ddim_wgpu::cpu::forward::forward(&pipe.unet, &pipe.model.weights, &x_t, &[t]).map(|_| ())
    })?;
    let forward = Summary::of(&fwd_ns).context("no forward timings")?;
    let flops = pipe.unet.flops() * batch as u64;
    Ok(RunResult {
        run_ms: run.scaled(1e-6),
        images_per_s: batch as f64 / (run.median * 1e-9),
        step_ms: run.median * 1e-6 / steps.max(1) as f64,
        forward_ms: forward.scaled(1e-6),
        forward_gflops: gflops(flops, forward.median),
        host_encode_ms: None,
        host_encode_fraction: None,
        cpu_s_per_run: cpu_per_run,
        gflop_per_cpu_s: cpu_per_run
            .filter(|&c| c > 0.0)
            .map(|c| (flops * steps as u64) as f64 * 1e-9 / c),
        kernel_timing: None,
        kernels_total_ms: None,
        kernels: Vec::new(),
        dispatches: Vec::new(),
        memory: None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_advances_with_work() {
        let cpu_start = super::CpuTime::now();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        if cfg!(target_os = "linux") {
            let spent = super::CpuTime::since(&cpu_start).expect("CPU time on Linux");
            assert!(spent > 0.0 && spent < 10.0, "{spent}");
        }
    }
}
