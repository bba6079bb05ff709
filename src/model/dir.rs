//! Finding the files of a model directory, in either of the two layouts diffusers uses:
//!
//! * pipeline: `model_index.json`, `unet/config.json`, `unet/diffusion_pytorch_model.safetensors`,
//!   `scheduler/scheduler_config.json`;
//! * flat (google/ddpm-cifar10-32, or a pipeline's `unet/` folder itself): `config.json`,
//!   `diffusion_pytorch_model.safetensors`, optionally `scheduler_config.json`.
//!
//! `diffusion_pytorch_model.fp16.safetensors` is used when the standard weights file is absent.

use crate::path_kind::{kind_of, PathKind};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Whether the file `p` is there: false when nothing is, an error naming what is there instead
/// when that is no file (a directory, a FIFO, a symlink loop …).
fn is_present(p: &Path) -> Result<bool> {
    match kind_of(p) {
        PathKind::File => Ok(true),
        PathKind::Missing => Ok(false),
        other => bail!("{} {other}; expected a file", p.display()),
    }
}

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
pub const SCHEDULER_FILE: &str = "scheduler_config.json";
/// The half-precision variant some repositories ship instead of (or next to) the f32 file.
pub const WEIGHTS_FP16_FILE: &str = "diffusion_pytorch_model.fp16.safetensors";

/// The weights file in `base`: the standard name, else the fp16 variant; otherwise an error
/// naming what was looked for and what was found instead.
fn find_weights(base: &Path) -> Result<PathBuf> {
    for name in [WEIGHTS_FILE, WEIGHTS_FP16_FILE] {
        let p = base.join(name);
        if is_present(&p)? {
            return Ok(p);
        }
    }
    let hint = if base.join(format!("{WEIGHTS_FILE}.index.json")).is_file() {
        " (found a sharded checkpoint index; sharded weights are not supported, merge them into one file)"
    } else if base.join("diffusion_pytorch_model.bin").is_file() {
        " (only a PyTorch pickle diffusion_pytorch_model.bin is there; convert it to safetensors, \
         e.g. by loading it with diffusers and calling save_pretrained(..., safe_serialization=True))"
    } else {
        ""
    };
    bail!(
        "missing weights file {}{hint}",
        base.join(WEIGHTS_FILE).display()
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Pipeline,
    Flat,
}

/// The resolved paths of a model directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPaths {
    pub root: PathBuf,
    pub layout: Layout,
    /// `UNet2DModel` config.
    pub config: PathBuf,
    pub weights: PathBuf,
    /// The scheduler config, when the directory has one.
    pub scheduler_config: Option<PathBuf>,
}

impl ModelPaths {
    /// Resolves `dir`, preferring the pipeline layout when `unet/config.json` exists.
    pub fn resolve(dir: &Path) -> Result<Self> {
        match kind_of(dir) {
            PathKind::Dir => {}
            PathKind::Missing => bail!("model directory {} does not exist", dir.display()),
            other => bail!(
                "model directory {} {other}; expected a directory",
                dir.display()
            ),
        }
        let unet = dir.join("unet");
        let (layout, base, scheduler) = if is_present(&unet.join(CONFIG_FILE))? {
            (
                Layout::Pipeline,
                unet,
                dir.join("scheduler").join(SCHEDULER_FILE),
            )
        } else if is_present(&dir.join(CONFIG_FILE))? {
            (Layout::Flat, dir.to_path_buf(), dir.join(SCHEDULER_FILE))
        } else {
            bail!(
                "{} is not a diffusers model directory: found neither unet/{CONFIG_FILE} (pipeline layout) \
                 nor {CONFIG_FILE} (flat layout)",
                dir.display()
            );
        };
        let weights = find_weights(&base)?;
        Ok(Self {
            root: dir.to_path_buf(),
            layout,
            config: base.join(CONFIG_FILE),
            weights,
            scheduler_config: is_present(&scheduler)?.then_some(scheduler),
        })
    }

    /// The scheduler config path, or an error naming where it was looked for.
    pub fn require_scheduler_config(&self) -> Result<&Path> {
        match &self.scheduler_config {
            Some(p) => Ok(p),
            None => {
                let expected = match self.layout {
                    Layout::Pipeline => self.root.join("scheduler").join(SCHEDULER_FILE),
                    Layout::Flat => self.root.join(SCHEDULER_FILE),
                };
                bail!(
                    "model directory {} has no scheduler config (expected {})",
                    self.root.display(),
                    expected.display()
                )
            }
        }
    }
}
