//! `--guidance-scale`, `--guidance-rescale` and `--null-class` from the command line: guided runs
//! on the tiny class-conditional fixture (its null label declared by `_null_class_label`), the
//! one-line refusals (an unconditional model, no null label, a null label out of range, a rescale
//! without guidance), `invert` guiding only its reconstruction, and seed folders that record the
//! guidance (and keep their identity without it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const COND: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/pipeline/tiny_cond"
);
const UNCOND: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pipeline/tiny");

fn ddim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddim"))
        .env(
            "DDIM_TUNE_CACHE",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
        )
        .env("RUST_LOG", "error")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .args(args)
        .output()
        .expect("the ddim binary runs")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddim-guide-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A one-line refusal containing `want`, with nothing written to `out`.
fn refused(o: &Output, want: &str, out: &Path) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected a refusal: {e}");
    assert!(e.contains(want), "expected {want:?} in: {e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    assert!(!out.exists(), "{} written", out.display());
}

fn sample(model: &str, out: &Path, extra: &[&str]) -> Output {
    let out = out.to_str().unwrap();
    let mut args = vec![
        "sample", "--model", model, "--device", "cpu", "--steps", "2", "--out", out, "--quiet",
    ];
    if !extra.contains(&"-n") {
        args.extend(["-n", "2"]);
    }
    args.extend_from_slice(extra);
    ddim(&args)
}

