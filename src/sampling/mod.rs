//! Sampling: what a run does at each step ([`steps`]), the noise it consumes ([`noise`]), the
//! frames it keeps ([`trajectory`]), and the one loop that drives any device ([`run`]).
//! Interpolation between noise tensors lives in [`interpolate`]; seed sets and shards of runs with
//! one generator per image in [`seeds`].

pub mod interpolate;
pub mod noise;
pub mod run;
pub mod seeds;
pub mod steps;
pub mod trajectory;

pub use interpolate::{lerp, slerp};
pub use noise::{ChunkNoise, NoisePlan, StepNoise};
pub use run::{run, Chunk, ChunkOutput, Progress, Run, Start, StepRunner};
pub use seeds::{SeedSet, Shard};
pub use steps::{SampleSettings, SamplerKind, SamplerSteps};
pub use trajectory::Trajectory;
