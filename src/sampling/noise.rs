//! The noise a run consumes, in diffusers' draw order.
//!
//! Noise follows diffusers' pipelines so `--rng torch` replays `DDIMPipeline(generator=
//! torch.manual_seed(seed))`: one draw of shape [N, C, H, W] for x_T, then — DDIM with eta > 0 —
//! one draw of the same shape at every step, or — DDPM — one at every step with t > 0. Every
//! device consumes exactly the same values, so runs can be compared element for element.
//!
//! With one seed per image (`--seeds`), image i draws the same sequence from a generator of its
//! own, seeded with its seed: what `DDIMPipeline(batch_size=1, generator=torch.manual_seed(s))`
//! draws. An image then does not depend on the run's size, its chunks, device or shards.

use super::steps::SamplerSteps;
use crate::rng::{NoiseSource, RngKind};
use crate::Tensor;
use anyhow::{bail, ensure, Context, Result};
use std::ops::Range;

/// Where a run's noise comes from: x_T and, for samplers that draw at each step (DDIM with
/// eta > 0, DDPM), the per-step noise.
#[derive(Clone, Debug)]
pub enum Noise {
    /// `num` images from one generator seeded with `seed`, drawn as diffusers' pipelines draw a
    /// batch: the image at index i depends on the run's size.
    Seed { seed: u64, num: usize },
    /// One image per seed, each from a generator of its own: the image of seed s is
    /// `DDIMPipeline(batch_size=1, generator=torch.manual_seed(s))`'s, whatever else runs.
    Seeds(Vec<u64>),
    /// x_T given, NCHW, one image per entry of its first axis; the per-step noise comes from one
    /// generator seeded with `seed` (its stream then starts with the first step's draw).
    Given { x_t: Tensor, seed: u64 },
}

impl Noise {
    /// The number of images this noise makes.
    pub fn num(&self) -> usize {
        match self {
            Self::Seed { num, .. } => *num,
            Self::Seeds(seeds) => seeds.len(),
            Self::Given { x_t, .. } => x_t.shape.first().copied().unwrap_or(0),
        }
    }
}

/// The noise of a run: its [`Noise`] drawn from generators of one kind, in pipeline order.
#[derive(Clone, Debug)]
pub struct NoisePlan {
    pub kind: RngKind,
    pub noise: Noise,
    /// Elements per image (C·H·W).
    pub per_image: usize,
    /// For each step, whether it draws noise.
    pub step_draws: Vec<bool>,
}

/// The noise a chunk of images consumes.
#[derive(Clone)]
pub struct ChunkNoise {
    /// x_T for the chunk, [len · per_image].
    pub initial: Vec<f32>,
    /// Each step's slice of that step's draw, drawn on demand.
    pub steps: StepNoise,
}

impl NoisePlan {
    pub fn new(kind: RngKind, noise: Noise, per_image: usize, steps: &SamplerSteps) -> Self {
        let step_draws = (0..steps.len()).map(|i| steps.draws_noise(i)).collect();
        Self {
            kind,
            noise,
            per_image,
            step_draws,
        }
    }

    /// The number of images.
    pub fn num(&self) -> usize {
        self.noise.num()
    }

    /// The noise of the images in `range`: x_T now, each step's noise when its step comes
    /// ([`StepNoise`]). A shared stream is replayed from its seed and every draw covers all
    /// `num` images (as torch draws the whole batch at once), so a chunk costs one full replay.
    pub fn chunk(&self, range: Range<usize>) -> Result<ChunkNoise> {
        let num = self.num();
        ensure!(
            range.end <= num && range.start < range.end,
            "bad image range {range:?}"
        );
        let (seed, given) = match &self.noise {
            Noise::Seeds(seeds) => return self.chunk_per_seed(&seeds[range]),
            Noise::Seed { seed, .. } => (*seed, None),
            Noise::Given { x_t, seed } => (*seed, Some(x_t)),
        };
        let mut rng = NoiseSource::new(self.kind, seed);
        let total = num * self.per_image;
        let slice = range.start * self.per_image..range.end * self.per_image;
        let initial = match given {
            Some(x) => {
                ensure!(
                    x.numel() == total,
                    "the given initial noise has {} values, {num} images need {total}",
                    x.numel()
                );
                x.data[slice.clone()].to_vec()
            }
            None => {
                rng.randn(total).context("drawing the initial noise x_T")?[slice.clone()].to_vec()
            }
        };
        Ok(ChunkNoise {
            initial,
            steps: StepNoise {
                draws: self.step_draws.clone(),
                next: 0,
                source: Source::Shared { rng, total, slice },
            },
        })
    }

