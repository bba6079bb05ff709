//! `ddim sample` end to end through the binary: outputs, reproducibility, and every bad argument
//! or file giving one clear error line, a non-zero exit, no panic and no output file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ddim(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddim"))
        .env(
            "DDIM_TUNE_CACHE",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
        )
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "error")
        .output()
        .expect("the ddim binary runs")
}

/// Runs the binary and fails the test, with its stderr, unless it succeeds.
fn ddim_ok(args: &[&str], cwd: &Path) {
    let out = ddim(args, cwd);
    assert!(
        out.status.success(),
        "ddim {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddim-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pipeline/tiny");

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

/// Asserts a clean failure: non-zero exit, an `error:` line, no panic, and `out` not created.
fn assert_fails(out: &Output, needle: &str, not_created: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error: {stderr}"
    );
    assert!(stderr.contains("error"), "no error line: {stderr}");
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "error does not mention {needle:?}: {stderr}"
    );
    assert!(
        !not_created.exists(),
        "{} was written by a failed run",
        not_created.display()
    );
}

#[test]
fn sample_writes_grid_tensor_and_per_image_pngs_reproducibly() {
    let dir = temp_dir("ok");
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    let args = [
        "sample", "--model", TINY, "--device", "cpu", "-n", "3", "--steps", "3", "--quiet",
    ];
    let first = ddim(
        &[
            &args[..],
            &[
                "--out",
                "a.png",
                "--save-tensor",
                "x.safetensors",
                "--out-dir",
                "imgs",
            ],
        ]
        .concat(),
        &dir,
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = ddim(&[&args[..], &["--out", "b.png"]].concat(), &dir);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let (a, b) = (
        std::fs::read(dir.join("a.png")).unwrap(),
        std::fs::read(dir.join("b.png")).unwrap(),
    );
    assert_eq!(
        a, b,
        "the same seed and settings must give a byte-identical PNG"
    );
    let grid = image::load_from_memory(&a).unwrap();
    // 3 images of 16x16 in a 2-column grid with 2 px padding.
    assert_eq!((grid.width(), grid.height()), (34, 34));
    for i in 0..3 {
        let one = image::open(dir.join("imgs").join(format!("{i:05}.png"))).unwrap();
        assert_eq!((one.width(), one.height()), (16, 16));
    }
    let x = ddim_wgpu::model::tensor_io::read_tensor(&dir.join("x.safetensors"), "sample").unwrap();
    assert_eq!(x.shape, vec![3, 3, 16, 16]);
    // A different seed gives a different image.
    let other = ddim(
        &[&args[..], &["--out", "c.png", "--seed", "1"]].concat(),
        &dir,
    );
    assert!(other.status.success());
    assert_ne!(a, std::fs::read(dir.join("c.png")).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sample_saves_the_predicted_x0_trajectory() {
    let dir = temp_dir("trajectory");
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    ddim_ok(
        &[
            "sample",
            "--model",
            TINY,
            "--device",
            "cpu",
            "-n",
            "3",
            "--steps",
            "10",
            "--quiet",
            "--out-dir",
            "imgs",
            "--save-trajectory",
            "t.png",
            "--trajectory-every",
            "3",
        ],
        &dir,
    );
    // Steps 2, 5, 8 and 9 (always the last): 4 columns, one row per image, 16x16 + 2 px pad.
    let strip = image::open(dir.join("t.png")).unwrap().to_rgb8();
    assert_eq!(
        (strip.width(), strip.height()),
        (4 * 16 + 3 * 2, 3 * 16 + 2 * 2)
    );
    for i in 0..3u32 {
        // With set_alpha_to_one (the default), the last step's x0 is the final image.
        let final_image = image::open(dir.join("imgs").join(format!("{i:05}.png")))
            .unwrap()
            .to_rgb8();
        let first_column_differs = (0..16).any(|y| {
            (0..16).any(|x| strip.get_pixel(x, i * 18 + y) != final_image.get_pixel(x, y))
        });
        assert!(
            first_column_differs,
            "image {i}: step 2's x0 should still be rough"
        );
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(
                    strip.get_pixel(3 * 18 + x, i * 18 + y),
                    final_image.get_pixel(x, y),
                    "image {i}, pixel ({x}, {y}) of the last column"
                );
            }
        }
    }
    // The default interval (steps / 10 rounded up) keeps about ten columns; rows stop at 16.
    ddim_ok(
        &[
            "sample",
            "--model",
            TINY,
            "--device",
            "cpu",
            "-n",
            "17",
            "--steps",
            "20",
            "--quiet",
            "--out",
            "many.png",
            "--save-trajectory",
            "t20.png",
        ],
        &dir,
    );
    let strip = image::open(dir.join("t20.png")).unwrap();
    assert_eq!((strip.width(), strip.height()), (10 * 18 - 2, 16 * 18 - 2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bundled_model_samples_with_no_model_argument() {
    let dir = temp_dir("bundled");
    let out = ddim(
        &[
            "sample", "--device", "cpu", "-n", "2", "--steps", "2", "--quiet",
        ],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(dir.join("samples.png")).unwrap();
    assert_eq!((img.width(), img.height()), (66, 32));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_fail_cleanly() {
    let dir = temp_dir("args");
    let base = [
        "sample", "--model", TINY, "--device", "cpu", "--quiet", "--out", "o.png",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--steps", "0"], "steps"),
        (&["--steps", "1001"], "1000"),
        (&["--eta", "1.5"], "eta"),
        (&["--eta", "-0.1"], "eta"),
        (&["--sampler", "euler-maruyama"], "sampler"),
        (&["-n", "0"], "num"),
        (&["--batch", "0"], "batch"),
        (&["--spacing", "sideways"], "spacing"),
        (
            &["--save-trajectory", "t.png", "--trajectory-every", "0"],
            "trajectory-every",
        ),
        (&["--trajectory-every", "2"], "save-trajectory"),
        (&["--save-trajectory", "missing/t.png"], "does not exist"),
    ];
    for (extra, needle) in cases {
        let out = ddim(&[&base[..], extra].concat(), &dir);
        assert_fails(&out, needle, &dir.join("o.png"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_files_fail_cleanly() {
    let dir = temp_dir("files");
    let out_png = dir.join("o.png");
    let run = |model: &Path| {
        ddim(
            &[
                "sample",
                "--model",
                model.to_str().unwrap(),
                "--device",
                "cpu",
                "--quiet",
                "--steps",
                "2",
                "--out",
                "o.png",
            ],
            &dir,
        )
    };

    assert_fails(&run(&dir.join("no-such-model")), "no-such-model", &out_png);

    let truncated = dir.join("truncated");
    copy_dir(Path::new(TINY), &truncated);
    let weights = truncated.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &run(&truncated),
        "diffusion_pytorch_model.safetensors",
        &out_png,
    );

    let unsupported = dir.join("unsupported");
    copy_dir(Path::new(TINY), &unsupported);
    let cfg_path = unsupported.join("unet/config.json");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"AttnDownBlock2D\"", "\"CrossAttnDownBlock2D\"");
    std::fs::write(&cfg_path, cfg).unwrap();
    assert_fails(&run(&unsupported), "CrossAttnDownBlock2D", &out_png);

    let out = ddim(
        &[
            "sample",
            "--model",
            TINY,
            "--device",
            "cpu",
            "--quiet",
            "--steps",
            "2",
            "--out",
            "missing-dir/o.png",
        ],
        &dir,
    );
    assert_fails(&out, "missing-dir", &dir.join("missing-dir/o.png"));

    let out = ddim(
        &[
            "sample",
            "--model",
            TINY,
            "--device",
            "cpu",
            "--quiet",
            "--steps",
            "2",
            "--out",
            "o.png",
            "--init-noise",
            "nope.safetensors",
        ],
        &dir,
    );
    assert_fails(&out, "nope.safetensors", &out_png);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invert_rejects_bad_images_cleanly() {
    let dir = temp_dir("invert");
    let small = dir.join("small.png");
    image::GrayImage::new(10, 10).save(&small).unwrap();
    let rgb = dir.join("rgb.png");
    image::RgbImage::new(32, 32).save(&rgb).unwrap();
    let junk = dir.join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    let out = dir.join("inv.png");
    for (img, needle) in [
        (&small, "10x10"),
        (&rgb, "channel"),
        (&junk, "junk.png"),
        (&dir.join("missing.png"), "missing.png"),
    ] {
        let o = ddim(
            &[
                "invert",
                "--device",
                "cpu",
                "--quiet",
                "--steps",
                "2",
                "--image",
                img.to_str().unwrap(),
                "--out",
                "inv.png",
            ],
            &dir,
        );
        assert_fails(&o, needle, &out);
    }
    // A good image works end to end and writes the strip and the latents.
    let good = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/weights/mnist/examples/digit_3.png"
    );
    let o = ddim(
        &[
            "invert", "--device", "cpu", "--quiet", "--steps", "2", "--image", good, "--out",
            "inv.png",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(image::open(&out).unwrap().width(), 66);
    assert!(dir.join("latents.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn interpolate_writes_a_strip() {
    let dir = temp_dir("interp");
    let o = ddim(
        &[
            "interpolate",
            "--model",
            TINY,
            "--device",
            "cpu",
            "--quiet",
            "--steps",
            "2",
            "--frames",
            "3",
            "--out",
            "i.png",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let strip = image::open(dir.join("i.png")).unwrap();
    assert_eq!((strip.width(), strip.height()), (3 * 16 + 2 * 2, 16));
    let o = ddim(
        &[
            "interpolate",
            "--model",
            TINY,
            "--device",
            "cpu",
            "--quiet",
            "--frames",
            "1",
            "--out",
            "j.png",
        ],
        &dir,
    );
    assert_fails(&o, "frames", &dir.join("j.png"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two runs writing the same `--out` at once: the file is always one run's whole PNG, never a
/// torn or mixed one, and no temporary file is left behind.
#[test]
fn two_writers_of_one_output_never_tear_it() {
    let dir = temp_dir("two-writers");
    let args = |seed: &'static str, out: &'static str| {
        vec![
            "sample", "--model", TINY, "-n", "8", "--steps", "2", "--device", "cpu", "--seed",
            seed, "--out", out, "--quiet",
        ]
    };
    ddim_ok(&args("1", "a.png"), &dir);
    ddim_ok(&args("2", "b.png"), &dir);
    let (a, b) = (
        std::fs::read(dir.join("a.png")).unwrap(),
        std::fs::read(dir.join("b.png")).unwrap(),
    );
    assert_ne!(a, b);
    for round in 0..3 {
        let spawn = |seed| {
            Command::new(env!("CARGO_BIN_EXE_ddim"))
                .env(
                    "DDIM_TUNE_CACHE",
                    concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
                )
                .args(args(seed, "same.png"))
                .current_dir(&dir)
                .spawn()
                .unwrap()
        };
        let (mut one, mut two) = (spawn("1"), spawn("2"));
        assert!(one.wait().unwrap().success() && two.wait().unwrap().success());
        let got = std::fs::read(dir.join("same.png")).unwrap();
        assert!(got == a || got == b, "round {round}: a mixed or torn PNG");
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Ctrl-C and SIGTERM during a long `ddim sample` stop it at once (exit 130, a message), leave no
/// output or temporary file, and do not touch files already in the output directory.
#[test]
#[cfg(unix)]
fn interrupted_sample_stops_and_leaves_no_partial_output() {
    use std::time::{Duration, Instant};
    for signal in ["INT", "TERM"] {
        let dir = temp_dir(&format!("interrupt-{signal}"));
        let images = dir.join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("earlier.png"), b"kept").unwrap();
        // About a minute of work on the CPU reference: the signal arrives mid-run.
        let mut child = Command::new(env!("CARGO_BIN_EXE_ddim"))
            .env(
                "DDIM_TUNE_CACHE",
                concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
            )
            .args([
                "sample",
                "--model",
                TINY,
                "-n",
                "64",
                "--steps",
                "200",
                "--device",
                "cpu",
                "--out",
                "grid.png",
                "--out-dir",
                "images",
                "--save-tensor",
                "x.safetensors",
            ])
            .current_dir(&dir)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the signal"
        );
        let sent = Instant::now();
        // The shell's builtin kill: no dependency on a kill binary being installed.
        let kill = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", child.id())])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        let took = sent.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("SIG{signal}: stopped {took:?} after the signal");
        // A functional bound, not a benchmark: a run that ignored the signal takes a minute.
        assert!(took < Duration::from_secs(10), "SIG{signal}: took {took:?}");
        assert_eq!(out.status.code(), Some(130), "SIG{signal}: {stderr}");
        assert!(stderr.contains("interrupted"), "SIG{signal}: {stderr}");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .chain(std::fs::read_dir(&images).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["earlier.png", "images"], "SIG{signal}: files left");
        assert_eq!(std::fs::read(images.join("earlier.png")).unwrap(), b"kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `ddim sample --sampler dpm-solver++ | unipc` writes its grid; DDIM's eta with a solver, or a
/// solver option with DDIM, is refused before anything is written.
#[test]
fn sample_with_the_solvers() {
    let dir = temp_dir("solvers");
    for sampler in ["dpm-solver++", "unipc"] {
        let out = format!("{sampler}.png");
        ddim_ok(
            &[
                "sample",
                "--model",
                TINY,
                "-n",
                "2",
                "--steps",
                "4",
                "--device",
                "cpu",
                "--sampler",
                sampler,
                "--solver-order",
                "3",
                "--out",
                &out,
                "--quiet",
            ],
            &dir,
        );
        assert!(dir.join(&out).is_file());
    }
    let bad = dir.join("bad.png");
    let args = [
        "sample", "--model", TINY, "--device", "cpu", "--out", "bad.png",
    ];
    let eta = ddim(
        &[&args[..], &["--sampler", "unipc", "--eta", "0.5"]].concat(),
        &dir,
    );
    assert_fails(&eta, "eta", &bad);
    let order = ddim(&[&args[..], &["--solver-order", "2"]].concat(), &dir);
    assert_fails(&order, "solver_order", &bad);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A consistency model's scheduler config selects `--sampler consistency` by its class name;
/// `--timesteps 22,0` gives ConsistencyModelPipeline(timesteps=[22, 0]) with torch.manual_seed(6)
/// (tests/fixtures/pipeline/tiny/pndm_sde_cm_*, made by tools/export_pndm_sde_cm_pipeline_fixtures.py).
#[test]
fn consistency_config_samples_like_diffusers_pipeline() {
    let dir = temp_dir("consistency");
    let cfg = dir.join("cm.json");
    std::fs::write(&cfg, r#"{"_class_name": "CMStochasticIterativeScheduler"}"#).unwrap();
    let out = dir.join("x0.safetensors");
    ddim_ok(
        &[
            "sample",
            "--model",
            TINY,
            "--scheduler-config",
            cfg.to_str().unwrap(),
            "--timesteps",
            "22,0",
            "-n",
            "3",
            "--seed",
            "6",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            dir.join("grid.png").to_str().unwrap(),
            "--save-tensor",
            out.to_str().unwrap(),
        ],
        &dir,
    );
    let ours = ddim_wgpu::model::tensor_io::read_tensor(&out, "sample").unwrap();
    let want = ddim_wgpu::model::tensor_io::read_tensor(
        &Path::new(TINY).join("pndm_sde_cm_expected.safetensors"),
        "cm_t22_0_b3_seed6",
    )
    .unwrap();
    let (n, c, h, w) = ours.nchw();
    let mut worst = 0.0f32;
    for (k, &v) in ours.data.iter().enumerate() {
        let (b, ch, y, x) = (k / (c * h * w), k / (h * w) % c, k / w % h, k % w);
        let theirs = want.data[((b * h + y) * w + x) * c + ch];
        worst = worst.max(((v / 2.0 + 0.5).clamp(0.0, 1.0) - theirs).abs());
    }
    assert_eq!(n, 3);
    assert!(worst <= 5e-4, "max abs difference {worst} in [0, 1]");
    // Options of other samplers are refused with one line, before any work.
    let bad = ddim(
        &[
            "sample",
            "--model",
            TINY,
            "--scheduler-config",
            cfg.to_str().unwrap(),
            "--eta",
            "0.5",
            "--device",
            "cpu",
            "--out",
            dir.join("bad.png").to_str().unwrap(),
        ],
        &dir,
    );
    assert_fails(&bad, "eta", &dir.join("bad.png"));
    std::fs::remove_dir_all(&dir).ok();
}
