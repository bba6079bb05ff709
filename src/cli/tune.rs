//! `ddim tune`: times every kernel variant at the model's shapes on one adapter, prints each
//! candidate's time and the choice, and keeps the choices in the tuning cache (the same pass
//! every GPU command runs on first use with `--tune auto`).

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use super::model_args::{AdapterArgs, ModelArgs};
use crate::bench::suite::TuningReport;
use ddim_wgpu::gpu::plan::{PlanOptions, UNetPlan};
use ddim_wgpu::gpu::tune::{Choice, Source};
use ddim_wgpu::gpu::{GpuContext, TuneMode};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Images per forward: the batch the tuned runs will use (`ddim sample` runs its 16
    /// images as one batch where they fit).
    #[arg(long, default_value_t = 16, value_parser = super::numbers::at_least::<usize, 1>)]
    pub batch: usize,
    /// Seed of the random weights (--arch).
    #[arg(long, default_value_t = 0, value_parser = super::numbers::at_least::<u64, 0>)]
    pub seed: u64,
    /// Print {"adapter", "from_cache", "seconds", "choices": [...]} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Output<'a> {
    adapter: String,
    mode: String,
    /// Every choice came from the cache: nothing was timed.
    from_cache: bool,
    /// Seconds spent timing candidates.
    seconds: f64,
    /// Seconds to build the plan, tuning included.
    plan_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<&'a str>,
    choices: &'a [Choice],
}

pub fn run(args: Args) -> Result<()> {
    if args.adapter.tune == TuneMode::Off {
        bail!(
            "`ddim tune --tune off` has nothing to do: use auto (time what is not cached) or force"
        );
    }
    let loaded = args.model.load(args.seed)?;
    super::fits::check_batch(&loaded.pipeline.unet, args.batch, false)?;
    let pipe = &loaded.pipeline;
    let ctx = GpuContext::new(&args.adapter.choice()?)?;
    let weights = pipe.gpu_weights(&ctx)?;
    // The variants depend on the shapes, not on the timesteps: one step is enough.
    let start = Instant::now();
    let timesteps = vec![vec![999.0; args.batch]];
    let plan = UNetPlan::new(
        &ctx,
        &pipe.unet,
        &weights,
        &timesteps,
        PlanOptions::default(),
    )?;
    drop(plan);
    let plan_seconds = start.elapsed().as_secs_f64();
    let report = TuningReport::of(&ctx);
    let out = Output {
        adapter: ctx.describe(),
        mode: report.mode.clone(),
        from_cache: report.from_cache,
        seconds: report.seconds,
        plan_seconds,
        cache: ctx.tuner.cache_file().map(|p| p.display().to_string()),
        warning: report.warning.as_deref(),
        choices: &report.choices,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("adapter: {}", out.adapter);
    println!(
        "model: {}, batch {}, precision {}",
        loaded.label, args.batch, ctx.precision
    );
    if let Some(w) = out.warning {
        println!("warning: {w}");
    }
    for c in out.choices {
        let times = match c.source {
            Source::Fixed => "(only one applies)".to_string(),
            _ => c
                .candidates
                .iter()
                .map(|k| format!("{} {:.3} ms", k.variant, k.ms))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let rejected: String = c
            .rejected
            .iter()
            .map(|r| format!("; rejected {} ({})", r.variant, r.reason))
            .collect();
        let times = times + &rejected;
        println!(
            "{:<18} {:<48} -> {:<8} {:<8} {times}",
            c.kernel,
            c.shape,
            c.variant,
            source_name(c.source)
        );
    }
    println!(
        "{} shapes, {} timed in {:.2} s (plan built in {:.2} s){}",
        out.choices.len(),
        report
            .choices
            .iter()
            .filter(|c| c.source == Source::Measured)
            .count(),
        out.seconds,
        plan_seconds,
        match &out.cache {
            Some(p) => format!("; cache {p}"),
            None => String::new(),
        }
    );
    Ok(())
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Measured => "timed",
        Source::Cache => "cached",
        Source::Fixed => "fixed",
    }
}

/// One line for reports: the mode, where the choices came from, and how many shapes run with
/// each variant of each kernel.
pub fn summary(t: &TuningReport) -> String {
    let mut counts: Vec<(String, String, usize)> = Vec::new();
    for c in &t.choices {
        match counts
            .iter_mut()
            .find(|(k, v, _)| *k == c.kernel && *v == c.variant)
        {
            Some(entry) => entry.2 += 1,
            None => counts.push((c.kernel.clone(), c.variant.clone(), 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, v, n)| format!("{k} {v}×{n}"))
        .collect();
    let how = if t.mode == "off" {
        "tuning off (fixed rule)".to_string()
    } else if t.from_cache {
        format!("tuning {} (all from the cache)", t.mode)
    } else {
        format!("tuning {} ({:.2} s timing)", t.mode, t.seconds)
    };
    format!("{how}: {}", parts.join(", "))
}
