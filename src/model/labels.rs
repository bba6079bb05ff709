//! Class conditioning: what a class-conditional model gets per image beside x and t.
//!
//! A [`ClassLabels`] holds one entry per image or one entry for every image. Which kind a model
//! takes, and which values are in range, is checked against its class embedding by
//! [`ClassLabels::check`] before anything runs.

use crate::model::unet::{ClassEmbedding, TimeEmbedding, TimeProj};
use anyhow::{bail, ensure, Result};
use std::ops::Range;

/// Per-image class conditioning: one entry per image, or one for all images.
#[derive(Clone, Debug, PartialEq)]
pub enum ClassLabels {
    /// Class indices: rows of the `num_class_embeds` table, or (`class_embed_type: "timestep"`)
    /// values sent through the time projection.
    Indices(Vec<u32>),
    /// Vectors added to the time embedding as they are (`class_embed_type: "identity"`):
    /// `data.len() / width` vectors of `width` (= the time embedding width), row-major.
    Vectors { width: usize, data: Vec<f32> },
    /// Per image (a, b, t): the class embedding interpolated, (1 − t)·E(a) + t·E(b), for class
    /// indices (`ddim interpolate --class-a A --class-b B`).
    Mixed(Vec<(u32, u32, f32)>),
}

impl ClassLabels {
    /// Number of entries (1 means one for all images).
    pub fn len(&self) -> usize {
        match self {
            Self::Indices(v) => v.len(),
            Self::Vectors { width, data } => data.len() / (*width).max(1),
            Self::Mixed(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries of images `range`: a single entry serves every image, otherwise there must be
    /// one per image and `range` must lie within them.
    pub fn images(&self, range: Range<usize>) -> Result<Self> {
        let n = self.len();
        ensure!(n > 0, "no class labels given");
        let pick = |i: usize| if n == 1 { 0 } else { i };
        ensure!(
            n == 1 || range.end <= n,
            "{n} class labels for images {range:?}: give one label for all images or one per image"
        );
        Ok(match self {
            Self::Indices(v) => Self::Indices(range.map(|i| v[pick(i)]).collect()),
            Self::Mixed(v) => Self::Mixed(range.map(|i| v[pick(i)]).collect()),
            Self::Vectors { width, data } => Self::Vectors {
                width: *width,
                data: range
                    .flat_map(|i| data[pick(i) * width..][..*width].iter().copied())
                    .collect(),
            },
        })
    }

    /// One entry per image of a batch of `batch`: a single entry is repeated, otherwise there
    /// must be exactly `batch` entries.
    pub fn for_batch(&self, batch: usize) -> Result<Self> {
        let n = self.len();
        ensure!(
            n == 1 || n == batch,
            "got {n} class labels for a batch of {batch}: give one label for all images or one per image"
        );
        self.images(0..batch)
    }

    /// A short text that identifies the labels (seed folders record it): `3`, `3,1,4`, or the
    /// vectors' values for identity embeddings.
    pub fn describe(&self) -> String {
        match self {
            Self::Indices(v) => v.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            Self::Mixed(v) => {
                let each: Vec<String> =
                    v.iter().map(|(a, b, t)| format!("{a}~{b}@{t:?}")).collect();
                format!("mixed: {}", each.join(","))
            }
            Self::Vectors { width, data } => {
                let values: Vec<String> = data.iter().map(|v| format!("{v:?}")).collect();
                format!("vectors of {width}: {}", values.join(","))
            }
        }
    }

    /// Checks `labels` against the model's class embedding: a class-conditional model needs
    /// them, an unconditional one refuses them, and every entry must be of the right kind and in
    /// range.
    pub fn check(labels: Option<&Self>, time: &TimeEmbedding) -> Result<()> {
        let (class, labels) = match (&time.class, labels) {
            (None, None) => return Ok(()),
            (None, Some(_)) => bail!(
                "class labels were given, but the model is not class-conditional \
                 (its config has neither num_class_embeds nor class_embed_type)"
            ),
            (Some(class), None) => bail!(
                "the model is class-conditional ({}): give a class label (--class N, one for all \
                 images or one per image)",
                describe_embedding(class, time)
            ),
            (Some(class), Some(labels)) => (class, labels),
        };
        ensure!(!labels.is_empty(), "no class labels given");
        if let Self::Mixed(v) = labels {
            ensure!(
                v.iter().all(|(_, _, t)| t.is_finite()),
                "class mixing weights must be finite"
            );
            let ends =
                |pick: fn(&(u32, u32, f32)) -> u32| Self::Indices(v.iter().map(pick).collect());
            Self::check(Some(&ends(|e| e.0)), time)?;
            return Self::check(Some(&ends(|e| e.1)), time);
        }
        match (class, labels) {
            (ClassEmbedding::Table { classes, .. }, Self::Indices(v)) => {
                if let Some(bad) = v.iter().find(|&&l| l as usize >= *classes) {
                    bail!(
                        "class label {bad} is out of range: the model has {classes} classes (0..={})",
                        classes - 1
                    );
                }
            }
            (ClassEmbedding::Timestep { .. }, Self::Indices(v)) => {
                for &l in v {
                    check_projectable(&time.proj, l as f32, "class label")?;
                }
            }
            (ClassEmbedding::Identity, Self::Vectors { width, data }) => {
                ensure!(
                    *width == time.embed_dim(),
                    "class vectors of width {width} given; the model's identity class embedding \
                     takes vectors of {}",
                    time.embed_dim()
                );
                ensure!(
                    data.len() % width == 0 && data.iter().all(|v| v.is_finite()),
                    "class vectors must be finite and {width} values each"
                );
            }
            (ClassEmbedding::Identity, Self::Indices(_)) => bail!(
                "the model's class embedding is \"identity\": it takes a vector of {} values per \
                 image, not class indices",
                time.embed_dim()
            ),
            (_, Self::Mixed(_)) => unreachable!("mixed labels are checked above"),
            (_, Self::Vectors { .. }) => bail!(
                "class vectors were given, but the model ({}) takes class indices",
                describe_embedding(class, time)
            ),
        }
        Ok(())
    }
}

fn describe_embedding(class: &ClassEmbedding, time: &TimeEmbedding) -> String {
    match class {
        ClassEmbedding::Table { classes, .. } => format!("num_class_embeds = {classes}"),
        ClassEmbedding::Timestep { .. } => "class_embed_type \"timestep\"".into(),
        ClassEmbedding::Identity => format!(
            "class_embed_type \"identity\", vectors of {}",
            time.embed_dim()
        ),
    }
}

/// Whether the time projection can take `t` (the timestep, or a `"timestep"` class label):
/// Fourier takes ln t, so t must be positive; a learned table takes integer rows only.
pub fn check_projectable(proj: &TimeProj, t: f32, what: &str) -> Result<()> {
    ensure!(t.is_finite(), "{what} {t} is not a finite number");
    match proj {
        TimeProj::Positional { .. } => {}
        TimeProj::Fourier { .. } => ensure!(
            t > 0.0,
            "{what} {t} cannot be used: a Fourier time embedding takes ln({what}), so it must be \
             positive (σ > 0)"
        ),
        TimeProj::Learned { rows, .. } => ensure!(
            t >= 0.0 && t.fract() == 0.0 && (t as usize) < *rows,
            "{what} {t} cannot be used: a learned time embedding takes integer values in 0..{rows}"
        ),
    }
    Ok(())
}