    /// Each image's own stream, laid out as one chunk.
    fn chunk_per_seed(&self, seeds: &[u64]) -> Result<ChunkNoise> {
        let n = self.per_image;
        let mut initial = Vec::with_capacity(seeds.len() * n);
        let mut rngs = Vec::with_capacity(seeds.len());
        for &seed in seeds {
            let mut rng = NoiseSource::new(self.kind, seed);
            initial.extend(
                rng.randn(n)
                    .with_context(|| format!("drawing x_T of seed {seed}"))?,
            );
            rngs.push((seed, rng));
        }
        Ok(ChunkNoise {
            initial,
            steps: StepNoise {
                draws: self.step_draws.clone(),
                next: 0,
                source: Source::PerImage { rngs, per_image: n },
            },
        })
    }
}

/// A chunk's per-step noise, drawn when its step asks for it, so memory holds one step's draw
/// rather than the whole run's.
#[derive(Clone)]
pub struct StepNoise {
    /// For each step, whether it draws noise.
    draws: Vec<bool>,
    /// The next step to draw for.
    next: usize,
    source: Source,
}

#[derive(Clone)]
enum Source {
    /// No noise at all (given samples: inversion, decoding).
    None,
    /// One stream for the run: a step draws `total` values and the chunk keeps `slice`.
    Shared {
        rng: NoiseSource,
        total: usize,
        slice: Range<usize>,
    },
    /// One stream per image (seed, generator), `per_image` values each per step.
    PerImage {
        rngs: Vec<(u64, NoiseSource)>,
        per_image: usize,
    },
}

impl StepNoise {
    /// No noise for any of `steps` steps.
    pub fn none(steps: usize) -> Self {
        Self {
            draws: vec![false; steps],
            next: 0,
            source: Source::None,
        }
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.draws.len()
    }

    /// Step `s`'s noise, or None where it draws none. Steps come in ascending order, each once;
    /// the noise of steps skipped over is drawn and dropped, so the streams stay in place.
    pub fn step(&mut self, s: usize) -> Result<Option<Vec<f32>>> {
        ensure!(
            s >= self.next && s < self.draws.len(),
            "noise for step {s} asked after step {} of {}",
            self.next,
            self.draws.len()
        );
        while self.next < s {
            self.draw(self.next)?;
            self.next += 1;
        }
        self.next = s + 1;
        self.draw(s)
    }

    fn draw(&mut self, s: usize) -> Result<Option<Vec<f32>>> {
        if !self.draws[s] {
            return Ok(None);
        }
        Ok(Some(match &mut self.source {
            Source::None => bail!("step {s} draws noise but the chunk has no noise source"),
            Source::Shared { rng, total, slice } => rng
                .randn(*total)
                .with_context(|| format!("drawing the noise of step {s}"))?[slice.clone()]
            .to_vec(),
            Source::PerImage { rngs, per_image } => {
                let mut out = Vec::with_capacity(rngs.len() * *per_image);
                for (seed, rng) in rngs.iter_mut() {
                    out.extend(rng.randn(*per_image).with_context(|| {
                        format!("drawing the noise of step {s} for seed {seed}")
                    })?);
                }
                out
            }
        }))
    }

