//! What the GPU plan cannot run yet, refused by name before anything is uploaded, so the GPU
//! path never gives a silent wrong answer. Each refusal is one line that names the op or field
//! and points at the CPU reference.

use crate::model::unet::{Op, TimeProj, UNet};
use anyhow::{bail, Result};

/// The refusal for `what`.
pub fn unsupported(what: &str) -> String {
    format!("{what} is not yet supported on the GPU; use --device cpu")
}

/// Fails with the first part of `unet` the GPU plan cannot run.
pub fn check(unet: &UNet) -> Result<()> {
    match unet.time.proj {
        TimeProj::Positional { .. } => {}
        TimeProj::Fourier { .. } => bail!(unsupported("time_embedding_type \"fourier\"")),
        TimeProj::Learned { .. } => bail!(unsupported("time_embedding_type \"learned\"")),
    }
    if unet.time.class.is_some() {
        bail!(unsupported(
            "class conditioning (num_class_embeds / class_embed_type)"
        ));
    }
    for layer in &unet.layers {
        if let Some(what) = op_unsupported(&layer.op) {
            bail!(unsupported(&format!("{} ({what})", layer.name)));
        }
    }
    Ok(())
}

/// What the plan lacks for `op`, if anything.
pub fn op_unsupported(op: &Op) -> Option<&'static str> {
    match op {
        Op::Resnet(r) if r.resample.is_some() => Some("a resnet that resamples"),
        Op::SkipImageCapture | Op::SkipImageDown(_) | Op::SkipImageUp { .. } | Op::SkipImageAdd => {
            Some("the skip blocks' image path")
        }
        Op::DivideBySigma => Some("dividing the output by sigma"),
        _ => None,
    }
}
