//! The pieces of the `--json` report common to every bench kind: schema tag, build, host,
//! adapter, and per-kernel rows. The layout is documented in README.md ("Benchmark JSON").

use serde::Serialize;

use super::{gbps, gflops, Summary};
use ddim_wgpu::gpu::GpuContext;

/// Version tag of the JSON layout; bump when a field changes meaning or disappears.
pub const SCHEMA: &str = "ddim-bench/1";

/// What produced the numbers.
#[derive(Clone, Debug, Serialize)]
pub struct BuildInfo {
    pub crate_name: &'static str,
    pub version: &'static str,
    /// `DDIM_GIT_HASH` at compile time, when the builder set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_hash: Option<&'static str>,
    /// "release" or "debug" (debug timings are meaningless).
    pub profile: &'static str,
}

impl BuildInfo {
    pub fn current() -> Self {
        Self {
            crate_name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            git_hash: option_env!("DDIM_GIT_HASH"),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

/// The machine, including its load when the numbers were taken (shared machines skew timings).
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    pub os: &'static str,
    pub arch: &'static str,
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// 1-minute load average at the start of the run (Linux only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_avg_1m: Option<f64>,
}

impl HostInfo {
    pub fn current() -> Self {
        let load_avg_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        Self {
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_avg_1m,
        }
    }
}

/// The device that ran the benchmark: a wgpu adapter, or the CPU reference.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterReport {
    pub name: String,
    /// "vulkan", "metal", "dx12", "gl", or "cpu-reference".
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    /// "discrete_gpu", "integrated_gpu", "virtual_gpu", "cpu", "other".
    pub device_type: String,
    pub vendor_id: u32,
    pub device_id: u32,
    /// Whether per-kernel times can come from GPU timestamp queries.
    pub timestamp_query: bool,
}

fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete_gpu",
        wgpu::DeviceType::IntegratedGpu => "integrated_gpu",
        wgpu::DeviceType::VirtualGpu => "virtual_gpu",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

impl AdapterReport {
    pub fn from_context(ctx: &GpuContext) -> Self {
        let i = &ctx.info;
        Self {
            name: i.name.clone(),
            backend: i.backend.to_str().to_string(),
            driver: i.driver.clone(),
            driver_info: i.driver_info.clone(),
            device_type: device_type_name(i.device_type).to_string(),
            vendor_id: i.vendor,
            device_id: i.device,
            timestamp_query: ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY),
        }
    }

    /// The pure-Rust CPU reference (`--device cpu`).
    pub fn cpu_reference() -> Self {
        Self {
            name: "CPU reference (ddim_wgpu::cpu)".into(),
            backend: "cpu-reference".into(),
            driver: String::new(),
            driver_info: String::new(),
            device_type: "cpu".into(),
            vendor_id: 0,
            device_id: 0,
            timestamp_query: false,
        }
    }
}

/// One timed dispatch (or kernel) with its work and achieved rates.
#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    /// Dispatch label, or the kernel (`shader::entry`) for aggregated rows.
    pub name: String,
    /// The compiled kernel (`shader::entry`).
    pub kernel: String,
    /// Dispatches aggregated into this row (1 for a single dispatch).
    pub calls: usize,
    /// Median GPU time of one forward's worth of these dispatches, milliseconds.
    pub time_ms: f64,
    /// Fraction of the summed per-dispatch time.
    pub share: f64,
    pub flops: u64,
    pub bytes: u64,
    pub gflops: f64,
    pub gbps: f64,
}

impl KernelRow {
    pub fn new(name: &str, kernel: &str, calls: usize, ns: f64, flops: u64, bytes: u64) -> Self {
        Self {
            name: name.to_string(),
            kernel: kernel.to_string(),
            calls,
            time_ms: ns / 1e6,
            share: 0.0,
            flops,
            bytes,
            gflops: gflops(flops, ns),
            gbps: gbps(bytes, ns),
        }
    }
}

/// Per-dispatch median times `ns[i]` of dispatches described by `(label, kernel, flops, bytes)`:
/// one row per dispatch and one per kernel (summed), both with shares filled in and the
/// per-kernel rows sorted by time, largest first.
pub fn kernel_rows(
    dispatches: &[(String, String, u64, u64)],
    ns: &[f64],
) -> (Vec<KernelRow>, Vec<KernelRow>) {
    let total: f64 = ns.iter().sum();
    let share = |t: f64| if total > 0.0 { t / total } else { 0.0 };
    let mut per_dispatch = Vec::with_capacity(dispatches.len());
    let mut per_kernel: Vec<(String, usize, f64, u64, u64)> = Vec::new();
    for ((label, kernel, flops, bytes), &t) in dispatches.iter().zip(ns) {
        let mut row = KernelRow::new(label, kernel, 1, t, *flops, *bytes);
        row.share = share(t);
        per_dispatch.push(row);
        match per_kernel.iter_mut().find(|k| &k.0 == kernel) {
            Some(k) => {
                k.1 += 1;
                k.2 += t;
                k.3 += flops;
                k.4 += bytes;
            }
            None => per_kernel.push((kernel.clone(), 1, t, *flops, *bytes)),
        }
    }
    let mut kernels: Vec<KernelRow> = per_kernel
        .into_iter()
        .map(|(k, calls, t, f, b)| {
            let mut row = KernelRow::new(&k, &k, calls, t, f, b);
            row.share = share(t);
            row
        })
        .collect();
    kernels.sort_by(|a, b| b.time_ms.total_cmp(&a.time_ms));
    (per_dispatch, kernels)
}

/// Median per position over repeated runs of the same dispatch list: `runs[r][i]` → `[i]`.
pub fn median_per_dispatch(runs: &[Vec<f64>]) -> Vec<f64> {
    let n = runs.first().map_or(0, Vec::len);
    (0..n)
        .map(|i| {
            let column: Vec<f64> = runs.iter().filter_map(|r| r.get(i).copied()).collect();
            Summary::of(&column).map_or(0.0, |s| s.median)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_aggregate_by_kernel() {
        let d = vec![
            (
                "conv a".to_string(),
                "conv2d::conv_reg".to_string(),
                2000,
                400,
            ),
            (
                "norm".to_string(),
                "group_norm::gn_apply".to_string(),
                0,
                1000,
            ),
            (
                "conv b".to_string(),
                "conv2d::conv_reg".to_string(),
                6000,
                400,
            ),
        ];
        let (rows, kernels) = kernel_rows(&d, &[1000.0, 2000.0, 1000.0]);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].gflops, 2.0);
        assert_eq!(rows[1].share, 0.5);
        assert_eq!(kernels.len(), 2);
        let conv = kernels
            .iter()
            .find(|k| k.kernel == "conv2d::conv_reg")
            .unwrap();
        assert_eq!((conv.calls, conv.flops, conv.gflops), (2, 8000, 4.0));
        assert_eq!(kernels[0].time_ms, 0.002);
        assert_eq!(
            median_per_dispatch(&[vec![1.0, 5.0], vec![3.0, 1.0], vec![2.0, 2.0]]),
            [2.0, 2.0]
        );
    }
}
