//! `ddim sample --seeds SET`: one generator per image, a shard of the set, and a seed folder
//! (`--out-dir`) that a rerun or the other shards fill in (`ddim_wgpu::seed_dir`).
//!
//! The shard is walked lazily, a window of images at a time: a set of any size starts making
//! images at once and holds one window of seeds in memory, not the set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use ddim_wgpu::image_io::save_grid;
use ddim_wgpu::model::{tensor_io, ClassLabels};
use ddim_wgpu::pipeline::{Noise, Pipeline, SampleRequest, TrajectoryFrames};
use ddim_wgpu::sampling::{Progress, SeedSet, Shard};
use ddim_wgpu::seed_dir::{Identity, Manifest, RunSettings, SeedFolder};
use ddim_wgpu::Tensor;

use super::flags::batch_hint;
use super::sample_args::{check_outputs, load_pipeline, Args};

/// Images per window, in batches: enough that setting up a run per window costs little.
const WINDOW_BATCHES: usize = 16;
/// The most image data (f32) a run without `--out-dir` may keep for its grid or tensor.
const KEEP_LIMIT_BYTES: u64 = 4 << 30;

/// The shard this process makes: `--shard`, else the job runner's environment, else all.
fn shard_of(args: &Args) -> Result<(Shard, String)> {
    if let Some(text) = &args.shard {
        return Ok((Shard::parse(text).context("--shard")?, "--shard".into()));
    }
    let var = |name: &str| std::env::var(name).ok();
    let from_env = Shard::from_env(&var, args.shards, &scontrol_tasks).context(
        "the shard from the job runner's environment (--shards N gives the count; \
             --shard I/N chooses the shard)",
    )?;
    Ok(match from_env {
        Some((shard, runner)) => (shard, runner.to_string()),
        None => (Shard::WHOLE, "the whole set".into()),
    })
}

