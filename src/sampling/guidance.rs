//! Classifier-free guidance (Ho & Salimans 2022) for class-conditional models, as diffusers' text
//! pipelines compute it: the model runs once on the doubled batch [null half; class half], its
//! raw output (ε, v or x0) is combined as g = u + w·(c − u), unconditional first, and with
//! `rescale` φ > 0 `rescale_noise_cfg` (Lin et al. 2023) follows:
//! g ← φ·g·std(c)/std(g) + (1 − φ)·g, std being torch's unbiased std of one image (over C·H·W).
//! The scheduler then steps on g at batch B, so every noise draw keeps the guided batch's shape.
//!
//! Guidance is on whenever the scale is not 1 (diffusers turns it on only above 1; a scale below
//! 1 moves towards the unconditional output, 0 being the null label alone).

use crate::model::unet::TimeEmbedding;
use crate::model::ClassLabels;
use anyhow::{bail, ensure, Context, Result};

/// Guidance as asked for: scale, rescale and optionally the null label.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guidance {
    /// w: 1 is off.
    pub scale: f64,
    /// φ in [0, 1]: 0 is off.
    pub rescale: f64,
    /// The label of the unconditional half; None takes the model's `_null_class_label`.
    pub null_class: Option<u32>,
}

impl Default for Guidance {
    /// Off.
    fn default() -> Self {
        Self {
            scale: 1.0,
            rescale: 0.0,
            null_class: None,
        }
    }
}

impl Guidance {
    pub fn is_on(&self) -> bool {
        self.scale != 1.0
    }

    /// Checks these settings against a model (its time/class embedding and the null label its
    /// config declares) and the run's labels: None when guidance is off, else the guidance a run
    /// applies, with its null label.
    pub fn resolve(
        &self,
        time: &TimeEmbedding,
        model_null: Option<u32>,
        labels: Option<&ClassLabels>,
    ) -> Result<Option<Guided>> {
        ensure!(
            self.scale.is_finite(),
            "the guidance scale must be a finite number, got {}",
            self.scale
        );
        ensure!(
            (0.0..=1.0).contains(&self.rescale),
            "the guidance rescale must lie in [0, 1], got {}",
            self.rescale
        );
        if !self.is_on() {
            ensure!(
                self.rescale == 0.0 && self.null_class.is_none(),
                "--guidance-rescale and --null-class only act with guidance: give \
                 --guidance-scale W (W ≠ 1)"
            );
            return Ok(None);
        }
        if time.class.is_none() {
            bail!(
                "guidance scale {} needs a class-conditional model; this one is unconditional \
                 (use guidance scale 1)",
                self.scale
            );
        }
        match labels {
            Some(ClassLabels::Indices(_) | ClassLabels::Mixed(_)) | None => {}
            Some(ClassLabels::Vectors { .. }) => bail!(
                "guidance takes class indices (a null label), not the class vectors of an \
                 \"identity\" class embedding"
            ),
        }
        let Some(null) = self.null_class.or(model_null) else {
            bail!(
                "guidance needs the model's null (unconditional) label: give --null-class N, or \
                 declare it in the model's unet/config.json as \"_null_class_label\": N"
            );
        };
        ClassLabels::check(Some(&ClassLabels::Indices(vec![null])), time)
            .context("the null label")?;
        Ok(Some(Guided {
            scale: self.scale,
            rescale: self.rescale,
            null,
        }))
    }
}

/// Guidance a run applies: on, with its null label.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guided {
    pub scale: f64,
    pub rescale: f64,
    pub null: u32,
}

impl Guided {
    /// The labels of the doubled batch of `batch` images: the null label for the first half,
    /// then `labels` (one per image).
    pub fn doubled_labels(
        &self,
        labels: Option<&ClassLabels>,
        batch: usize,
    ) -> Result<ClassLabels> {
        let labels = labels.context("guidance needs class labels (--class N)")?;
        Ok(match labels.for_batch(batch)? {
            ClassLabels::Indices(class) => {
                let mut all = vec![self.null; batch];
                all.extend(class);
                ClassLabels::Indices(all)
            }
            // Interpolated classes: the null half is the null label's embedding alone.
            ClassLabels::Mixed(class) => {
                let mut all = vec![(self.null, self.null, 0.0); batch];
                all.extend(class);
                ClassLabels::Mixed(all)
            }
            ClassLabels::Vectors { .. } => {
                bail!("guidance takes class indices, not class vectors")
            }
        })
    }

