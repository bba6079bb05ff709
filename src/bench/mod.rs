//! Benchmarks behind `ddim bench` and the criterion benches: timing statistics, the JSON report
//! (schema `ddim-bench/1`, documented in README.md), the GEMM ceiling sweep, kernel
//! micro-benchmarks at a model's shapes, and whole-forward / whole-run measurements.
//!
//! Nothing here asserts a timing; numbers are measured and reported.

pub mod chart;
pub mod compare;
pub mod gemm;
pub mod kernels;
pub mod memory;
pub mod report;
pub mod run;
pub mod stats;
pub mod suite;

pub use stats::Summary;

/// GFLOP/s for `flops` done in `ns` nanoseconds (0 when no time was measured).
pub fn gflops(flops: u64, ns: f64) -> f64 {
    if ns > 0.0 {
        flops as f64 / ns
    } else {
        0.0
    }
}

/// GB/s for `bytes` moved in `ns` nanoseconds (0 when no time was measured).
pub fn gbps(bytes: u64, ns: f64) -> f64 {
    gflops(bytes, ns)
}
