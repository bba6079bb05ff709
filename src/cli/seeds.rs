//! `ddim sample --seeds SET`: one generator per image, a shard of the set, and a seed folder
//! (`--out-dir`) that a rerun or the other shards fill in (`ddim_wgpu::seed_dir`).

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use ddim_wgpu::image_io::save_grid;
use ddim_wgpu::model::tensor_io;
use ddim_wgpu::pipeline::SampleRequest;
use ddim_wgpu::sampling::{Progress, SeedSet, Shard};
use ddim_wgpu::seed_dir::{self, Manifest};
use ddim_wgpu::Tensor;

use super::sample::{check_outputs, load_pipeline, Args};

/// The shard this process makes: `--shard`, else the job runner's environment, else all.
fn shard_of(args: &Args) -> Result<(Shard, String)> {
    if let Some(text) = &args.shard {
        return Ok((Shard::parse(text)?, "--shard".into()));
    }
    let var = |name: &str| std::env::var(name).ok();
    Ok(match Shard::from_env(&var, args.shards)? {
        Some((shard, runner)) => (shard, runner.to_string()),
        None => (Shard::WHOLE, "the whole set".into()),
    })
}

pub fn run(args: Args) -> Result<()> {
    let set = SeedSet::parse(args.seeds.as_deref().unwrap_or_default()).context("--seeds")?;
    let (shard, source) = shard_of(&args)?;
    let part = set.shard(shard);
    ensure!(
        (0.0..=1.0).contains(&args.eta),
        "--eta must be in [0, 1] (0 = DDIM, 1 = DDPM-like), got {}",
        args.eta
    );
    ensure!(args.batch != Some(0), "--batch must be at least 1");
    // Without a folder the images go to a grid (all of the shard in memory, as without --seeds).
    let grid_out = match (&args.out, &args.out_dir) {
        (Some(p), _) => Some(p.clone()),
        (None, None) => Some("samples.png".into()),
        (None, Some(_)) => None,
    };
    args.prepare_out_dir()?;
    let outputs: Vec<(&str, &Path)> = grid_out
        .iter()
        .map(|p| ("--out", p.as_path()))
        .chain(
            args.save_tensor
                .iter()
                .map(|p| ("--save-tensor", p.as_path())),
        )
        .collect();
    check_outputs(&outputs)?;
    let (pipe, model_name) = load_pipeline(args.model.as_deref(), &args.scheduler)?;
    let (c, h, w) = (pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w);
    let settings = args.settings(&pipe);
    let sampler = settings.sampler;
    let steps = pipe.steps(&settings)?;

    let todo: Vec<u64> = match &args.out_dir {
        Some(dir) => {
            let manifest = Manifest::new(
                &model_name,
                &pipe.model.weights.sha256(),
                sampler.as_str(),
                args.steps,
                args.eta,
                &format!("{:?}", args.rng).to_ascii_lowercase(),
                &format!("{steps:?}"),
                &set,
                shard.count,
                [c, h, w],
            );
            manifest.claim(dir)?;
            seed_dir::missing(dir, &part, [c, h, w])?
        }
        None => part.iter().collect(),
    };
    if !args.quiet {
        let done = part.len() - todo.len() as u64;
        eprintln!(
            "shard {shard} ({source}): seeds {part} of {set}, {} image(s){}",
            part.len(),
            match done {
                0 => String::new(),
                d => format!("; {d} already in {}, making {}", folder(&args), todo.len()),
            }
        );
    }
    if todo.is_empty() {
        return Ok(());
    }

    let device = args.device.open()?;
    let bar = image_bar(args.quiet, todo.len());
    let mut request = SampleRequest {
        settings,
        num: todo.len(),
        batch: args.batch,
        seed: 0,
        rng: args.rng,
        seeds: Some(todo.clone()),
        init_noise: None,
        progress: Some(image_progress(&bar, todo.len())),
    };
    request.batch = Some(pipe.batch_for(&device, &request)?);
    let started = Instant::now();
    let keep_all = grid_out.is_some() || args.save_tensor.is_some();
    let mut kept = Vec::new();
    pipe.sample_chunks(&device, &request, &mut |range, x| {
        if let Some(dir) = &args.out_dir {
            for (i, &seed) in todo[range.clone()].iter().enumerate() {
                seed_dir::write_image(dir, seed, x, i)?;
            }
        }
        if keep_all {
            kept.extend_from_slice(&x.data);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if keep_all {
        let images = Tensor::new(vec![todo.len(), c, h, w], kept)?;
        if let Some(p) = &grid_out {
            save_grid(p, &images, None)?;
        }
        if let Some(p) = &args.save_tensor {
            tensor_io::write_tensor(p, "sample", &images)?;
        }
    }
    if !args.quiet {
        println!(
            "made {} image(s) of seeds {part} in {secs:.1} s ({:.2} images/s) into {} ({} {} steps, \
             batch {}, rng {:?}) on {}",
            todo.len(),
            todo.len() as f64 / secs.max(1e-9),
            [args.out_dir.as_ref().map(|d| d.display().to_string()), grid_out.map(|p| p.display().to_string())]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" and "),
            sampler.as_str(),
            args.steps,
            request.batch.unwrap_or_default(),
            args.rng,
            device.describe(),
        );
    }
    Ok(())
}

fn folder(args: &Args) -> String {
    args.out_dir
        .as_deref()
        .map_or_else(String::new, |d: &Path| d.display().to_string())
}

/// A bar over the shard's images (images/s, ETA) on stderr; hidden with --quiet or off a terminal.
fn image_bar(quiet: bool, images: usize) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(images as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .expect("a valid progress template"),
    );
    bar
}

/// Model evaluations done, as images done (a chunk counts as it goes).
fn image_progress(bar: &indicatif::ProgressBar, images: usize) -> Progress {
    let bar = bar.clone();
    Progress::new(move |done, total| {
        bar.set_position((done as u128 * images as u128 / total.max(1) as u128) as u64);
    })
}
