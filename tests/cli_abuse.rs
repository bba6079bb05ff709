//! The `ddim` binary under abuse (issue 30 §1, §4, §5; issue 26 §5): outputs written per kind
//! of target and checked before any work, sizes checked before memory is taken, a closed or
//! full standard output, negative numbers, wrong kinds of path, broken safetensors, adapter
//! choices that do not exist, and `--out-dir` made when missing.
//!
//! Device nodes are only ever written inside a private mount namespace with its own tmpfs
//! `/dev` (`unshare -m`), never on the real `/dev`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pipeline/tiny");
const BIN: &str = env!("CARGO_BIN_EXE_ddim");

fn command(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env(
        "DDIM_TUNE_CACHE",
        concat!(env!("CARGO_TARGET_TMPDIR"), "/abuse-tuning.json"),
    )
    .env("RUST_LOG", "error")
    .args(args)
    .current_dir(cwd);
    c
}

fn ddim(args: &[&str], cwd: &Path) -> Output {
    command(args, cwd).output().expect("the ddim binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddim-abuse-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A one-image, one-step sample of the tiny model on the CPU, plus `extra`.
fn tiny_sample<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["sample", "--model", TINY, "--steps", "1", "--quiet"];
    if !extra.contains(&"--device") {
        v.extend(["--device", "cpu"]);
    }
    if !extra.contains(&"--seeds") {
        v.extend(["-n", "1"]);
    }
    v.extend_from_slice(extra);
    v
}

/// Asserts a clean failure: non-zero exit, one `error:` line that mentions every needle
/// (case-insensitive), no panic.
fn assert_refused(out: &Output, needles: &[&str]) {
    let e = stderr(out);
    assert!(
        !out.status.success(),
        "expected a refusal, got success: {e}"
    );
    assert!(!e.contains("panicked"), "a panic instead of an error: {e}");
    assert!(e.contains("error"), "no error line: {e}");
    for n in needles {
        assert!(
            e.to_lowercase().contains(&n.to_lowercase()),
            "error does not mention {n:?}: {e}"
        );
    }
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", stderr(out));
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG"))
}

#[cfg(unix)]
fn file_type(path: &Path) -> std::fs::FileType {
    std::fs::symlink_metadata(path).unwrap().file_type()
}

/// Makes a FIFO (None where mkfifo is missing).
#[cfg(unix)]
fn mkfifo(path: &Path) -> Option<()> {
    let ok = Command::new("mkfifo").arg(path).status().ok()?.success();
    ok.then_some(())
}

// ---- issue 30 §1: an output never replaces what it should not ----

/// As root, `--out /dev/null` used to replace the device node with a regular file and exit 0,
/// and `--out /dev/full` "succeeded" the same way. In a private namespace with its own /dev:
/// /dev/null is written and stays a device; /dev/full is an error for every output flag and
/// stays a device.
#[cfg(target_os = "linux")]
#[test]
fn device_nodes_are_written_straight_and_a_full_one_is_an_error() {
    let dir = temp_dir("dev");
    let made = ddim(
        &tiny_sample(&["--seeds", "0-1", "--out-dir", "seeds"]),
        &dir,
    );
    assert_ok(&made, "making a seed folder to pack");
    let script = format!(
        r#"set -u
mount -t tmpfs ddim-test-dev /dev || exit 90
mknod -m 666 /dev/null c 1 3 && mknod -m 666 /dev/full c 1 7 || exit 91
run() {{ "{BIN}" "$@" >/dev/null 2>err.txt; echo "$? $(stat -c %F "$last")"; tr '\n' ' ' < err.txt; echo; }}
last=/dev/null; run sample --model {TINY} --device cpu -n 1 --steps 1 --quiet --out /dev/null
last=/dev/full; run sample --model {TINY} --device cpu -n 1 --steps 1 --quiet --out /dev/full
last=/dev/full; run sample --model {TINY} --device cpu -n 1 --steps 1 --quiet --out ok.png --save-tensor /dev/full
last=/dev/full; run sample --model {TINY} --device cpu -n 1 --steps 2 --quiet --out ok.png --save-trajectory /dev/full
last=/dev/full; run pack seeds --npz /dev/full
last=/dev/null; run pack seeds --npz /dev/null
"#
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .current_dir(&dir)
        .env("RUST_LOG", "error")
        .output()
        .expect("unshare runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.is_empty() {
        // No private mount namespace here (no CAP_SYS_ADMIN): the FIFO test below takes the
        // same path (a stream written straight).
        eprintln!(
            "SKIPPED: unshare -m with a tmpfs /dev is not permitted here: {}",
            stderr(&out)
        );
        return;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "{text}");
    for (i, pair) in lines.chunks(2).enumerate() {
        let (status, err) = (pair[0], pair[1]);
        assert!(
            status.ends_with("character special file"),
            "case {i}: the device was replaced: {status}"
        );
        let code = status.split(' ').next().unwrap();
        let to_full = matches!(i, 1..=4);
        if to_full {
            assert_ne!(code, "0", "case {i}: writing /dev/full succeeded");
            assert!(
                err.contains("/dev/full") && err.contains("No space left"),
                "case {i}: {err}"
            );
        } else {
            assert_eq!(code, "0", "case {i}: {err}");
        }
        assert!(!err.contains("panicked"), "case {i}: {err}");
    }
    // The real /dev was never touched.
    assert!(file_type(Path::new("/dev/null")).is_char_device());
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
use std::os::unix::fs::FileTypeExt;

/// A FIFO takes the device path: written straight (the reader gets the PNG, the npz) and
/// left a FIFO, also for `pack --npz`, whose writer seeks (it is spooled first).
#[cfg(unix)]
#[test]
fn a_fifo_output_is_written_straight_and_stays_a_fifo() {
    let dir = temp_dir("fifo");
    assert_ok(
        &ddim(
            &tiny_sample(&["--seeds", "0-1", "--out-dir", "seeds"]),
            &dir,
        ),
        "seed folder",
    );
    let fifo = dir.join("pipe");
    if mkfifo(&fifo).is_none() {
        eprintln!("SKIPPED: no mkfifo");
        return;
    }
    for (args, magic) in [
        (tiny_sample(&["--out", "pipe"]), &b"\x89PNG"[..]),
        (
            vec!["pack", "seeds", "--npz", "pipe", "--quiet"],
            &b"PK\x03\x04"[..],
        ),
    ] {
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let out = ddim(&args, &dir);
        assert_ok(&out, &args.join(" "));
        let bytes = reader.join().unwrap();
        assert!(
            bytes.starts_with(magic),
            "{}: read {} bytes",
            args.join(" "),
            bytes.len()
        );
        assert!(file_type(&fifo).is_fifo(), "the FIFO was replaced");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--out /dev/stdout` with standard output a pipe: the PNG goes down the pipe (the path is
/// a chain of links ending in `pipe:[…]`, which only opening it follows).
#[cfg(target_os = "linux")]
#[test]
fn dev_stdout_as_an_output_writes_down_the_pipe() {
    let dir = temp_dir("stdout");
    let out = command(&tiny_sample(&["--out", "/dev/stdout"]), &dir)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_ok(&out, "--out /dev/stdout");
    assert!(
        out.stdout.starts_with(b"\x89PNG"),
        "{} bytes",
        out.stdout.len()
    );
    assert!(names(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An output that is a symbolic link is written at what it points to (atomically there); the
/// link stays a link. A dangling link makes its target.
#[cfg(unix)]
#[test]
fn a_symlink_output_is_written_through() {
    let dir = temp_dir("link");
    std::fs::create_dir(dir.join("real")).unwrap();
    std::fs::write(dir.join("real/grid.png"), b"old").unwrap();
    std::os::unix::fs::symlink("real/grid.png", dir.join("grid.png")).unwrap();
    std::os::unix::fs::symlink("real/x.safetensors", dir.join("x.safetensors")).unwrap();
    let out = ddim(
        &tiny_sample(&["--out", "grid.png", "--save-tensor", "x.safetensors"]),
        &dir,
    );
    assert_ok(&out, "sample through links");
    for link in ["grid.png", "x.safetensors"] {
        assert!(
            file_type(&dir.join(link)).is_symlink(),
            "{link} was replaced"
        );
    }
    assert!(is_png(&dir.join("real/grid.png")));
    assert!(
        std::fs::metadata(dir.join("real/x.safetensors"))
            .unwrap()
            .len()
            > 16
    );
    assert_eq!(names(&dir.join("real")), ["grid.png", "x.safetensors"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory, a symlink loop or a socket where a file should go is refused up front, naming
/// the kind; nothing is written.
#[cfg(unix)]
#[test]
fn a_directory_or_loop_as_an_output_is_refused_naming_it() {
    let dir = temp_dir("kinds");
    std::fs::create_dir(dir.join("d")).unwrap();
    std::os::unix::fs::symlink("loop-b", dir.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", dir.join("loop-b")).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--out", "d"], "is a directory"),
        (&["--out", "d/"], "directory"),
        (&["--out", "ok.png", "--save-tensor", "d"], "is a directory"),
        (&["--out", "loop-a"], "loop"),
        (&["--out", "ok.png", "--save-trajectory", "loop-a"], "loop"),
    ];
    for (extra, needle) in cases {
        let out = ddim(&tiny_sample(extra), &dir);
        assert_refused(&out, &[needle]);
    }
    let out = ddim(&["pack", "d", "--npz", "d"], &dir);
    assert_refused(&out, &["--npz", "is a directory"]);
    assert_eq!(
        names(&dir),
        ["d", "loop-a", "loop-b"],
        "something was written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two outputs of one command naming the same file (also through `.`, a link or a
/// relative path) are refused before any work.
#[cfg(unix)]
#[test]
fn two_outputs_naming_the_same_file_are_refused() {
    let dir = temp_dir("same");
    std::os::unix::fs::symlink("a.png", dir.join("alias.png")).unwrap();
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--out", "a.png", "--save-trajectory", "./a.png"],
            "same file",
        ),
        (
            &["--out", "a.png", "--save-tensor", "alias.png"],
            "same file",
        ),
        (
            &["--out", "sub/../a.png", "--save-tensor", "a.png"],
            "same file",
        ),
        (
            &[
                "--out",
                "x.png",
                "--out-dir",
                ".",
                "--save-tensor",
                "00000.png",
            ],
            "also image 0 of --out-dir",
        ),
    ];
    for (extra, needle) in cases {
        let out = ddim(&tiny_sample(extra), &dir);
        assert_refused(&out, &[needle]);
    }
    let out = ddim(
        &[
            "invert",
            "--model",
            TINY,
            "--device",
            "cpu",
            "--out",
            "i.png",
            "--latents",
            "./i.png",
        ],
        &dir,
    );
    assert_refused(&out, &["--out", "--latents", "same file"]);
    assert_eq!(names(&dir), ["alias.png", "sub"], "something was written");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every output's place is checked before sampling: before, `--out` was written and only then
/// did `--save-tensor` into an unwritable directory (or a missing one, or one under a file)
/// fail. Now nothing is written.
#[test]
fn every_output_place_is_checked_before_any_work() {
    let dir = temp_dir("places");
    std::fs::write(dir.join("file"), b"x").unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--save-tensor", "/proc/ddim-test.safetensors"],
            &["--save-tensor", "/proc"],
        ),
        (
            &["--save-tensor", "missing/x.safetensors"],
            &["does not exist"],
        ),
        (
            &["--save-tensor", "file/x.safetensors"],
            &["file", "not a directory"],
        ),
        (
            &["--save-trajectory", "/proc/t.png"],
            &["--save-trajectory"],
        ),
    ];
    for (extra, needles) in cases {
        let out = ddim(&tiny_sample(&[&["--out", "ok.png"], *extra].concat()), &dir);
        assert_refused(&out, needles);
        assert!(
            !dir.join("ok.png").exists(),
            "{extra:?}: --out was written first"
        );
    }
    // Forward's outputs as well.
    let out = ddim(
        &[
            "forward",
            "--input",
            "in.safetensors",
            "--timestep",
            "1",
            "--out",
            "/proc/y.st",
        ],
        &dir,
    );
    assert_refused(&out, &["--out", "/proc"]);
    assert_eq!(names(&dir), ["file"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A final name of 255 bytes, which the file system accepts, is written (its temporary name
/// used to be longer and broke the limit); one of 256 bytes is refused up front, saying so.
#[test]
fn a_name_the_file_system_accepts_is_accepted() {
    let dir = temp_dir("long");
    let ok = "a".repeat(251) + ".png";
    let out = ddim(&tiny_sample(&["--out", &ok]), &dir);
    assert_ok(&out, "255-byte name");
    assert!(is_png(&dir.join(&ok)));
    let long = "a".repeat(252) + ".png";
    let out = ddim(&tiny_sample(&["--out", &long]), &dir);
    assert_refused(&out, &["256 bytes"]);
    assert_eq!(names(&dir), [ok]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tuning cache is an output too: a directory there is refused before any work.
#[test]
fn a_tuning_cache_that_is_a_directory_is_refused() {
    let dir = temp_dir("cache");
    let out = command(&tiny_sample(&[]), &dir)
        .env("DDIM_TUNE_CACHE", &dir)
        .output()
        .unwrap();
    assert_refused(&out, &["DDIM_TUNE_CACHE", "is a directory"]);
    assert!(names(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- issue 30 §4: size before memory; the command line never panics ----

/// Jobs too large for memory are refused up front with the limit and what fits, instead of
/// an abort (409 GB) or a capacity-overflow panic.
#[test]
fn jobs_too_large_for_memory_are_refused_with_what_fits() {
    let dir = temp_dir("huge");
    let cases: &[(&[&str], &str)] = &[
        (
            &["sample", "-n", "100000000", "--device", "cpu"],
            "-n 100000000",
        ),
        (
            &["sample", "-n", "18446744073709551615", "--device", "cpu"],
            "-n 18446744073709551615",
        ),
        (
            &[
                "sample",
                "-n",
                "100000000",
                "--device",
                "cpu",
                "--save-trajectory",
                "t.png",
            ],
            "-n 100000000",
        ),
        (
            &[
                "interpolate",
                "--frames",
                "18446744073709551615",
                "--device",
                "cpu",
            ],
            "--frames",
        ),
        (&["tune", "--batch", "18446744073709551615"], "--batch"),
        (&["verify", "--batch", "18446744073709551615"], "--batch"),
        (
            &[
                "bench",
                "--device",
                "cpu",
                "--batch",
                "18446744073709551615",
            ],
            "--batch",
        ),
    ];
    for (args, flag) in cases {
        let out = ddim(args, &dir);
        assert_refused(&out, &[flag, "at most", "fit"]);
    }
    assert!(names(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ddim schedule | head -1` used to panic. Every command that prints ends quietly when its
/// reader has gone, with the status a shell shows for SIGPIPE (141), and leaves no file.
#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = temp_dir("pipe");
    let commands: &[&str] = &[
        "schedule --steps 1000",
        "schedule --json",
        "info",
        "info --json",
        "adapters --json",
        &format!("sample --model {TINY} --device cpu -n 1 --steps 1 --out s.png"),
        &format!("forward --model {TINY} --device cpu --input missing --timestep 1 --out y.st"),
    ];
    for c in commands {
        // The reader (`true`) has exited long before ddim starts writing.
        let script = format!("(sleep 0.3; exec {BIN} {c}) | true; echo ${{PIPESTATUS[0]}}");
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(&dir)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let e = stderr(&out);
        assert!(!e.contains("panicked"), "ddim {c}: {e}");
        if c.starts_with("forward") {
            // Fails on its input before printing anything: the usual error.
            assert_eq!(status, "1", "ddim {c}: {e}");
        } else {
            assert_eq!(status, "141", "ddim {c}: {e}");
            assert!(e.trim().is_empty(), "ddim {c} was not quiet: {e}");
        }
    }
    assert!(
        names(&dir).iter().all(|n| n == "s.png"),
        "{:?}",
        names(&dir)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A full standard output is an error with exit status 1, not a panic.
#[cfg(target_os = "linux")]
#[test]
fn a_full_stdout_is_an_error() {
    let dir = temp_dir("full");
    for args in [vec!["schedule"], vec!["info"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = command(&args, &dir)
            .stdout(Stdio::from(full))
            .output()
            .unwrap();
        assert_refused(&out, &["standard output", "no space"]);
        assert_eq!(out.status.code(), Some(1));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Negative numbers name the option and its range (clap said "unexpected argument '-1'").
#[test]
fn negative_numbers_name_the_option_and_its_range() {
    let dir = temp_dir("neg");
    let cases: &[&[&str]] = &[
        &["sample", "-n", "-1"],
        &["sample", "--steps", "-5"],
        &["sample", "--batch", "-2"],
        &["sample", "--seed", "-1"],
        &["interpolate", "--frames", "-3"],
        &["bench", "--iters", "-1"],
        &["schedule", "--steps-offset", "-1"],
        &["sample", "--adapter", "-1"],
    ];
    for args in cases {
        let out = ddim(args, &dir);
        let flag = args[1];
        assert_refused(&out, &[flag, "negative", "at least"]);
        assert!(
            !stderr(&out).contains("unexpected argument"),
            "{}",
            stderr(&out)
        );
    }
    let out = ddim(
        &["forward", "--input", "x", "--timestep", "-1", "--out", "y"],
        &dir,
    );
    assert_refused(&out, &["--timestep", "non-negative"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `forward --input` with NaN is refused like `--init-noise` is.
#[test]
fn forward_input_with_nan_is_refused() {
    let dir = temp_dir("nan");
    let mut x = ddim_wgpu::Tensor::zeros(&[1, 3, 16, 16]);
    x.data[5] = f32::NAN;
    x.data[9] = f32::INFINITY;
    ddim_wgpu::model::tensor_io::write_tensor(&dir.join("x.safetensors"), "sample", &x).unwrap();
    let out = ddim(
        &[
            "forward",
            "--model",
            TINY,
            "--device",
            "cpu",
            "--input",
            "x.safetensors",
            "--timestep",
            "10",
            "--out",
            "y.safetensors",
        ],
        &dir,
    );
    assert_refused(&out, &["--input", "2 non-finite"]);
    assert!(!dir.join("y.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file read has a size bound: sparse files of absurd sizes (instant to make) are refused
/// before they are read, naming the file.
#[test]
fn every_file_read_has_a_size_bound() {
    let dir = temp_dir("big");
    let sparse = |name: &str, len: u64| {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    };
    sparse("noise.safetensors", 5 << 30);
    sparse("in.safetensors", 5 << 30);
    sparse("scheduler.json", 1 << 30);
    sparse("image.png", 2 << 30);
    sparse("report.json", 1 << 30);
    let model = dir.join("model");
    copy_dir(Path::new(TINY), &model);
    sparse("model/unet/config.json", 1 << 30);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            tiny_sample(&["--init-noise", "noise.safetensors"]),
            "noise.safetensors",
        ),
        (
            vec![
                "forward",
                "--model",
                TINY,
                "--device",
                "cpu",
                "--input",
                "in.safetensors",
                "--timestep",
                "1",
                "--out",
                "y.st",
            ],
            "in.safetensors",
        ),
        (
            tiny_sample(&["--scheduler-config", "scheduler.json"]),
            "scheduler.json",
        ),
        (
            vec![
                "invert",
                "--model",
                TINY,
                "--device",
                "cpu",
                "--image",
                "image.png",
            ],
            "image.png",
        ),
        (vec!["bench", "--compare", "report.json"], "report.json"),
        (vec!["info", "--model", "model"], "config.json"),
    ];
    for (args, file) in &cases {
        let out = ddim(args, &dir);
        assert_refused(&out, &[file, "at most"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

// ---- issue 30 §5: errors that say what to fix ----

/// A path that exists but is the wrong kind is named as such, not "not found".
#[cfg(unix)]
#[test]
fn wrong_kinds_of_input_path_are_named() {
    let dir = temp_dir("wrongkind");
    std::fs::write(dir.join("file"), b"x").unwrap();
    std::fs::create_dir(dir.join("d")).unwrap();
    std::os::unix::fs::symlink("loop-b", dir.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", dir.join("loop-b")).unwrap();
    let have_fifo = mkfifo(&dir.join("fifo")).is_some();
    let model = dir.join("model");
    copy_dir(Path::new(TINY), &model);
    std::fs::remove_file(model.join("unet/config.json")).unwrap();
    std::fs::create_dir(model.join("unet/config.json")).unwrap();
    let mut cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["info", "--model", "file"],
            vec!["file", "is a regular file", "directory"],
        ),
        (
            vec!["info", "--model", "loop-a"],
            vec!["loop-a", "symbolic link loop"],
        ),
        (
            vec!["info", "--model", "model"],
            vec!["config.json", "is a directory"],
        ),
        (
            tiny_sample(&["--init-noise", "d"]),
            vec!["d", "is a directory"],
        ),
        (
            tiny_sample(&["--scheduler-config", "loop-a"]),
            vec!["loop-a", "loop"],
        ),
        (
            vec![
                "forward",
                "--model",
                TINY,
                "--input",
                "d",
                "--timestep",
                "1",
                "--out",
                "y.st",
            ],
            vec!["--input", "is a directory"],
        ),
        (
            vec![
                "invert", "--model", TINY, "--device", "cpu", "--image", "loop-a",
            ],
            vec!["loop-a", "loop"],
        ),
    ];
    if have_fifo {
        cases.push((
            tiny_sample(&["--scheduler-config", "fifo"]),
            vec!["fifo", "FIFO"],
        ));
        cases.push((vec!["info", "--model", "fifo"], vec!["fifo", "FIFO"]));
    }
    for (args, needles) in &cases {
        let out = ddim(args, &dir);
        assert_refused(&out, needles);
        assert!(
            !stderr(&out).contains("No such file"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A safetensors file whose header lies (offsets that do not fit the shape, a gap, a tensor
/// past the end) is refused naming the file and the tensor, never with a bare library code
/// such as `TensorInvalidInfo`.
#[test]
fn safetensors_failures_name_the_file_and_the_tensor() {
    let dir = temp_dir("st");
    let file = |name: &str, header: &str, data: usize| {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    file(
        "shape.safetensors",
        r#"{"sample":{"dtype":"F32","shape":[1,3,16,16],"data_offsets":[0,12]}}"#,
        12,
    );
    file(
        "gap.safetensors",
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"sample":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
        12,
    );
    file(
        "short.safetensors",
        r#"{"sample":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        8,
    );
    for (name, tensor) in [
        ("shape.safetensors", "sample"),
        ("gap.safetensors", "sample"),
        ("short.safetensors", "sample"),
    ] {
        let out = ddim(&tiny_sample(&["--init-noise", name]), &dir);
        assert_refused(&out, &[name, &format!("tensor \"{tensor}\"")]);
        let e = stderr(&out);
        for code in [
            "TensorInvalidInfo",
            "InvalidOffset",
            "MetadataIncompleteBuffer",
        ] {
            assert!(!e.contains(code), "a bare library code: {e}");
        }
    }
    // The model's weights file, too.
    let model = dir.join("model");
    copy_dir(Path::new(TINY), &model);
    let weights = model.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 3]).unwrap();
    let out = ddim(&["info", "--model", "model"], &dir);
    assert_refused(&out, &["diffusion_pytorch_model.safetensors", "tensor \""]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ddim adapters --json` lists an adapter on this backend.
fn has_adapter(backend: &str, dir: &Path) -> bool {
    let out = ddim(&["adapters", "--json", "--backend", backend], dir);
    String::from_utf8_lossy(&out.stdout).contains("\"index\"")
}

/// Asking for DX12 on Linux says that Linux has no DX12 and lists the adapters that exist,
/// instead of suggesting Mesa's Vulkan driver when a Vulkan adapter is there.
#[cfg(target_os = "linux")]
#[test]
fn device_hints_match_the_machine() {
    let dir = temp_dir("hint");
    let vulkan = has_adapter("vulkan", &dir);
    for args in [
        vec!["adapters", "--backend", "dx12"],
        tiny_sample(&["--device", "gpu", "--backend", "dx12"]),
    ] {
        let out = ddim(&args, &dir);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
        assert!(text.contains("dx12 is not available on linux"), "{text}");
        if vulkan {
            assert!(!text.contains("mesa-vulkan-drivers"), "{text}");
            assert!(text.contains("--backend vulkan"), "{text}");
        }
        assert!(!text.contains("panicked"), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An unknown `WGPU_BACKEND` value is named (wgpu skipped it and found no adapter).
#[test]
fn an_unknown_wgpu_backend_is_named() {
    let dir = temp_dir("env");
    for args in [vec!["adapters"], tiny_sample(&["--device", "gpu"])] {
        let out = command(&args, &dir)
            .env("WGPU_BACKEND", "vulkan,vulkn")
            .output()
            .unwrap();
        assert_refused(&out, &["WGPU_BACKEND", "\"vulkn\""]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An explicit `--adapter N` (or `--backend`) that does not exist is refused under
/// `--device auto`, not replaced by the CPU reference.
#[test]
fn an_explicit_adapter_that_does_not_exist_is_refused() {
    let dir = temp_dir("adapter");
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "sample",
            "--model",
            TINY,
            "-n",
            "1",
            "--steps",
            "1",
            "--adapter",
            "99",
            "--out",
            "o.png",
        ],
        vec![
            "sample",
            "--model",
            TINY,
            "-n",
            "1",
            "--steps",
            "1",
            "--backend",
            "dx12",
            "--out",
            "o.png",
        ],
        vec![
            "interpolate",
            "--model",
            TINY,
            "--frames",
            "2",
            "--steps",
            "1",
            "--adapter",
            "99",
            "--out",
            "o.png",
        ],
    ];
    for args in &cases {
        let out = ddim(args, &dir);
        assert_refused(&out, &[]);
        let e = stderr(&out);
        assert!(e.contains("adapter index 99") || e.contains("dx12"), "{e}");
        assert!(!dir.join("o.png").exists(), "{args:?} fell back to the CPU");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tuning cache that cannot be written (here /proc, where nothing can be made) is reported
/// once, not once per kernel shape (18 lines before).
#[test]
fn a_repeated_warning_is_printed_once() {
    let dir = temp_dir("warn");
    if !has_adapter("vulkan", &dir) {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but no Vulkan adapter"
        );
        eprintln!("SKIPPED: no Vulkan adapter");
        return;
    }
    let out = command(
        &[
            "sample",
            "-n",
            "1",
            "--steps",
            "1",
            "--quiet",
            "--backend",
            "vulkan",
            "--tune",
            "force",
        ],
        &dir,
    )
    .env("DDIM_TUNE_CACHE", "/proc/ddim-abuse-tuning.json")
    .env("RUST_LOG", "warn")
    .output()
    .unwrap();
    assert_ok(&out, "sample with an unwritable tuning cache");
    let e = stderr(&out);
    let n = e.matches("could not update the tuning cache").count();
    assert_eq!(n, 1, "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- issue 26 §5: --out-dir is made when missing ----

/// `--out-dir` is created with its parents, without and with `--seeds`.
#[test]
fn out_dir_is_created_with_its_parents() {
    let dir = temp_dir("mkdir");
    assert_ok(
        &ddim(
            &tiny_sample(&["--out-dir", "a/b/c", "--out", "g.png"]),
            &dir,
        ),
        "plain",
    );
    assert!(is_png(&dir.join("a/b/c/00000.png")));
    assert_ok(
        &ddim(&tiny_sample(&["--seeds", "3-4", "--out-dir", "x/y"]), &dir),
        "seeds",
    );
    assert!(is_png(&dir.join("x/y/000003.png")) && is_png(&dir.join("x/y/000004.png")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Eight shards of a job array starting at the same moment all make the missing folder (its
/// parents too) and fill it.
#[test]
fn out_dir_is_created_safely_by_shards_starting_at_once() {
    let dir = temp_dir("race");
    let children: Vec<_> = (0..8)
        .map(|i| {
            let shard = format!("{i}/8");
            command(
                &tiny_sample(&["--seeds", "0-15", "--shard", &shard, "--out-dir", "p/q/r"]),
                &dir,
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_ok(&out, "a shard");
    }
    let pngs = names(&dir.join("p/q/r"))
        .into_iter()
        .filter(|n| n.ends_with(".png"))
        .count();
    assert_eq!(pngs, 16);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An existing non-directory, or a place where nothing can be made, is refused in one line.
#[test]
fn out_dir_that_cannot_be_a_directory_is_refused() {
    let dir = temp_dir("baddir");
    std::fs::write(dir.join("file"), b"x").unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("file", &["--out-dir", "is a regular file"]),
        ("file/sub", &["--out-dir", "cannot create"]),
        ("/proc/ddim-abuse", &["--out-dir", "/proc/ddim-abuse"]),
    ];
    for (place, needles) in cases {
        for extra in [
            vec!["--out-dir", place],
            vec!["--seeds", "0-1", "--out-dir", place],
        ] {
            let out = ddim(&tiny_sample(&extra), &dir);
            assert_refused(&out, needles);
            assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
        }
    }
    assert_eq!(names(&dir), ["file"]);
    let _ = std::fs::remove_dir_all(&dir);
}
