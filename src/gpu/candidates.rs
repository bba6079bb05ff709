//! Timing one kernel candidate for the tuner ([`super::tune`]): scratch buffers, a first run,
//! then the best of a few, with an early stop for candidates that cannot win.

use anyhow::Result;

use super::kernel::Dispatch;
use super::profile::Profiler;
use super::GpuContext;

/// FLOPs a tuning run of one candidate does at least on a CPU adapter (about 5 ms on lavapipe).
/// A CPU adapter's rate does not depend on the problem size once each core has work, so its
/// candidates are timed on just enough of the batch (images, or GEMM rows) for this; a GPU's
/// rate does (occupancy), and timing is cheap there, so GPUs time the full shape.
pub const CPU_TUNE_FLOPS: u64 = 1 << 26;

/// A candidate whose first run takes this many times the best time so far is not timed again:
/// it cannot win, and on CPU adapters the GPU-style variants are 4-50x slower.
const HOPELESS: f64 = 2.5;

/// Milliseconds of one run of `dispatch`, with timestamp queries where the adapter has them,
/// else host wall-clock per submission: the best of `runs` after a first run (which compiles and
/// touches memory). When that first run is [`HOPELESS`] × `best_so_far` or slower, its time is
/// the answer.
pub fn time_dispatch(
    ctx: &GpuContext,
    dispatch: &Dispatch,
    runs: usize,
    best_so_far: f64,
) -> Result<f64> {
    let profiler = Profiler::new(ctx);
    let first = profiler.time_repeated(ctx, dispatch, 1, 0)?[0] / 1e6;
    if first > HOPELESS * best_so_far {
        return Ok(first);
    }
    let times = profiler.time_repeated(ctx, dispatch, runs, 0)?;
    Ok(times.iter().copied().fold(f64::INFINITY, f64::min) / 1e6)
}

/// Timed runs per candidate: GPUs are fast enough for several; CPU adapters get two.
pub fn runs_for(ctx: &GpuContext) -> usize {
    if ctx.is_cpu() {
        2
    } else {
        5
    }
}
