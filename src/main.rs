//! `ddim`: the command-line front end. Each subcommand lives in `src/cli/<name>.rs` with its own
//! argument struct; this file only dispatches and turns errors into one clear line and exit code 1.

/// `println!` and `print!` for every module of the binary (they shadow std's): a closed or full
/// standard output ends the command cleanly ([`stdout_failed`]) instead of panicking.
macro_rules! println {
    () => { $crate::write_stdout("\n") };
    ($($arg:tt)*) => { $crate::write_stdout(&(format!($($arg)*) + "\n")) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::write_stdout(&format!($($arg)*)) };
}
/// `eprintln!` that never panics: with standard error gone there is nobody left to tell.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ddim",
    version,
    about = "DDIM sampling for diffusers UNet2DModel checkpoints on any GPU (WGSL via wgpu), with a CPU reference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample images (default: the bundled MNIST model, 50 DDIM steps, eta 0, samples.png).
    Sample(Box<cli::sample::Args>),
    /// Pack a complete seed folder (`sample --seeds … --out-dir DIR`) into one npz.
    Pack(cli::pack::Args),
    /// Decode a spherical interpolation between two seeds' initial noise, as one strip.
    Interpolate(cli::interpolate::Args),
    /// DDIM inversion of images to x_T, reconstruction, and its mean squared error.
    Invert(cli::invert::Args),
    /// Print the per-step sampler table (timesteps, alphas, sigma) for a scheduler configuration.
    Schedule(cli::schedule::Args),
    /// Describe a model: architecture, parameter count, FLOPs per forward, weight dtype.
    Info(cli::info::Args),
    /// Run one U-Net evaluation on a batch read from a safetensors file.
    Forward(cli::forward::Args),
    /// Compare the GPU against the CPU reference layer by layer; non-zero exit above tolerance.
    Verify(cli::verify::Args),
    /// List the adapters wgpu sees, with key limits and features.
    Adapters(cli::adapters::Args),
    /// Timings and achieved rates: images/s, ms per step, per-kernel GPU time, GEMM ceiling.
    Bench(cli::bench::Args),
    /// Time every kernel variant at a model's shapes on one adapter and cache the fastest.
    Tune(cli::tune::Args),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    ensure_runtime_dir();
    stop_on_signals();
    let cli = parse_args();
    let result = match cli.command {
        Command::Sample(a) => cli::sample::run(*a),
        Command::Pack(a) => cli::pack::run(a),
        Command::Interpolate(a) => cli::interpolate::run(a),
        Command::Invert(a) => cli::invert::run(a),
        Command::Schedule(a) => cli::schedule::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Forward(a) => cli::forward::run(a),
        Command::Verify(a) => cli::verify::run(a),
        Command::Adapters(a) => cli::adapters::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Tune(a) => cli::tune::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The command line, with every option that takes a value also taking a negative number as
/// its value, so that `-n -1` reaches the option's own check (which names the option and its
/// range) instead of clap's "unexpected argument '-1'".
fn parse_args() -> Cli {
    let mut cmd = parse_args_command();
    let matches = cmd.clone().try_get_matches().unwrap_or_else(|e| exit_on(e));
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| exit_on(e.format(&mut cmd)))
}

/// Ends the command on a command-line error: help and version exit 0, a bad value of an option
/// exits 1 like every other refused value, a malformed command line 2 (clap's usage status).
fn exit_on(e: clap::Error) -> ! {
    if e.kind() == clap::error::ErrorKind::ValueValidation {
        let _ = e.print();
        std::process::exit(1);
    }
    e.exit()
}

/// The clap command of [`parse_args`].
fn parse_args_command() -> clap::Command {
    fn negatives_as_values(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|a| {
            let takes_value = a.get_action().takes_values() && !a.is_positional();
            a.allow_negative_numbers(takes_value)
        })
        .mut_subcommands(negatives_as_values)
    }
    negatives_as_values(Cli::command())
}

/// Writes to standard output, ending the command when that fails.
fn write_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        stdout_failed(e);
    }
}

/// Standard output is gone or full. A reader that went away (`ddim schedule | head -1`) ends
/// the command quietly with the status a shell shows for a process ended by SIGPIPE, 128 + 13,
/// as `seq` or `cat` end there; any other failure (a full disk) is an error, exit status 1.
/// Either way no partial output file stays.
fn stdout_failed(e: std::io::Error) -> ! {
    ddim_wgpu::output::remove_partial_files();
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(128 + 13);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1)
}

/// Ctrl-C (SIGINT) and SIGTERM end any command at once with exit code 130: half-written outputs
/// are removed first, files already complete stay. (The GPU work in flight is dropped with the
/// process; nothing of it is worth keeping.)
fn stop_on_signals() {
    let handler = || {
        ddim_wgpu::output::remove_partial_files();
        eprintln!("interrupted: stopped; no partial output file was left");
        std::process::exit(130);
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        log::warn!(
            "cannot handle Ctrl-C/SIGTERM ({e}); an interrupted run may leave a temporary file"
        );
    }
}

/// Mesa's EGL (wgpu's GL backend) prints "XDG_RUNTIME_DIR is invalid or not set" on headless
/// machines; give it a private directory when the session has none. Runs before any thread starts.
fn ensure_runtime_dir() {
    #[cfg(unix)]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("ddim-runtime-{uid}"));
        if std::fs::create_dir_all(&dir).is_ok()
            && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
        {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option of every command that takes a whole number answers a negative one with its
    /// name and its range (not clap's "unexpected argument '-1'"), so a new option cannot
    /// forget it.
    #[test]
    fn every_whole_number_option_names_its_range_for_a_negative_value() {
        use std::any::TypeId;
        let cmd = parse_args_command();
        let mut checked = 0;
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                let t = arg.get_value_parser().type_id();
                let whole = [
                    TypeId::of::<u64>(),
                    TypeId::of::<usize>(),
                    TypeId::of::<u32>(),
                ]
                .iter()
                .any(|id| t == *id);
                let Some(long) = arg.get_long().filter(|_| whole) else {
                    continue;
                };
                let flag = format!("--{long}");
                let values = arg.get_num_args().map_or(1, |n| n.min_values().max(1));
                let argv = ["ddim", sub.get_name(), &flag]
                    .into_iter()
                    .chain(std::iter::repeat_n("-1", values));
                let e = cmd
                    .clone()
                    .try_get_matches_from(argv)
                    .expect_err("a negative whole number is refused")
                    .to_string();
                assert!(
                    e.contains(&flag) && e.contains("negative") && e.contains("at least"),
                    "ddim {} {flag} -1: {e}",
                    sub.get_name()
                );
                checked += 1;
            }
        }
        assert!(checked >= 30, "only {checked} whole-number options found");
    }
}
