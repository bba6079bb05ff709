//! The sampling loop: DDIM (eta 0..1) or DDPM, on the CPU reference, and the noise it consumes.
//!
//! Noise follows diffusers' pipelines so `--rng torch` replays `DDIMPipeline(generator=
//! torch.manual_seed(seed))`: one draw of shape [N, C, H, W] for x_T, then — DDIM with eta > 0 —
//! one draw of the same shape at every step, or — DDPM — one at every step with t > 0. The GPU
//! sampler consumes exactly the same values, so the two can be compared element for element.

use crate::cpu::forward::forward;
use crate::model::{UNet, Weights};
use crate::rng::{NoiseSource, RngKind};
use crate::schedule::{
    ddim_step, ddim_table, ddpm_step, ddpm_table, inverse_step, inverse_table, DdimStep, DdpmStep,
    DdpmVariance, SchedulerConfig,
};
use crate::Tensor;
use anyhow::{ensure, Context, Result};
use std::ops::Range;

/// Which reverse process to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// DDIM (Song et al. 2021): deterministic at eta = 0, DDPM-like variance at eta = 1.
    Ddim,
    /// Ancestral DDPM (Ho et al. 2020) with the scheduler's variance_type.
    Ddpm,
}

/// What to run: sampler, number of steps, eta.
#[derive(Clone, Debug)]
pub struct SampleSettings {
    pub sampler: SamplerKind,
    pub steps: usize,
    /// DDIM's eta in [0, 1]; ignored by DDPM.
    pub eta: f64,
    /// diffusers' `use_clipped_model_output`: re-derive ε from the clipped x0.
    pub use_clipped_model_output: bool,
}

impl Default for SampleSettings {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Ddim,
            steps: 50,
            eta: 0.0,
            use_clipped_model_output: false,
        }
    }
}

/// The per-step coefficients of a run, in loop order.
#[derive(Clone, Debug)]
pub enum StepTable {
    Ddim(Vec<DdimStep>),
    Ddpm(Vec<DdpmStep>),
    /// DDIM inversion (x0 → x_T), diffusers' DDIMInverseScheduler.
    Inverse(Vec<DdimStep>),
}

impl StepTable {
    pub fn new(cfg: &SchedulerConfig, settings: &SampleSettings) -> Result<Self> {
        ensure!(settings.steps > 0, "the number of steps must be at least 1");
        Ok(match settings.sampler {
            SamplerKind::Ddim => Self::Ddim(ddim_table(cfg, settings.steps, settings.eta)?),
            SamplerKind::Ddpm => Self::Ddpm(ddpm_table(
                cfg,
                settings.steps,
                DdpmVariance::from_config(cfg)?,
            )?),
        })
    }

