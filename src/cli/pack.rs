//! `ddim pack DIR --npz FILE`: a complete seed folder as one npz (`arr_0`, uint8 NHWC, in seed
//! order) for OpenAI's evaluator or numpy.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use ddim_wgpu::seed_dir;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A folder written by `ddim sample --seeds SET --out-dir DIR`.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The npz to write (atomically; nothing is written if any seed is missing).
    #[arg(long, value_name = "FILE")]
    pub npz: PathBuf,
    /// No summary line.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    super::sample::check_outputs(&[("--npz", &args.npz)])?;
    let started = Instant::now();
    let packed = seed_dir::pack(&args.dir, &args.npz)?;
    if !args.quiet {
        println!(
            "packed {} image(s) of {} into {} (arr_0: uint8 {:?}, N×H×W×C) in {:.1} s",
            packed.images,
            args.dir.display(),
            args.npz.display(),
            packed.shape,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