    /// The multipliers of the fused GPU combination, in f32 as torch applies them:
    /// [w, φ, 1 − φ] (1 − φ rounded from f64, as Python computes it).
    pub fn factors(&self) -> [f32; 3] {
        [
            self.scale as f32,
            self.rescale as f32,
            (1.0 - self.rescale) as f32,
        ]
    }

    /// Combines the model output of the doubled batch (`out`: 2·`batch` images of `per_image`
    /// values, null half first) into `batch` guided outputs, in f32 as torch computes them.
    pub fn combine(&self, out: &[f32], batch: usize, per_image: usize) -> Result<Vec<f32>> {
        let half = batch * per_image;
        ensure!(
            out.len() == 2 * half,
            "guidance: the model output holds {} values, expected 2 × {batch} images of {per_image}",
            out.len()
        );
        let [w, phi, keep] = self.factors();
        let (u, c) = out.split_at(half);
        let mut g: Vec<f32> = u.iter().zip(c).map(|(&u, &c)| u + w * (c - u)).collect();
        if self.rescale > 0.0 {
            for (gi, ci) in g.chunks_mut(per_image).zip(c.chunks(per_image)) {
                let ratio = std_unbiased(ci) / std_unbiased(gi);
                for v in gi.iter_mut() {
                    let rescaled = *v * ratio;
                    *v = phi * rescaled + keep * *v;
                }
            }
        }
        Ok(g)
    }
}

/// torch's default (unbiased, N − 1) standard deviation of `v`, accumulated in f64 and rounded to
/// f32 as torch's CPU reduction of an f32 tensor gives it.
pub fn std_unbiased(v: &[f32]) -> f32 {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let ss: f64 = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum();
    (ss / (n - 1.0)).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combination_and_rescale() {
        let g = Guided {
            scale: 3.0,
            rescale: 0.0,
            null: 9,
        };
        // Two images of two values: u then c.
        let out = [1.0, 2.0, 0.0, -1.0, 2.0, 2.0, 1.0, 1.0];
        assert_eq!(g.combine(&out, 2, 2).unwrap(), vec![4.0, 2.0, 3.0, 5.0]);
        let r = Guided { rescale: 1.0, ..g };
        // Image 0: c = [2, 2] has std 0, so the rescaled output is 0.
        let v = r.combine(&out, 2, 2).unwrap();
        assert_eq!(&v[..2], &[0.0, 0.0]);
        // One image with spread: u = [1, 2], c = [1, 3] at w = 2.
        let out = [1.0, 2.0, 1.0, 3.0];
        let v = Guided {
            rescale: 0.5,
            scale: 2.0,
            null: 0,
        }
        .combine(&out, 1, 2)
        .unwrap();
        // g = [1, 4], std(c) = √2, std(g) = 3/√2, ratio 2/3: 0.5·g·2/3 + 0.5·g = g·5/6.
        assert!((v[0] - 5.0 / 6.0).abs() < 1e-6 && (v[1] - 20.0 / 6.0).abs() < 1e-6);
        assert!(Guided { null: 0, ..g }.combine(&out, 2, 2).is_err());
    }

    #[test]
    fn doubled_labels_put_the_null_half_first() {
        let g = Guided {
            scale: 2.0,
            rescale: 0.0,
            null: 10,
        };
        let l = g
            .doubled_labels(Some(&ClassLabels::Indices(vec![3, 4])), 2)
            .unwrap();
        assert_eq!(l, ClassLabels::Indices(vec![10, 10, 3, 4]));
        let one = g.doubled_labels(Some(&ClassLabels::Indices(vec![7])), 3);
        assert_eq!(
            one.unwrap(),
            ClassLabels::Indices(vec![10, 10, 10, 7, 7, 7])
        );
        assert!(g.doubled_labels(None, 2).is_err());
    }
}