    /// The DDIM inversion table for `steps` steps.
    pub fn inverse(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        ensure!(steps > 0, "the number of steps must be at least 1");
        Ok(Self::Inverse(inverse_table(cfg, steps)?))
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Ddim(s) | Self::Inverse(s) => s.len(),
            Self::Ddpm(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The model timestep of step `i`.
    pub fn timestep(&self, i: usize) -> i64 {
        match self {
            Self::Ddim(s) | Self::Inverse(s) => s[i].t,
            Self::Ddpm(s) => s[i].t,
        }
    }

    /// Whether step `i` draws a noise tensor, exactly as diffusers does: DDIM draws at every
    /// step when eta > 0 (even where sigma is 0); DDPM draws when t > 0.
    pub fn draws_noise(&self, i: usize, eta: f64) -> bool {
        match self {
            Self::Ddim(_) => eta > 0.0,
            Self::Ddpm(s) => s[i].t > 0,
            Self::Inverse(_) => false,
        }
    }
}

/// The predicted x0 after chosen steps of a run (`ddim sample --save-trajectory`), filled by
/// the CPU and GPU samplers.
#[derive(Clone, Debug, Default)]
pub struct Trajectory {
    /// Step indices (ascending, in loop order) whose predicted x0 is kept.
    pub steps: Vec<usize>,
    /// One NCHW tensor of all images per entry of `steps`.
    pub frames: Vec<Tensor>,
}

impl Trajectory {
    /// Every `every`-th step of a `len`-step run (steps every-1, 2·every-1, ...) and always the
    /// last, whose prediction is the final image.
    pub fn every(len: usize, every: usize) -> Result<Self> {
        ensure!(len > 0, "a trajectory needs at least one step");
        ensure!(every > 0, "the trajectory interval must be at least 1 step");
        let mut steps: Vec<usize> = (every - 1..len).step_by(every).collect();
        if steps.last() != Some(&(len - 1)) {
            steps.push(len - 1);
        }
        Ok(Self {
            steps,
            frames: Vec::new(),
        })
    }

    /// Zeroed frames for `num` images of shape (c, h, w), after checking the steps against
    /// a `len`-step table.
    pub(crate) fn start(
        &mut self,
        len: usize,
        num: usize,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        ensure!(
            self.steps.windows(2).all(|p| p[0] < p[1]) && self.steps.iter().all(|&s| s < len),
            "trajectory steps must ascend and lie below {len}, got {:?}",
            self.steps
        );
        self.frames = vec![Tensor::zeros(&[num, c, h, w]); self.steps.len()];
        Ok(())
    }

    /// Stores frame `k` of the images `range` (their NCHW values, `per_image` each).
    pub(crate) fn store(&mut self, k: usize, range: Range<usize>, per_image: usize, x0: &[f32]) {
        self.frames[k].data[range.start * per_image..range.end * per_image].copy_from_slice(x0);
    }
}

/// The noise of a run of `num` images: x_T and the per-step draws, in pipeline order.
#[derive(Clone, Debug)]
pub struct NoisePlan {
    pub kind: RngKind,
    pub seed: u64,
    pub num: usize,
    /// Elements per image (C·H·W).
    pub per_image: usize,
    /// For each step, whether it draws noise.
    pub step_draws: Vec<bool>,
    /// x_T for all images given by the user (`--init-noise`); the stream then starts with the
    /// per-step draws.
    pub initial_override: Option<Vec<f32>>,
}

/// The noise a chunk of images consumes.
#[derive(Clone, Debug)]
pub struct ChunkNoise {
    /// x_T for the chunk, [len · per_image].
    pub initial: Vec<f32>,
    /// One entry per step: the chunk's slice of that step's draw, or None when the step draws none.
    pub steps: Vec<Option<Vec<f32>>>,
}

impl NoisePlan {
    pub fn new(
        kind: RngKind,
        seed: u64,
        num: usize,
        per_image: usize,
        table: &StepTable,
        eta: f64,
    ) -> Self {
        let step_draws = (0..table.len())
            .map(|i| table.draws_noise(i, eta))
            .collect();
        Self {
            kind,
            seed,
            num,
            per_image,
            step_draws,
            initial_override: None,
        }
    }

    /// Checks that the plan's images fit `unet` and that the model can be sampled from at all
    /// (its output has the shape of its input); shared by the CPU and GPU samplers.
    pub fn check_model(&self, unet: &UNet) -> Result<()> {
        let (c, h, w) = (unet.input.c, unet.input.h, unet.input.w);
        ensure!(
            self.per_image == c * h * w,
            "noise plan is for {} values per image, the model takes {}",
            self.per_image,
            c * h * w
        );
        ensure!(
            (unet.output.c, unet.output.h, unet.output.w) == (c, h, w),
            "the model outputs {} but samples are {c}x{h}x{w}: cannot sample with it",
            unet.output
        );
        Ok(())
    }

    /// Replays the stream from the seed and keeps the images in `range`. Every draw covers all
    /// `num` images (as torch draws the whole batch at once), so a chunk costs one full replay.
    pub fn chunk(&self, range: Range<usize>) -> Result<ChunkNoise> {
        ensure!(
            range.end <= self.num && range.start < range.end,
            "bad image range {range:?}"
        );
        let mut rng = NoiseSource::new(self.kind, self.seed);
        let total = self.num * self.per_image;
        let slice = range.start * self.per_image..range.end * self.per_image;
        let initial =
            rng.randn(total).context("drawing the initial noise x_T")?[slice.clone()].to_vec();
        let mut steps = Vec::with_capacity(self.step_draws.len());
        for (i, &draws) in self.step_draws.iter().enumerate() {
            steps.push(if draws {
                let d = rng
                    .randn(total)
                    .with_context(|| format!("drawing the noise of step {i}"))?;
                Some(d[slice.clone()].to_vec())
            } else {
                None
            });
        }
        Ok(ChunkNoise { initial, steps })
    }
}

/// Runs the reverse process on the CPU reference from `x` (x_T, NCHW) and returns x0 in [-1, 1]
/// (not clamped). `on_step(i, pred_x0)` is called after every step with the predicted x0.
#[allow(clippy::too_many_arguments)]
pub fn sample_cpu(
    unet: &UNet,
    weights: &Weights,
    cfg: &SchedulerConfig,
    settings: &SampleSettings,
    table: &StepTable,
    mut x: Tensor,
    step_noise: &[Option<Vec<f32>>],
    on_step: &mut dyn FnMut(usize, &[f32]),
) -> Result<Tensor> {
    let batch = x.shape[0];
    ensure!(
        step_noise.len() == table.len(),
        "noise for {} steps, table has {}",
        step_noise.len(),
        table.len()
    );
    for i in 0..table.len() {
        let t = table.timestep(i);
        let eps = forward(unet, weights, &x, &[t as f32])
            .with_context(|| format!("U-Net at step {i} (t = {t})"))?;
        let noise = step_noise[i].as_deref();
        let out = match table {
            StepTable::Ddim(s) => ddim_step(
                cfg,
                &s[i],
                &eps.data,
                &x.data,
                batch,
                settings.use_clipped_model_output,
                noise,
            )?,
            StepTable::Ddpm(s) => ddpm_step(cfg, &s[i], &eps.data, &x.data, batch, noise)?,
            StepTable::Inverse(s) => inverse_step(cfg, &s[i], &eps.data, &x.data, batch)?,
        };
        x.data = out.prev_sample;
        on_step(i, &out.pred_original_sample);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trajectory_keeps_every_kth_step_and_the_last() {
        assert_eq!(Trajectory::every(10, 3).unwrap().steps, [2, 5, 8, 9]);
        assert_eq!(Trajectory::every(10, 5).unwrap().steps, [4, 9]);
        assert_eq!(
            Trajectory::every(10, 1).unwrap().steps,
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(Trajectory::every(3, 50).unwrap().steps, [2]);
        assert!(Trajectory::every(10, 0).is_err());
        assert!(Trajectory::every(0, 1).is_err());
        let mut bad = Trajectory {
            steps: vec![3, 1],
            frames: vec![],
        };
        assert!(bad.start(10, 1, 1, 2, 2).is_err());
    }

    #[test]
    fn chunks_slice_one_stream() {
        let cfg = SchedulerConfig::default();
        let settings = SampleSettings {
            eta: 1.0,
            steps: 3,
            ..Default::default()
        };
        let table = StepTable::new(&cfg, &settings).unwrap();
        let plan = NoisePlan::new(RngKind::Torch, 3, 5, 16, &table, settings.eta);
        let all = plan.chunk(0..5).unwrap();
        let tail = plan.chunk(2..5).unwrap();
        assert_eq!(&all.initial[32..], &tail.initial[..]);
        assert_eq!(all.steps.len(), 3);
        assert_eq!(
            &all.steps[2].as_ref().unwrap()[32..],
            &tail.steps[2].as_ref().unwrap()[..]
        );
        let det = StepTable::new(
            &cfg,
            &SampleSettings {
                steps: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let plan0 = NoisePlan::new(RngKind::Torch, 3, 5, 16, &det, 0.0);
        assert!(plan0.chunk(0..5).unwrap().steps.iter().all(|s| s.is_none()));
        // Without step noise x_T is the same first draw.
        assert_eq!(plan0.chunk(0..5).unwrap().initial, all.initial);
    }
}

/// One chunk of [`in_chunks`]: the images' range and a tick to call per model evaluation.
pub type ChunkRun<'a> = dyn FnMut(Range<usize>, &mut dyn FnMut()) -> Result<Tensor> + 'a;

/// Runs `run` on consecutive chunks of at most `batch` of `num` images of shape `image`
/// (C, H, W) and stitches the chunks' NCHW results into one tensor. `run(range, tick)` calls
/// `tick()` after each model evaluation; `progress(done, total)` counts them over all chunks,
/// `steps` per chunk. The CPU and GPU samplers share this loop.
pub fn in_chunks(
    num: usize,
    batch: usize,
    image: (usize, usize, usize),
    steps: usize,
    progress: &mut dyn FnMut(usize, usize),
    run: &mut ChunkRun<'_>,
) -> Result<Tensor> {
    ensure!(batch > 0, "the batch size must be at least 1");
    let (c, h, w) = image;
    let per = c * h * w;
    let total = num.div_ceil(batch) * steps;
    let mut done = 0;
    let mut out = Tensor::zeros(&[num, c, h, w]);
    for start in (0..num).step_by(batch) {
        let range = start..(start + batch).min(num);
        let y = run(range.clone(), &mut || {
            done += 1;
            progress(done, total);
        })?;
        ensure!(
            y.numel() == range.len() * per,
            "images {range:?} came back with {} values, expected {}",
            y.numel(),
            range.len() * per
        );
        out.data[range.start * per..range.end * per].copy_from_slice(&y.data);
    }
    Ok(out)
}

/// Samples all `plan.num` images on the CPU reference in chunks of `batch`, each chunk starting
/// from its slice of the planned noise, filling `trajectory`'s frames when given.
/// `on_step(done, total)` reports progress in model steps.
#[allow(clippy::too_many_arguments)]
pub fn sample_images_cpu(
    unet: &UNet,
    weights: &Weights,
    cfg: &SchedulerConfig,
    settings: &SampleSettings,
    plan: &NoisePlan,
    batch: usize,
    mut trajectory: Option<&mut Trajectory>,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let table = StepTable::new(cfg, settings)?;
    plan.check_model(unet)?;
    let (c, h, w) = (unet.input.c, unet.input.h, unet.input.w);
    if let Some(t) = trajectory.as_deref_mut() {
        t.start(table.len(), plan.num, c, h, w)?;
    }
    in_chunks(
        plan.num,
        batch,
        (c, h, w),
        table.len(),
        on_step,
        &mut |range, tick| {
            let noise = plan.chunk(range.clone())?;
            let x = Tensor::new(vec![range.len(), c, h, w], noise.initial)?;
            sample_cpu(
                unet,
                weights,
                cfg,
                settings,
                &table,
                x,
                &noise.steps,
                &mut |i, x0| {
                    if let Some(t) = trajectory.as_deref_mut() {
                        if let Some(k) = t.steps.iter().position(|&s| s == i) {
                            t.store(k, range.clone(), plan.per_image, x0);
                        }
                    }
                    tick();
                },
            )
        },
    )
}

/// Runs a noise-free table (DDIM eta 0, or inversion) on the CPU reference from the given
/// samples, in chunks of `batch`.
pub fn run_table_cpu(
    unet: &UNet,
    weights: &Weights,
    cfg: &SchedulerConfig,
    table: &StepTable,
    x: &Tensor,
    batch: usize,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let (n, c, h, w) = x.nchw();
    let settings = SampleSettings::default();
    let none = vec![None; table.len()];
    in_chunks(
        n,
        batch,
        (c, h, w),
        table.len(),
        on_step,
        &mut |range, tick| {
            sample_cpu(
                unet,
                weights,
                cfg,
                &settings,
                table,
                x.images(range)?,
                &none,
                &mut |_, _| tick(),
            )
        },
    )
}

/// Spherical linear interpolation between two noise tensors (DDIM paper, eq. 67):
/// `sin((1 − α)θ)/sin θ · a + sin(αθ)/sin θ · b`, θ the angle between a and b; computed in f64.
/// Falls back to linear interpolation when a and b are (nearly) parallel.
pub fn slerp(a: &[f32], b: &[f32], alpha: f64) -> Vec<f32> {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let cos = (dot / (na * nb)).clamp(-1.0, 1.0);
    let theta = cos.acos();
    if theta.sin().abs() < 1e-6 {
        return lerp(a, b, alpha);
    }
    let (wa, wb) = (
        ((1.0 - alpha) * theta).sin() / theta.sin(),
        (alpha * theta).sin() / theta.sin(),
    );
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (wa * x as f64 + wb * y as f64) as f32)
        .collect()
}

/// Linear interpolation `(1 − α)·a + α·b`, for comparison with [`slerp`].
pub fn lerp(a: &[f32], b: &[f32], alpha: f64) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| ((1.0 - alpha) * x as f64 + alpha * y as f64) as f32)
        .collect()
}

#[cfg(test)]
mod interpolation_tests {
    use super::*;

    #[test]
    fn slerp_keeps_endpoints_and_norm() {
        let a: Vec<f32> = (0..64).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
        let b: Vec<f32> = (0..64).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        for (x, y) in slerp(&a, &b, 0.0).iter().zip(&a) {
            assert!((x - y).abs() < 1e-6);
        }
        for (x, y) in slerp(&a, &b, 1.0).iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
        // With equal norms, slerp stays on the sphere while lerp cuts inside it.
        let b_scaled: Vec<f32> = b
            .iter()
            .map(|&y| y * (norm(&a) / norm(&b)) as f32)
            .collect();
        let mid = slerp(&a, &b_scaled, 0.5);
        assert!((norm(&mid) - norm(&a)).abs() / norm(&a) < 1e-5);
        assert!(norm(&lerp(&a, &b_scaled, 0.5)) < norm(&a) * 0.99);
    }
}
