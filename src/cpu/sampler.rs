//! The CPU reference as a device of the sampling loop: the whole U-Net forward and the
//! scheduler's own step (`schedule::{ddim_step, ddpm_step, inverse_step, multistep_step,
//! sigma_step, consistency_step}`; x_T comes already scaled by `init_noise_sigma`, see
//! `sampling::run`; the σ-space and consistency samplers scale the model input),
//! image by image exactly as diffusers computes them.

use super::forward::forward_labeled;
use crate::model::{UNet, Weights};
use crate::sampling::{Chunk, ChunkOutput, Diverged, SamplerSteps, StepRunner};
use crate::schedule::{
    consistency_input, consistency_step, ddim_step, ddpm_step, inverse_step, multistep_step_noisy,
    scale_model_input, sigma_step, MultistepState, SchedulerConfig, SigmaState,
};
use crate::Tensor;
use anyhow::{ensure, Context, Result};
use std::borrow::Cow;

/// Images per chunk on the CPU reference: it gains nothing from more.
pub const MAX_BATCH: usize = 16;

/// Runs one run's steps on the CPU reference.
pub struct CpuRunner<'a> {
    pub unet: &'a UNet,
    pub weights: &'a Weights,
    pub cfg: &'a SchedulerConfig,
    pub steps: &'a SamplerSteps,
}

impl StepRunner for CpuRunner<'_> {
    fn max_batch(&self) -> usize {
        // The caller chooses smaller chunks; a larger one is still correct, only slower.
        usize::MAX
    }

    fn run_chunk(
        &mut self,
        chunk: Chunk,
        record: &[usize],
        tick: &mut dyn FnMut(),
    ) -> Result<ChunkOutput> {
        let Chunk {
            mut x,
            mut noise,
            labels,
            guidance,
        } = chunk;
        let steps = self.steps;
        ensure!(
            noise.len() == steps.len(),
            "noise for {} steps, the run has {}",
            noise.len(),
            steps.len()
        );
        let batch = x.shape[0];
        let per_image = x.numel() / batch.max(1);
        // Guidance: every evaluation runs on [x; x] with [null labels; labels].
        let labels = match &guidance {
            Some(g) => Some(g.doubled_labels(labels.as_ref(), batch)?),
            None => labels,
        };
        let mut frames = Vec::with_capacity(record.len());
        let mut state = MultistepState::default();
        let mut sigma_state = SigmaState::default();
        for i in 0..steps.len() {
            let noise = noise.step(i)?;
            let t = steps.timestep(i);
            // The σ-space samplers feed the model x/sqrt(σ²+1), the consistency sampler x·c_in;
            // the others x itself.
            let mut input = match steps {
                SamplerSteps::Sigma(table) => Cow::Owned(Tensor::new(
                    x.shape.clone(),
                    scale_model_input(table, i, &x.data)?,
                )?),
                SamplerSteps::Consistency(table) => Cow::Owned(Tensor::new(
                    x.shape.clone(),
                    consistency_input(table, i, &x.data)?,
                )?),
                _ => Cow::Borrowed(&x),
            };
            if guidance.is_some() {
                let mut doubled = input.data.clone();
                doubled.extend_from_slice(&input.data);
                let mut shape = input.shape.clone();
                shape[0] *= 2;
                input = Cow::Owned(Tensor::new(shape, doubled)?);
            }
            let mut eps = forward_labeled(
                self.unet,
                self.weights,
                &input,
                &[t as f32],
                labels.as_ref(),
            )
            .with_context(|| format!("U-Net at step {i} (t = {t})"))?;
            if let Some(g) = &guidance {
                eps = Tensor::new(x.shape.clone(), g.combine(&eps.data, batch, per_image)?)?;
            }
            let noise = noise.as_deref();
            let out = match steps {
                SamplerSteps::Ddim {
                    steps,
                    use_clipped_model_output,
                    ..
                } => ddim_step(
                    self.cfg,
                    &steps[i],
                    &eps.data,
                    &x.data,
                    batch,
                    *use_clipped_model_output,
                    noise,
                )?,
                SamplerSteps::Ddpm(s) => {
                    ddpm_step(self.cfg, &s[i], &eps.data, &x.data, batch, noise)?
                }
                SamplerSteps::Inverse(s) => {
                    inverse_step(self.cfg, &s[i], &eps.data, &x.data, batch)?
                }
                SamplerSteps::Multistep(table) => {
                    multistep_step_noisy(table, i, &eps.data, &x.data, noise, batch, &mut state)?
                }
                SamplerSteps::Consistency(table) => {
                    consistency_step(table, i, &eps.data, &x.data, noise, batch)?
                }
                SamplerSteps::Sigma(table) => {
                    sigma_step(table, i, &eps.data, &x.data, batch, noise, &mut sigma_state)?
                }
            };
            let bad = out.prev_sample.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Err(Diverged {
                    step: i,
                    timestep: Some(t),
                    bad,
                    numel: out.prev_sample.len(),
                }
                .into());
            }
            x.data = out.prev_sample;
            if record.contains(&i) {
                frames.push(Tensor::new(x.shape.clone(), out.pred_original_sample)?);
            }
            tick();
        }
        Ok(ChunkOutput { x, frames })
    }
}
