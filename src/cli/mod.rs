//! One module per subcommand: its clap arguments and its `run`.

pub mod adapters;
pub mod bench;
pub mod fits;
pub mod flags;
pub mod forward;
pub mod info;
pub mod interpolate;
pub mod invert;
pub mod model_args;
pub mod numbers;
pub mod pack;
pub mod sample;
pub mod sample_args;
pub mod schedule;
pub mod seeds;
pub mod tune;
pub mod verify;
