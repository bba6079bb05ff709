//! Sampling: what a run does at each step ([`steps`]), the noise it consumes ([`Noise`]), the
//! frames it keeps ([`trajectory`]), and the one loop that drives any device (`run`, internal).
//! Interpolation between noise tensors lives in [`interpolate`]; seed sets and shards of runs with
//! one generator per image in [`seeds`]. A run whose sample overflows fails with [`Diverged`] on
//! every device.

mod diverged;
pub mod guidance;
pub mod interpolate;
mod noise;
mod run;
pub mod seeds;
pub mod steps;
pub mod trajectory;

pub use diverged::Diverged;
pub use guidance::{Guidance, Guided};
pub use interpolate::{lerp, slerp};
pub use noise::Noise;
pub(crate) use noise::NoisePlan;
pub(crate) use run::{run, Chunk, ChunkOutput, Run, Start, StepRunner};
pub use run::{ChunkSink, Progress};
pub use seeds::{SeedSet, Shard};
pub use steps::{SampleSettings, SamplerKind, SamplerSteps};
pub use trajectory::Trajectory;
