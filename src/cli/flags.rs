//! What the command line adds to the library: clap parsers for the library's enums that flags
//! take (`--sampler`, `--rng`; the library names its values, the words of `--help` belong here),
//! and the flag names in messages about library errors (the library names values, not flags).

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use ddim_wgpu::model::ClassLabels;
use ddim_wgpu::pipeline::BatchTooLarge;
use ddim_wgpu::rng::RngKind;
use ddim_wgpu::sampling::{Guidance, SamplerKind};

/// `--sampler`: one of [`SamplerKind::ALL`], each with its line of help.
pub fn sampler() -> impl TypedValueParser<Value = SamplerKind> {
    let values = SamplerKind::ALL.map(|k| {
        PossibleValue::new(k.as_str()).help(match k {
            SamplerKind::Ddim => {
                "DDIM (Song et al. 2021): deterministic at eta = 0, DDPM-like variance at eta = 1"
            }
            SamplerKind::Ddpm => {
                "Ancestral DDPM (Ho et al. 2020) with the scheduler's variance_type"
            }
            SamplerKind::DpmSolverPlusPlus => {
                "DPM-Solver++ (Lu et al. 2022), multistep, diffusers' DPMSolverMultistepScheduler"
            }
            SamplerKind::Unipc => "UniPC (Zhao et al. 2023), diffusers' UniPCMultistepScheduler",
            SamplerKind::Euler => "Euler in σ (Karras et al. 2022), diffusers' EulerDiscreteScheduler",
            SamplerKind::EulerAncestral => {
                "Euler ancestral, diffusers' EulerAncestralDiscreteScheduler (noise every step)"
            }
            SamplerKind::Heun => {
                "Heun in σ (Karras et al. 2022), diffusers' HeunDiscreteScheduler (2 evaluations per step)"
            }
            SamplerKind::Lms => "Linear multistep (order 4) in σ, diffusers' LMSDiscreteScheduler",
            SamplerKind::Pndm => {
                "PNDM (Liu et al. 2022), Runge-Kutta warm-up then PLMS, diffusers' PNDMScheduler"
            }
            SamplerKind::Consistency => {
                "Consistency models (Song et al. 2023), diffusers' CMStochasticIterativeScheduler"
            }
        })
    });
    PossibleValuesParser::new(values).try_map(|s| s.parse::<SamplerKind>())
}

/// `--rng`: one of [`RngKind::ALL`], each with its line of help.
pub fn rng() -> impl TypedValueParser<Value = RngKind> {
    let values = RngKind::ALL.map(|k| {
        PossibleValue::new(k.as_str()).help(match k {
            RngKind::Torch => "Bit-compatible with torch.manual_seed + torch.randn on the CPU",
            RngKind::Philox => "Counter-based Philox4x32-10",
        })
    });
    PossibleValuesParser::new(values).try_map(|s| s.parse::<RngKind>())
}

/// A batch the device cannot hold: says which flag asked for it and how to have one chosen.
pub fn batch_hint(e: anyhow::Error, batch: Option<usize>) -> anyhow::Error {
    match (e.downcast_ref::<BatchTooLarge>(), batch) {
        (Some(too_large), Some(b)) => {
            anyhow::anyhow!(
                "{too_large} (asked for by --batch {b}; leave it out to have one chosen)"
            )
        }
        _ => e,
    }
}

/// `--guidance-scale`, `--guidance-rescale`, `--null-class`: classifier-free guidance of a
/// class-conditional model.
#[derive(clap::Args, Clone, Debug)]
pub struct GuidanceArgs {
    /// Classifier-free guidance scale w: the model runs on [null label; --class] at twice the
    /// batch and steps on u + w·(c − u) (its raw output, as diffusers' pipelines guide). 1 is off.
    #[arg(
        long,
        value_name = "W",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub guidance_scale: f64,
    /// Rescale the guided output towards the conditional one's std (Lin et al. 2023, diffusers'
    /// guidance_rescale), in [0, 1]; needs --guidance-scale.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// The null (unconditional) label for guidance (default: the model's "_null_class_label").
    #[arg(long, value_name = "N", value_parser = super::numbers::at_least::<u32, 0>)]
    pub null_class: Option<u32>,
}

impl GuidanceArgs {
    pub fn guidance(&self) -> Guidance {
        Guidance {
            scale: self.guidance_scale,
            rescale: self.guidance_rescale,
            null_class: self.null_class,
        }
    }
}

/// `--class N[,N2,...]`: class labels of a class-conditional model, one for all images or one
/// per image (per seed with `--seeds`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassArg(pub Vec<u32>);

impl ClassArg {
    pub fn labels(&self) -> ClassLabels {
        ClassLabels::Indices(self.0.clone())
    }
}

/// Parses `--class`: comma-separated whole numbers.
pub fn class_labels(text: &str) -> Result<ClassArg, String> {
    text.split(',')
        .map(|part| {
            super::numbers::at_least::<u32, 0>(part)
                .map_err(|e| format!("class label {:?}: {e}", part.trim()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(ClassArg)
}

/// The labels `--class` gives, if any.
pub fn labels_of(class: &Option<ClassArg>) -> Option<ClassLabels> {
    class.as_ref().map(ClassArg::labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists_parse_and_name_the_bad_label() {
        assert_eq!(class_labels("3"), Ok(ClassArg(vec![3])));
        assert_eq!(class_labels("0, 7,9"), Ok(ClassArg(vec![0, 7, 9])));
        let e = class_labels("1,x").unwrap_err();
        assert!(e.contains("class label \"x\""), "{e}");
        let e = class_labels("-2").unwrap_err();
        assert!(e.contains("negative"), "{e}");
    }
}