    /// Every step's noise at once.
    #[cfg(test)]
    pub fn collect(mut self) -> Result<Vec<Option<Vec<f32>>>> {
        (0..self.len()).map(|s| self.step(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SampleSettings;
    use crate::schedule::SchedulerConfig;

    #[test]
    fn chunks_slice_one_stream() {
        let cfg = SchedulerConfig::default();
        let settings = SampleSettings {
            eta: 1.0,
            steps: 3,
            ..Default::default()
        };
        let table = SamplerSteps::new(&cfg, &settings).unwrap();
        let plan = NoisePlan::new(RngKind::Torch, Noise::Seed { seed: 3, num: 5 }, 16, &table);
        let all = plan.chunk(0..5).unwrap();
        let tail = plan.chunk(2..5).unwrap();
        assert_eq!(&all.initial[32..], &tail.initial[..]);
        assert_eq!(all.steps.len(), 3);
        let (all_steps, tail_steps) = (all.steps.collect().unwrap(), tail.steps.collect().unwrap());
        assert_eq!(
            &all_steps[2].as_ref().unwrap()[32..],
            &tail_steps[2].as_ref().unwrap()[..]
        );
        // Asking for step 2 alone draws (and drops) steps 0 and 1 first.
        let mut lazy = plan.chunk(2..5).unwrap().steps;
        assert_eq!(lazy.step(2).unwrap(), tail_steps[2]);
        assert!(lazy.step(1).is_err());
        let det = SamplerSteps::new(
            &cfg,
            &SampleSettings {
                steps: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let plan0 = NoisePlan::new(RngKind::Torch, Noise::Seed { seed: 3, num: 5 }, 16, &det);
        let none = plan0.chunk(0..5).unwrap().steps.collect().unwrap();
        assert!(none.iter().all(|s| s.is_none()));
        // Without step noise x_T is the same first draw.
        assert_eq!(plan0.chunk(0..5).unwrap().initial, all.initial);
    }

    #[test]
    fn per_seed_images_do_not_depend_on_their_neighbours() {
        let cfg = SchedulerConfig::default();
        let settings = SampleSettings {
            eta: 0.5,
            steps: 4,
            ..Default::default()
        };
        let table = SamplerSteps::new(&cfg, &settings).unwrap();
        let many = NoisePlan::new(RngKind::Torch, Noise::Seeds(vec![7, 8, 9]), 16, &table);
        let alone = NoisePlan::new(RngKind::Torch, Noise::Seed { seed: 8, num: 1 }, 16, &table);
        let (a, b) = (many.chunk(1..2).unwrap(), alone.chunk(0..1).unwrap());
        assert_eq!(a.initial, b.initial);
        let b_steps = b.steps.collect().unwrap();
        assert_eq!(a.steps.collect().unwrap(), b_steps);
        let whole = many.chunk(0..3).unwrap();
        assert_eq!(&whole.initial[16..32], &b.initial[..]);
        for (w, s) in whole.steps.collect().unwrap().iter().zip(&b_steps) {
            assert_eq!(&w.as_ref().unwrap()[16..32], &s.as_ref().unwrap()[..]);
        }
    }

    #[test]
    fn given_initial_noise_replaces_the_first_draw() {
        let cfg = SchedulerConfig::default();
        let settings = SampleSettings {
            eta: 1.0,
            steps: 2,
            ..Default::default()
        };
        let table = SamplerSteps::new(&cfg, &settings).unwrap();
        let drawn = NoisePlan::new(RngKind::Torch, Noise::Seed { seed: 3, num: 2 }, 16, &table);
        let x_t = Tensor::new(vec![2, 1, 4, 4], (0..32).map(|i| i as f32).collect()).unwrap();
        let mut given = NoisePlan::new(RngKind::Torch, Noise::Given { x_t, seed: 3 }, 16, &table);
        let (a, b) = (drawn.chunk(0..2).unwrap(), given.chunk(1..2).unwrap());
        assert_eq!(b.initial, (16..32).map(|i| i as f32).collect::<Vec<_>>());
        // The step draws then start the stream: the first step gets what x_T would have been.
        assert_eq!(
            b.steps.collect().unwrap()[0].as_ref().unwrap()[..],
            a.initial[16..]
        );
        // x_T of the wrong size for its images' shape is refused, not sliced.
        given.noise = Noise::Given {
            x_t: Tensor::zeros(&[2, 1, 4, 3]),
            seed: 3,
        };
        assert!(given.chunk(0..2).is_err());
    }
}
