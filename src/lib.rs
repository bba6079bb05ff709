//! ddim-wgpu: sample pixel-space diffusion U-Nets (diffusers `UNet2DModel`) with DDIM, DDPM,
//! DPM-Solver++ or UniPC on any GPU through hand-written WGSL kernels, and check every op against
//! a pure-Rust CPU reference.
//!
//! ```no_run
//! use ddim_wgpu::{Device, Noise, Pipeline, SampleRequest};
//! let pipe = Pipeline::load(std::path::Path::new("weights/mnist"))?; // or bundled::pipeline()?
//! let device = Device::auto(); // the best wgpu adapter, else the CPU reference
//! let request = SampleRequest {
//!     noise: Noise::Seed { seed: 0, num: 16 },
//!     ..SampleRequest::default() // 50 DDIM steps, eta 0, torch's generator
//! };
//! let images = pipe.sample(&device, &request)?; // NCHW in [-1, 1]
//! ddim_wgpu::image_io::save_grid(std::path::Path::new("grid.png"), &images, None)?;
//! # anyhow::Ok(())
//! ```
//!
//! The API: [`Pipeline`] (a model and its scheduler: sample, invert, decode), [`Device`] (the
//! CPU reference or a [`GpuContext`] opened from an [`AdapterChoice`]), the requests
//! ([`SampleRequest`] with its [`Noise`], [`LatentRequest`]), [`model`] loading, [`schedule`]s
//! and sampler settings ([`sampling`]), the generators ([`rng`]), and PNG in/out
//! ([`image_io`]). Errors are `anyhow::Error`s that name the file, tensor or value at fault; a
//! diverging run is a [`Diverged`] and a batch the device cannot hold a [`BatchTooLarge`],
//! both reachable with `downcast_ref`.
//!
//! Data flows one way: files → model description → (CPU reference | GPU plan) → sampler loop →
//! images.
//!
//! The `cli` feature (on by default) builds the `ddim` command line and brings its crates (clap,
//! indicatif, ctrlc, env_logger); the library uses none of them, so a library user depends on
//! this crate with `default-features = false`.
//!
//! The library also builds for `wasm32-unknown-unknown` (`--no-default-features`), on WebGPU;
//! writing files and seed folders is native only. See docs/architecture.md, "Targets".

pub mod bundled;
pub mod image_io;
pub mod model;
pub mod pipeline;
pub mod rng;
pub mod sampling;
pub mod schedule;
pub mod tensor;

pub use gpu::{AdapterChoice, BackendChoice, GpuContext, Precision, TuneMode};
pub use model::ClassLabels;
pub use pipeline::{
    BatchTooLarge, Device, Diverged, LatentRequest, Noise, Pipeline, SampleRequest, Sampled,
    TrajectoryFrames,
};
pub use tensor::Tensor;

// Not the API: public only so that the `ddim` binary, the tests, the benchmarks, the fuzz targets
// and `ddim verify` can reach them (the two devices op by op, the GPU backend's plan, kernels and
// tuning, seed folders, npz packing, output files written per kind of target, what a path names
// and bounded reads). Hidden from the documentation, with no stability promise.
#[doc(hidden)]
pub mod cpu;
#[doc(hidden)]
pub mod gpu;
#[doc(hidden)]
pub mod npz;
#[doc(hidden)]
pub mod path_kind;

// Native only: files written next to others (temporary file, rename, the process id in its
// name) and seed folders shared by processes through file locks. A browser has no file system
// or processes (std's would panic or fail there); a page takes bytes from `image_io::encode_png`.
#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod output;
#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod seed_dir;

/// The fuzz targets' bodies, shared by `fuzz/` and the corpus replay test.
#[doc(hidden)]
pub mod fuzz;

// Compiles the Rust examples in README.md as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