#[test]
fn guided_sampling_and_its_refusals() {
    let dir = temp_dir("sample");
    let out = dir.join("g.png");
    let o = sample(COND, &out, &["--class", "1,2", "--guidance-scale", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.exists());
    let with_rescale = dir.join("r.png");
    let o = sample(
        COND,
        &with_rescale,
        &[
            "--class",
            "1",
            "--guidance-scale",
            "3",
            "--guidance-rescale",
            "0.7",
            "--null-class",
            "3",
            "--sampler",
            "euler-ancestral",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let bad = dir.join("bad.png");
    let o = sample(UNCOND, &bad, &["--guidance-scale", "2"]);
    refused(&o, "needs a class-conditional model", &bad);
    let o = sample(COND, &bad, &["--class", "1", "--guidance-rescale", "0.5"]);
    refused(&o, "only act with guidance", &bad);
    let o = sample(
        COND,
        &bad,
        &["--class", "1", "--guidance-scale", "2", "--null-class", "4"],
    );
    refused(&o, "the null label: class label 4 is out of range", &bad);
    let o = sample(
        COND,
        &bad,
        &[
            "--class",
            "1",
            "--guidance-scale",
            "2",
            "--guidance-rescale",
            "1.5",
        ],
    );
    refused(&o, "must lie in [0, 1]", &bad);

    // The same model without its declaration: the refusal says how to give the null label.
    let bare = dir.join("bare");
    for sub in ["unet", "scheduler"] {
        std::fs::create_dir_all(bare.join(sub)).unwrap();
    }
    for file in [
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        std::fs::copy(Path::new(COND).join(file), bare.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(Path::new(COND).join("unet/config.json")).unwrap();
    let config = config.replace("\"_null_class_label\": 3,", "");
    assert!(!config.contains("_null_class_label"));
    std::fs::write(bare.join("unet/config.json"), config).unwrap();
    let bare = bare.to_str().unwrap();
    let o = sample(bare, &bad, &["--class", "1", "--guidance-scale", "2"]);
    refused(&o, "give --null-class N, or declare it", &bad);
    // --null-class gives it: the same image as the declared label's.
    let given = dir.join("given.png");
    let o = sample(
        bare,
        &given,
        &[
            "--class",
            "1,2",
            "--guidance-scale",
            "3",
            "--null-class",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&given).unwrap(), std::fs::read(&out).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invert_guides_only_the_reconstruction() {
    let dir = temp_dir("invert");
    let image = dir.join("in.png");
    let o = sample(COND, &image, &["--class", "0", "-n", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.join("inv.png");
    let latents = dir.join("lat.safetensors");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "invert",
            "--model",
            COND,
            "--device",
            "cpu",
            "--steps",
            "3",
            "--class",
            "0",
            "--image",
            image.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--latents",
            latents.to_str().unwrap(),
            "--quiet",
        ];
        a.extend_from_slice(extra);
        ddim(&a)
    };
    let o = args(&["--guidance-scale", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plain = std::fs::read(&latents).unwrap();
    // The latents are the unguided inversion's: guidance changes the reconstruction only.
    let o = args(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&latents).unwrap(), plain);
    let help = ddim(&["invert", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("not a bijection"), "{help}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn seed_folders_record_guidance() {
    let dir = temp_dir("seeds");
    let folder = dir.join("f");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "sample",
            "--model",
            COND,
            "--device",
            "cpu",
            "--steps",
            "2",
            "--seeds",
            "0-1",
            "--out-dir",
            folder.to_str().unwrap(),
            "--class",
            "2",
            "--quiet",
        ];
        a.extend_from_slice(extra);
        ddim(&a)
    };
    let o = run(&["--guidance-scale", "2.5", "--guidance-rescale", "0.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = std::fs::read_to_string(folder.join("ddim-manifest.json")).unwrap();
    for key in [
        "\"run.guidance_scale\": \"2.5\"",
        "\"run.guidance_rescale\": \"0.5\"",
        "\"run.null_class\": \"3\"",
    ] {
        assert!(manifest.contains(key), "{key} missing in {manifest}");
    }
    let o = run(&["--guidance-scale", "3", "--guidance-rescale", "0.5"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("run.guidance_scale"), "{}", stderr(&o));
    // Without guidance a folder has no guidance keys (folders made before guidance match).
    let plain = dir.join("p");
    let o = ddim(&[
        "sample",
        "--model",
        COND,
        "--device",
        "cpu",
        "--steps",
        "2",
        "--seeds",
        "0",
        "--out-dir",
        plain.to_str().unwrap(),
        "--class",
        "2",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = std::fs::read_to_string(plain.join("ddim-manifest.json")).unwrap();
    assert!(
        !manifest.contains("run.guidance") && !manifest.contains("run.null_class"),
        "{manifest}"
    );
    // The model's declared null label is part of its config, guided or not.
    assert!(manifest.contains("\"model.config._null_class_label\": \"3\""));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Between two classes at one seed: the ends are the two classes exactly (guided or not), the
/// middle differs from both; `ddim interpolate --class-a A --class-b B` writes the strip.
#[test]
fn interpolation_between_classes() {
    use ddim_wgpu::pipeline::{Device, LatentRequest, Pipeline};
    use ddim_wgpu::sampling::Guidance;
    use ddim_wgpu::{ClassLabels, Tensor};
    let pipe = Pipeline::load(Path::new(COND)).unwrap();
    let per = pipe.per_image();
    let noise = ddim_wgpu::rng::NoiseSource::new(ddim_wgpu::rng::RngKind::Torch, 5)
        .randn(per)
        .unwrap();
    let x = Tensor::new(vec![3, 3, 16, 16], noise.repeat(3)).unwrap();
    for scale in [1.0, 2.0] {
        let decode = |labels: ClassLabels| {
            let request = LatentRequest {
                steps: 3,
                labels: Some(labels),
                guidance: Guidance {
                    scale,
                    ..Default::default()
                },
                ..Default::default()
            };
            pipe.decode(&Device::Cpu, &x, &request).unwrap()
        };
        let mixed = decode(ClassLabels::Mixed(vec![
            (0, 2, 0.0),
            (0, 2, 0.5),
            (0, 2, 1.0),
        ]));
        let ends = decode(ClassLabels::Indices(vec![0, 1, 2]));
        assert_eq!(mixed.data[..per], ends.data[..per], "t = 0 is class 0");
        assert_eq!(
            mixed.data[2 * per..],
            ends.data[2 * per..],
            "t = 1 is class 2"
        );
        let mid = &mixed.data[per..2 * per];
        let far = |other: &[f32]| {
            mid.iter()
                .zip(other)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max)
        };
        assert!(far(&ends.data[..per]) > 1e-3 && far(&ends.data[2 * per..]) > 1e-3);
    }
    let dir = temp_dir("interp");
    let out = dir.join("strip.png");
    let o = ddim(&[
        "interpolate",
        "--model",
        COND,
        "--device",
        "cpu",
        "--steps",
        "2",
        "--frames",
        "3",
        "--class-a",
        "0",
        "--class-b",
        "2",
        "--seed-a",
        "5",
        "--guidance-scale",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.exists());
    let o = ddim(&[
        "interpolate",
        "--model",
        COND,
        "--class-a",
        "0",
        "--class-b",
        "9",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("out of range"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
