//! The CPU reference: plain loops over NCHW f32 tensors, reductions in f64.

pub mod forward;
pub mod ops;
pub mod resample;
pub mod sampler;
