//! Loading diffusers UNet2DModel checkpoints and describing the network once for every backend.
//!
//! * [`config`]: `config.json` → [`UNet2DConfig`] (validated, bounded sizes);
//! * [`dir`]: model directory layouts → [`ModelPaths`];
//! * [`labels`]: per-image class conditioning ([`ClassLabels`]), checked against the model;
//! * [`weights`]: safetensors → [`Weights`] (named f32 tensors), or seeded random weights;
//! * [`unet`]: the network as a static list of layers ([`UNet`]) shared by the CPU reference and
//!   the GPU plan.

pub mod config;
pub mod dir;
pub mod labels;
pub mod tensor_io;
pub mod unet;
pub mod weights;

pub use config::UNet2DConfig;
pub use dir::ModelPaths;
pub use labels::ClassLabels;
pub use unet::UNet;
pub use weights::Weights;

use anyhow::{Context, Result};
use std::path::Path;

/// A loaded model: where it came from, its config and its weights.
#[derive(Clone, Debug)]
pub struct Model {
    pub paths: ModelPaths,
    pub config: UNet2DConfig,
    pub weights: Weights,
}

impl Model {
    /// Resolves the directory, reads and validates the config, then loads and checks the weights.
    pub fn load(dir: &Path) -> Result<Self> {
        let paths = ModelPaths::resolve(dir)?;
        let config = UNet2DConfig::from_file(&paths.config)?;
        // Architecture errors (e.g. channels not divisible into groups) belong to the config file.
        UNet::expected_weights(&config)
            .with_context(|| format!("in model config {}", paths.config.display()))?;
        let weights = Weights::load(&paths.weights, &config)?;
        Ok(Self {
            paths,
            config,
            weights,
        })
    }
}
