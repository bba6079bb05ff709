//! `ddim forward`.

use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("`ddim forward` is not implemented yet")
}
