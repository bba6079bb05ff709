//! ddim-wgpu: sample pixel-space diffusion U-Nets (diffusers `UNet2DModel`) with DDIM on any GPU
//! through hand-written WGSL kernels, and check every op against a pure-Rust CPU reference.
//!
//! Data flows one way: files → model description → (CPU reference | GPU plan) → sampler loop → images.
//!
//! Start at [`pipeline::Pipeline`] (a model with its scheduler) and [`pipeline::Device`]; the
//! benchmark lives in the `ddim` binary (`ddim bench`), not here.

// What a library user needs: load a model, pick a device, sample / invert / decode.
pub mod bundled;
pub mod image_io;
pub mod model;
pub mod npz;
pub mod pipeline;
pub mod rng;
pub mod sampling;
pub mod schedule;
pub mod seed_dir;
pub mod tensor;

// The two devices, public so that tests, benchmarks and `ddim verify` can check the shaders
// op by op against the reference: the CPU reference and the wgpu backend (context, kernels,
// compiled plan). Most users only need `pipeline::Device`.
pub mod cpu;
pub mod gpu;

/// Output files written per kind of target (atomic rename, through a link, straight to a
/// device), shared with the binary.
pub mod output;
/// What a path names (file, directory, FIFO, loop …), and bounded reads of input files.
pub mod path_kind;

/// The fuzz targets' bodies, shared by `fuzz/` and the corpus replay test.
#[doc(hidden)]
pub mod fuzz;

pub use tensor::Tensor;

// Compiles the Rust examples in README.md as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