/// What `scontrol -o show job JOB` says about a Slurm array job's tasks; None when it cannot
/// be asked or does not answer.
fn scontrol_tasks(job: &str) -> Option<String> {
    if job.is_empty() || !job.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let out = std::process::Command::new("scontrol")
        .args(["-o", "show", "job", job])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The manifest of this run: every setting that determines the pixels, and notes for people.
fn manifest(
    args: &Args,
    pipe: &Pipeline,
    model_name: &str,
    set: &SeedSet,
    shards: u64,
) -> Result<Manifest> {
    let settings = args.settings(pipe);
    let identity = Identity::of(&RunSettings {
        model_config: &pipe.model.config,
        weights_sha256: &pipe.model.weights.sha256(),
        scheduler: &pipe.scheduler,
        settings: &settings,
        rng: args.rng,
        precision: args.device.adapter.choice()?.precision,
        image: [pipe.unet.input.c, pipe.unet.input.h, pipe.unet.input.w],
        seeds: set,
        shards,
        class: super::flags::labels_of(&args.class).as_ref(),
        guidance: pipe
            .guided(
                &args.guidance.guidance(),
                super::flags::labels_of(&args.class).as_ref(),
            )?
            .as_ref(),
    });
    let notes = BTreeMap::from([
        ("model".to_string(), model_name.to_string()),
        (
            "made by".to_string(),
            format!("ddim {}", env!("CARGO_PKG_VERSION")),
        ),
    ]);
    Ok(Manifest::new(identity, notes))
}

/// `--class` per seed: one label for every seed, or one per seed of the whole set in its order
/// (so a shard or a resumed run gives each seed the label it had).
enum SeedLabels {
    None,
    All(u32),
    PerSeed(BTreeMap<u64, u32>),
}

impl SeedLabels {
    fn of(args: &Args, set: &SeedSet) -> Result<Self> {
        let Some(class) = &args.class else {
            return Ok(Self::None);
        };
        Ok(match class.0.as_slice() {
            [one] => Self::All(*one),
            many => {
                ensure!(
                    many.len() as u64 == set.len(),
                    "--class gives {} labels for the {} seeds of --seeds {set}: give one label for \
                     all seeds or one per seed",
                    many.len(),
                    set.len()
                );
                Self::PerSeed(set.iter().zip(many.iter().copied()).collect())
            }
        })
    }

    /// The labels of `seeds`, one each.
    fn of_seeds(&self, seeds: &[u64]) -> Option<ClassLabels> {
        match self {
            Self::None => None,
            Self::All(l) => Some(ClassLabels::Indices(vec![*l])),
            Self::PerSeed(map) => {
                Some(ClassLabels::Indices(seeds.iter().map(|s| map[s]).collect()))
            }
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let set = SeedSet::parse(args.seeds.as_deref().unwrap_or_default()).context("--seeds")?;
    let (shard, source) = shard_of(&args)?;
    let part = set.shard(shard);
    let labels = SeedLabels::of(&args, &set)?;
    ensure!(
        (0.0..=1.0).contains(&args.eta),
        "--eta must be in [0, 1] (0 = DDIM, 1 = DDPM-like), got {}",
        args.eta
    );
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
    let keep_all = grid_out.is_some() || args.save_tensor.is_some();
    if keep_all {
        let per_image = (c * h * w * 4) as u64;
        let fit = KEEP_LIMIT_BYTES / per_image;
        ensure!(
            part.len() <= fit,
            "--seeds {part} would keep all {} images in memory for {} ({:.1} GiB of the {} GiB \
             allowed; at most {fit} fit); write them one PNG per seed with --out-dir DIR (and no \
             --out or --save-tensor), in bounded memory",
            part.len(),
            if args.save_tensor.is_some() {
                "--save-tensor"
            } else {
                "the grid"
            },
            part.len() as f64 * per_image as f64 / f64::from(1u32 << 30),
            KEEP_LIMIT_BYTES >> 30,
        );
    }
    let settings = args.settings(&pipe);
    let sampler = settings.sampler;
    pipe.steps(&settings)?;
    let folder = match &args.out_dir {
        Some(dir) => Some(SeedFolder::claim(
            dir,
            &manifest(&args, &pipe, &model_name, &set, shard.count)?,
        )?),
        None => None,
    };
    if !args.quiet {
        eprintln!(
            "shard {shard} ({source}): seeds {part} of {set}, {} image(s)",
            part.len()
        );
    }

    let device = args.device.open()?;
    let mut request = SampleRequest {
        settings,
        // Only the count matters for choosing the batch; each window gets its own seeds.
        noise: Noise::Seed {
            seed: 0,
            num: usize::try_from(part.len()).unwrap_or(usize::MAX).max(1),
        },
        rng: args.rng,
        batch: args.batch,
        trajectory: TrajectoryFrames::Off,
        progress: None,
        // Each window gets its seeds' labels.
        labels: None,
        guidance: args.guidance.guidance(),
    };
    // One batch for every window, chosen once for a window's worth of images.
    let batch = pipe
        .batch_for(&device, &request)
        .map_err(|e| batch_hint(e, args.batch))?;
    let window = batch.saturating_mul(WINDOW_BATCHES).max(1);
    request.batch = Some(batch);

    let bar = image_bar(args.quiet, part.len());
    let started = Instant::now();
    let (mut made, mut already) = (0u64, 0u64);
    let mut kept = Vec::new();
    let mut seeds = part.iter();
    loop {
        let mut todo = Vec::with_capacity(window);
        while todo.len() < window {
            let Some(seed) = seeds.next() else { break };
            match &folder {
                Some(f) if f.has(seed)? => {
                    already += 1;
                    bar.inc(1);
                }
                _ => todo.push(seed),
            }
        }
        if todo.is_empty() {
            break;
        }
        request.noise = Noise::Seeds(todo.clone());
        request.labels = labels.of_seeds(&todo);
        request.progress = Some(window_progress(&bar, todo.len()));
        pipe.sample_chunks(&device, &request, &mut |range, x| {
            if let Some(f) = &folder {
                for (i, &seed) in todo[range.clone()].iter().enumerate() {
                    f.write_image(seed, x, i)?;
                }
            }
            if keep_all {
                kept.extend_from_slice(&x.data);
            }
            Ok(())
        })
        .map_err(|e| batch_hint(e, args.batch))?;
        made += todo.len() as u64;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if made == 0 {
        if !args.quiet {
            println!(
                "nothing to make: {}",
                match &args.out_dir {
                    Some(d) => format!(
                        "all {already} image(s) of seeds {part} are in {}",
                        d.display()
                    ),
                    None => format!("shard {shard} of {set} holds no seed"),
                }
            );
        }
        return Ok(());
    }
    if keep_all {
        let images = Tensor::new(vec![made as usize, c, h, w], kept)?;
        if let Some(p) = &grid_out {
            save_grid(p, &images, None)?;
        }
        if let Some(p) = &args.save_tensor {
            tensor_io::write_tensor(p, "sample", &images)?;
        }
    }
    if !args.quiet {
        let places: Vec<String> = [args.out_dir.clone(), grid_out]
            .into_iter()
            .flatten()
            .map(|p: PathBuf| p.display().to_string())
            .collect();
        println!(
            "made {made} image(s) of seeds {part}{} in {secs:.1} s ({:.2} images/s) into {} ({} \
             {} steps, batch {batch}, rng {:?}) on {}",
            match (already, &args.out_dir) {
                (0, _) | (_, None) => String::new(),
                (n, Some(d)) => format!("; {n} already in {}", d.display()),
            },
            made as f64 / secs.max(1e-9),
            places.join(" and "),
            sampler.as_str(),
            args.steps,
            args.rng,
            device.describe(),
        );
    }
    Ok(())
}

/// A bar over the shard's images (images/s, ETA) on stderr; hidden with --quiet or off a terminal.
fn image_bar(quiet: bool, images: u64) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(images);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .expect("a valid progress template"),
    );
    bar
}

/// Model evaluations done in a window of `images`, as images done on `bar` (a chunk counts as
/// it goes), after what the bar showed when the window began.
fn window_progress(bar: &indicatif::ProgressBar, images: usize) -> Progress {
    let bar = bar.clone();
    let start = bar.position();
    Progress::new(move |done, total| {
        let part = done as u128 * images as u128 / total.max(1) as u128;
        bar.set_position(start + part as u64);
    })
}
