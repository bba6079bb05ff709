//! ddim-wgpu: sample pixel-space diffusion U-Nets (diffusers `UNet2DModel`) with DDIM on any GPU
//! through hand-written WGSL kernels, and check every op against a pure-Rust CPU reference.
//!
//! Data flows one way: files → model description → (CPU reference | GPU plan) → sampler loop → images.

pub mod bench;
pub mod bundled;
pub mod cpu;
pub mod gpu;
pub mod image_io;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod rng;
pub mod sampling;
pub mod schedule;
pub mod tensor;

pub use tensor::Tensor;

// Compiles the Rust examples in README.md as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
