//! Per-dispatch GPU timing for benchmarks.
//!
//! In profiling mode every dispatch runs in its own compute pass with timestamps written at the
//! pass's beginning and end (pass-level timestamps are the portable form: in-pass timestamps are
//! missing on some backends). Without `TIMESTAMP_QUERY`, or when `DDIM_PROFILE_WALLCLOCK=1`, each
//! dispatch is submitted alone and timed on the host from submit to completion; that includes
//! submission and wake-up overhead, so [`TimingSource`] is reported next to every number.
//!
//! Profiling changes the schedule (one pass per dispatch, no overlap between dispatches), so the
//! sum of per-dispatch times can exceed the time of the same dispatches in one pass; benchmarks
//! report the one-pass wall-clock time alongside.

use std::time::Instant;

use anyhow::{anyhow, ensure, Context, Result};

use super::kernel::Dispatch;
use super::GpuContext;

/// Where per-dispatch times come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimingSource {
    /// Timestamp queries at the beginning and end of a pass holding one dispatch.
    GpuTimestamps,
    /// Host wall-clock from submitting one dispatch to its completion (includes overhead).
    WallClockPerPass,
}

impl TimingSource {
    pub fn describe(self) -> &'static str {
        match self {
            Self::GpuTimestamps => "GPU timestamp queries, one pass per dispatch",
            Self::WallClockPerPass => {
                "host wall-clock per dispatch (no TIMESTAMP_QUERY; includes submit overhead)"
            }
        }
    }
}

/// Dispatches timed per query-set fill (two timestamps each, within wgpu's 4096-query cap).
const DISPATCHES_PER_SET: usize = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;

struct Timestamps {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

/// Times dispatches one by one (see the module docs).
pub struct Profiler {
    timestamps: Option<Timestamps>,
}

fn wall_clock_forced() -> bool {
    matches!(
        std::env::var("DDIM_PROFILE_WALLCLOCK").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

impl Profiler {
    /// Uses timestamp queries when the device has `TIMESTAMP_QUERY` (and
    /// `DDIM_PROFILE_WALLCLOCK` is not set), host wall-clock otherwise.
    pub fn new(ctx: &GpuContext) -> Self {
        let usable = ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) && !wall_clock_forced();
        let timestamps = usable.then(|| {
            let count = 2 * DISPATCHES_PER_SET as u32;
            Timestamps {
                query_set: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profiler timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                }),
                resolve: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profiler resolve"),
                    size: count as u64 * 8,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                period_ns: ctx.queue.get_timestamp_period() as f64,
            }
        });
        Self { timestamps }
    }

    pub fn source(&self) -> TimingSource {
        if self.timestamps.is_some() {
            TimingSource::GpuTimestamps
        } else {
            TimingSource::WallClockPerPass
        }
    }

    /// Runs `dispatches` in order (encoded for sampling step `step`), one pass each, and returns
    /// each one's time in nanoseconds.
    pub fn time_each(
        &self,
        ctx: &GpuContext,
        dispatches: &[&Dispatch],
        step: u32,
    ) -> Result<Vec<f64>> {
        match &self.timestamps {
            Some(ts) => {
                let mut out = Vec::with_capacity(dispatches.len());
                for chunk in dispatches.chunks(DISPATCHES_PER_SET) {
                    out.extend(time_with_queries(ctx, ts, chunk, step)?);
                }
                Ok(out)
            }
            None => dispatches
                .iter()
                .map(|d| time_with_wall_clock(ctx, d, step))
                .collect(),
        }
    }

    /// Runs `dispatch` `repeats` times back to back (one pass each) and returns each run's time
    /// in nanoseconds: the building block of kernel micro-benchmarks.
    pub fn time_repeated(
        &self,
        ctx: &GpuContext,
        dispatch: &Dispatch,
        repeats: usize,
        step: u32,
    ) -> Result<Vec<f64>> {
        let list = vec![dispatch; repeats];
        self.time_each(ctx, &list, step)
    }
}

fn time_with_queries(
    ctx: &GpuContext,
    ts: &Timestamps,
    dispatches: &[&Dispatch],
    step: u32,
) -> Result<Vec<f64>> {
    let n = dispatches.len();
    ensure!(
        n <= DISPATCHES_PER_SET,
        "profiler: {n} dispatches in one query set"
    );
    if n == 0 {
        return Ok(Vec::new());
    }
    let queries = 2 * n as u32;
    let bytes = queries as u64 * 8;
    let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("profiler read back"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("profiled dispatches"),
        });
    for (i, d) in dispatches.iter().enumerate() {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(&d.label),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &ts.query_set,
                beginning_of_pass_write_index: Some(2 * i as u32),
                end_of_pass_write_index: Some(2 * i as u32 + 1),
            }),
        });
        d.encode(&mut pass, step);
    }
    encoder.resolve_query_set(&ts.query_set, 0..queries, &ts.resolve, 0);
    encoder.copy_buffer_to_buffer(&ts.resolve, 0, &readback, 0, Some(bytes));
    ctx.validated("submitting profiled dispatches", || {
        ctx.queue.submit([encoder.finish()]);
    })?;
    let ticks = read_u64(ctx, &readback)?;
    Ok(ticks
        .chunks_exact(2)
        .map(|p| p[1].saturating_sub(p[0]) as f64 * ts.period_ns)
        .collect())
}

fn read_u64(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Result<Vec<u64>> {
    let slice = buffer.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait_idle()?;
    rx.recv()
        .context("timestamp read-back callback never ran")?
        .map_err(|e| anyhow!("mapping the timestamp buffer: {e}"))?;
    let values = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| anyhow!("timestamp range: {e:?}"))?;
        bytemuck::pod_collect_to_vec::<u8, u64>(&view)
    };
    buffer.unmap();
    Ok(values)
}

fn time_with_wall_clock(ctx: &GpuContext, d: &Dispatch, step: u32) -> Result<f64> {
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(&d.label),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(&d.label),
            timestamp_writes: None,
        });
        d.encode(&mut pass, step);
    }
    let command = encoder.finish();
    let start = Instant::now();
    ctx.queue.submit([command]);
    ctx.wait_idle()?;
    Ok(start.elapsed().as_nanos() as f64)
}

/// Wall-clock of one submission holding `dispatches` in a single pass (the way a plan runs),
/// split into host encoding time and submit-to-completion time, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct PassTiming {
    pub encode_ns: f64,
    pub execute_ns: f64,
}

/// Encodes `dispatches` into one pass (timing the encoding on the host), submits, and waits.
pub fn time_one_pass(ctx: &GpuContext, dispatches: &[&Dispatch], step: u32) -> Result<PassTiming> {
    let start = Instant::now();
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("timed pass"),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("timed pass"),
            timestamp_writes: None,
        });
        for d in dispatches {
            d.encode(&mut pass, step);
        }
    }
    let command = encoder.finish();
    let encode_ns = start.elapsed().as_nanos() as f64;
    let start = Instant::now();
    ctx.queue.submit([command]);
    ctx.wait_idle()?;
    Ok(PassTiming {
        encode_ns,
        execute_ns: start.elapsed().as_nanos() as f64,
    })
}
