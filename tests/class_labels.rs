//! Class labels from the command line to every image: each image of a run gets its own label
//! whatever the batch (the CPU reference on the `cd_imagenet64_like` fixture, a class-conditional
//! model in the block structure of openai/diffusers-cd_imagenet64_l2), `--class` on `ddim sample`
//! (one for all, one per image, one per seed), and seed folders that record the class.

use ddim_wgpu::model::ClassLabels;
use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
use ddim_wgpu::sampling::SampleSettings;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unet/cd_imagenet64_like"
);

fn request(seeds: Vec<u64>, labels: &[u32], batch: usize) -> SampleRequest {
    SampleRequest {
        settings: SampleSettings {
            steps: 2,
            ..Default::default()
        },
        noise: Noise::Seeds(seeds),
        batch: Some(batch),
        labels: Some(ClassLabels::Indices(labels.to_vec())),
        ..Default::default()
    }
}

#[test]
fn every_image_gets_its_own_label_whatever_the_batch() {
    let pipe = Pipeline::load(Path::new(MODEL)).unwrap();
    let per = pipe.per_image();
    let all = pipe
        .sample(&Device::Cpu, &request(vec![5, 6, 7], &[1, 2, 3], 2))
        .unwrap();
    // Seed 7 alone with label 3 is the third image of the run above, bit for bit.
    let alone = pipe
        .sample(&Device::Cpu, &request(vec![7], &[3], 1))
        .unwrap();
    assert_eq!(all.data[2 * per..], alone.data[..]);
    // The label matters: another one changes the image.
    let other = pipe
        .sample(&Device::Cpu, &request(vec![7], &[4], 1))
        .unwrap();
    assert_ne!(other.data, alone.data);
    // One label serves every image.
    let one = pipe
        .sample(&Device::Cpu, &request(vec![6, 7], &[3], 2))
        .unwrap();
    assert_eq!(one.data[per..], alone.data[..]);
    // Labels for another number of images are refused before any work.
    let e = pipe
        .sample(&Device::Cpu, &request(vec![6, 7], &[1, 2, 3], 2))
        .unwrap_err();
    assert!(e.to_string().contains("3 class labels for 2 images"), "{e}");
}

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
    let dir = std::env::temp_dir().join(format!("ddim-class-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sample(extra: &[&str]) -> Output {
    let mut args = vec![
        "sample", "--model", MODEL, "--steps", "2", "--device", "cpu", "--quiet",
    ];
    args.extend_from_slice(extra);
    ddim(&args)
}

fn refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
}

#[test]
fn sample_takes_class_for_all_per_image_and_per_seed() {
    let dir = temp_dir("sample");
    let grid = dir.join("grid.png");
    let grid = grid.to_str().unwrap();
    let ok = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    ok(sample(&["-n", "2", "--class", "3", "--out", grid]));
    ok(sample(&["-n", "2", "--class", "3,7", "--out", grid]));
    refused(
        &sample(&["-n", "2", "--out", grid]),
        "the model is class-conditional",
    );
    refused(
        &sample(&["-n", "3", "--class", "3,7", "--out", grid]),
        "2 class labels for 3 images",
    );
    refused(
        &sample(&["-n", "2", "--class", "10", "--out", grid]),
        "class label 10 is out of range",
    );
    // Under plain --device auto (the GPU plan runs class-conditional models).
    ok(ddim(&[
        "sample", "--model", MODEL, "--steps", "1", "-n", "1", "--class", "2", "--out", grid,
    ]));
    // The bundled model is unconditional.
    refused(
        &ddim(&[
            "sample", "-n", "1", "--steps", "1", "--device", "cpu", "--class", "1", "--out", grid,
        ]),
        "the model is not class-conditional",
    );

    // One label per seed of the whole set: each shard gives each seed its own.
    let folder = dir.join("seeds");
    let f = folder.to_str().unwrap();
    let seeds = |shard: &str, class: &str| {
        sample(&[
            "--seeds",
            "4-6",
            "--shard",
            shard,
            "--class",
            class,
            "--out-dir",
            f,
        ])
    };
    ok(seeds("0/2", "1,2,3"));
    ok(seeds("1/2", "1,2,3"));
    refused(
        &seeds("0/1", "1,2"),
        "--class gives 2 labels for the 3 seeds",
    );
    // A rerun with other labels is refused, naming the class.
    refused(&seeds("0/1", "1,2,4"), "run.class");
    // The image of seed 6 with label 3 is the one a run of seed 6 alone with label 3 makes.
    let single = dir.join("single");
    ok(sample(&[
        "--seeds",
        "6",
        "--class",
        "3",
        "--out-dir",
        single.to_str().unwrap(),
    ]));
    let png = |d: &Path| std::fs::read(d.join(ddim_wgpu::seed_dir::file_name(6))).unwrap();
    assert_eq!(png(&folder), png(&single));
    let _ = std::fs::remove_dir_all(&dir);
}
