//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), shared with
//! `tests/fuzz_replay.rs`, which replays the committed corpora and crash inputs on stable Rust.
//! Each takes arbitrary bytes and must come back with a result, never a panic, a hang or an
//! unbounded allocation.

use crate::image_io::decode_image;
use crate::model::tensor_io::tensor_from_bytes;
use crate::model::{UNet, UNet2DConfig, Weights};
use crate::sampling::{SampleSettings, SamplerKind, SamplerSteps};
use crate::schedule::SchedulerConfig;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("weights", weights),
    ("unet_config", unet_config),
    ("scheduler_config", scheduler_config),
    ("png", png),
    ("init_noise", init_noise),
];

/// A safetensors weight file checked against the bundled MNIST architecture: header, dtypes,
/// offsets, names and shapes.
pub fn weights(data: &[u8]) {
    let config = UNet2DConfig::mnist_like();
    if let Ok(expected) = UNet::expected_weights(&config) {
        let _ = Weights::from_safetensors_bytes(data, &expected);
    }
}

/// A UNet2DModel `config.json`: parsing, validation, and the network and weight list it implies.
pub fn unet_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = UNet2DConfig::from_json(text) {
        let _ = UNet::from_config(&config);
        let _ = UNet::expected_weights(&config);
    }
}

/// A `scheduler_config.json`, and the tables every sampler builds from it (step count from the
/// input's length, so the fuzzer varies it too).
pub fn scheduler_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = SchedulerConfig::from_json_str(text) else {
        return;
    };
    let steps = data.len() % 64 + 1;
    for sampler in [
        SamplerKind::Ddim,
        SamplerKind::Ddpm,
        SamplerKind::DpmSolverPlusPlus,
        SamplerKind::Unipc,
    ] {
        let settings = SampleSettings {
            sampler,
            steps,
            ..SampleSettings::default()
        };
        let _ = SamplerSteps::new(&cfg, &settings);
    }
    let _ = SamplerSteps::inverse(&cfg, steps);
}

/// An image as `ddim invert --image` reads it (gray 32×32 and RGB 32×32).
pub fn png(data: &[u8]) {
    let _ = decode_image(data, "fuzz input", 1, 32);
    let _ = decode_image(data, "fuzz input", 3, 32);
}

/// A tensor file as `--init-noise` reads it.
pub fn init_noise(data: &[u8]) {
    let _ = tensor_from_bytes(data, "sample");
}
