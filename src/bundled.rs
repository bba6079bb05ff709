//! The default model, compiled into the binary: a small MNIST DDPM trained by
//! `tools/train_mnist.py` and shipped in `weights/mnist/` (diffusers pipeline layout, f32 EMA
//! weights). `ddim sample` with no `--model` uses it, from any directory.

use crate::model::dir::{Layout, ModelPaths};
use crate::model::{Model, UNet, UNet2DConfig, Weights};
use crate::pipeline::Pipeline;
use crate::schedule::SchedulerConfig;
use anyhow::{Context, Result};
use std::path::PathBuf;

const CONFIG: &str = include_str!("../weights/mnist/unet/config.json");
const WEIGHTS: &[u8] = include_bytes!("../weights/mnist/unet/diffusion_pytorch_model.safetensors");
const SCHEDULER: &str = include_str!("../weights/mnist/scheduler/scheduler_config.json");

/// One MNIST test image per digit (PNG, 32×32), for `ddim invert --report`.
pub const EXAMPLES: [(&str, &[u8]); 10] = [
    (
        "digit_0.png",
        include_bytes!("../weights/mnist/examples/digit_0.png"),
    ),
    (
        "digit_1.png",
        include_bytes!("../weights/mnist/examples/digit_1.png"),
    ),
    (
        "digit_2.png",
        include_bytes!("../weights/mnist/examples/digit_2.png"),
    ),
    (
        "digit_3.png",
        include_bytes!("../weights/mnist/examples/digit_3.png"),
    ),
    (
        "digit_4.png",
        include_bytes!("../weights/mnist/examples/digit_4.png"),
    ),
    (
        "digit_5.png",
        include_bytes!("../weights/mnist/examples/digit_5.png"),
    ),
    (
        "digit_6.png",
        include_bytes!("../weights/mnist/examples/digit_6.png"),
    ),
    (
        "digit_7.png",
        include_bytes!("../weights/mnist/examples/digit_7.png"),
    ),
    (
        "digit_8.png",
        include_bytes!("../weights/mnist/examples/digit_8.png"),
    ),
    (
        "digit_9.png",
        include_bytes!("../weights/mnist/examples/digit_9.png"),
    ),
];

/// Where the bundled files came from, for messages (they are read from the binary, not disk).
pub const SOURCE: &str = "weights/mnist (bundled)";

/// The bundled model.
pub fn model() -> Result<Model> {
    let config = UNet2DConfig::from_json(CONFIG).context("the bundled model's unet/config.json")?;
    let expected = UNet::expected_weights(&config)?;
    let weights = Weights::from_safetensors_bytes(WEIGHTS, &expected)
        .context("the bundled model's weights")?;
    let root = PathBuf::from(SOURCE);
    let paths = ModelPaths {
        config: root.join("unet/config.json"),
        weights: root.join("unet/diffusion_pytorch_model.safetensors"),
        scheduler_config: Some(root.join("scheduler/scheduler_config.json")),
        layout: Layout::Pipeline,
        root,
    };
    Ok(Model {
        paths,
        config,
        weights,
    })
}

/// The bundled scheduler configuration (DDPMScheduler's, read as DDIMPipeline reads it).
pub fn scheduler() -> Result<SchedulerConfig> {
    SchedulerConfig::from_json_str(SCHEDULER).context("the bundled model's scheduler_config.json")
}

/// The bundled model with its scheduler.
pub fn pipeline() -> Result<Pipeline> {
    Pipeline::new(model()?, scheduler()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundled_model_loads() {
        let pipe = super::pipeline().unwrap();
        assert_eq!(pipe.unet.input.c, 1);
        assert_eq!((pipe.unet.input.h, pipe.unet.input.w), (32, 32));
    }
}
