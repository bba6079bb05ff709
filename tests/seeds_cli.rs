//! `ddim sample --seeds … --out-dir` and `ddim pack` through the binary (issue 15): shards and
//! chunking change no byte, a rerun makes only what is missing or broken, other settings are
//! refused, job-runner environments choose the shard, and bad input writes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pipeline/tiny");

fn ddim(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ddim"));
    cmd.env(
        "DDIM_TUNE_CACHE",
        concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
    );
    cmd.args(args).env("RUST_LOG", "error");
    // A test's own job-runner variables only, never the ones of a CI that runs under Slurm.
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
        "SLURM_ARRAY_TASK_STEP",
        "SLURM_ARRAY_JOB_ID",
        "JOB_COMPLETION_INDEX",
        "DDIM_SHARDS",
    ] {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("the ddim binary runs")
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = ddim(args, env);
    assert!(
        out.status.success(),
        "ddim {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

fn fails(args: &[&str], needle: &str) {
    let out = ddim(args, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ddim {} succeeded", args.join(" "));
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "ddim {}: error does not mention {needle:?}: {err}",
        args.join(" ")
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddim-seeds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The sample arguments every run here shares (tiny model, CPU, 3 steps, eta 0.5 so every step
/// draws noise from each image's generator).
fn sample<'a>(dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "sample",
        "--model",
        TINY,
        "--device",
        "cpu",
        "--steps",
        "3",
        "--eta",
        "0.5",
        "--quiet",
        "--out-dir",
        dir.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    a
}

fn pngs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    names
}

#[test]
fn shards_and_chunks_change_no_byte_and_reruns_fill_in() {
    let whole = temp_dir("whole");
    ok(&sample(&whole, &["--seeds", "0-9,20", "--batch", "4"]), &[]);
    assert_eq!(pngs(&whole).len(), 11);
    assert!(pngs(&whole).contains(&"000020.png".to_string()));

    // Three shards by --shard, one image per batch, into one folder.
    let sharded = temp_dir("sharded");
    for i in 0..3 {
        let shard = format!("{i}/3");
        ok(
            &sample(
                &sharded,
                &["--seeds", "0-9,20", "--batch", "1", "--shard", &shard],
            ),
            &[],
        );
    }
    for name in pngs(&whole) {
        assert_eq!(
            std::fs::read(whole.join(&name)).unwrap(),
            std::fs::read(sharded.join(&name)).unwrap(),
            "{name} differs between one run and three shards"
        );
    }
    let (a, b) = (whole.join("a.npz"), sharded.join("b.npz"));
    ok(
        &[
            "pack",
            whole.to_str().unwrap(),
            "--npz",
            a.to_str().unwrap(),
        ],
        &[],
    );
    ok(
        &[
            "pack",
            sharded.to_str().unwrap(),
            "--npz",
            b.to_str().unwrap(),
        ],
        &[],
    );
    let npz = std::fs::read(&a).unwrap();
    assert_eq!(npz, std::fs::read(&b).unwrap());
    assert!(npz.windows(9).any(|w| w == b"arr_0.npy"));
    let header = String::from_utf8_lossy(&npz[..200]);
    assert!(header.contains("'shape': (11, 16, 16, 3)"), "{header}");

    // A missing and a broken image are made again, and only those.
    std::fs::remove_file(whole.join("000003.png")).unwrap();
    std::fs::write(whole.join("000007.png"), b"not a png").unwrap();
    let before = std::fs::read(whole.join("000005.png")).unwrap();
    let log = ok(
        &sample(&whole, &["--seeds", "0-9,20", "--batch", "4"])
            .into_iter()
            .filter(|a| *a != "--quiet")
            .collect::<Vec<_>>(),
        &[],
    );
    assert!(log.contains("9 already in"), "{log}");
    assert!(log.contains("made 2 image(s)"), "{log}");
    assert_eq!(std::fs::read(whole.join("000005.png")).unwrap(), before);
    for name in ["000003.png", "000007.png"] {
        assert_eq!(
            std::fs::read(whole.join(name)).unwrap(),
            std::fs::read(sharded.join(name)).unwrap()
        );
    }

    // Packing an incomplete folder names what is missing and writes nothing.
    std::fs::remove_file(sharded.join("000004.png")).unwrap();
    let c = sharded.join("c.npz");
    fails(
        &[
            "pack",
            sharded.to_str().unwrap(),
            "--npz",
            c.to_str().unwrap(),
        ],
        "000004.png",
    );
    assert!(!c.exists());
}

#[test]
fn other_settings_are_refused_in_a_claimed_folder() {
    let dir = temp_dir("claimed");
    ok(&sample(&dir, &["--seeds", "0-3"]), &[]);
    let before = pngs(&dir);
    fails(
        &bare(
            TINY,
            &dir,
            &["--seeds", "0-3", "--steps", "4", "--eta", "0.5"],
        ),
        "sampler.steps",
    );
    fails(&sample(&dir, &["--seeds", "0-4"]), "seeds");
    fails(&sample(&dir, &["--seeds", "0-3", "--rng", "philox"]), "rng");
    fails(
        &sample(&dir, &["--seeds", "0-3", "--shard", "0/2"]),
        "shards",
    );
    fails(
        &sample(&dir, &["--seeds", "0-3", "--spacing", "trailing"]),
        "schedule",
    );
    assert_eq!(pngs(&dir), before);
}

#[test]
fn job_runners_choose_the_shard() {
    // Kubernetes Indexed Job: index 1 of 2 makes seeds 2 and 3 of 0-3.
    let k8s = temp_dir("k8s");
    ok(
        &sample(&k8s, &["--seeds", "0-3", "--shards", "2"]),
        &[("JOB_COMPLETION_INDEX", "1")],
    );
    assert_eq!(pngs(&k8s), vec!["000002.png", "000003.png"]);
    // Slurm array --array=1-4: task 1 is the first part.
    let slurm = temp_dir("slurm");
    ok(
        &sample(&slurm, &["--seeds", "0-7"]),
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
        ],
    );
    assert_eq!(pngs(&slurm), vec!["000000.png", "000001.png"]);
    let out = ddim(
        &sample(&slurm, &["--seeds", "0-7"]),
        &[("JOB_COMPLETION_INDEX", "0")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards N"));
}

/// Slurm's variables for task `id` of an array of `ids` with reported `step` (as a real
/// Slurm 22.05 sets them: `--array=0-6:2` gives STEP 2, a list `1,3,5` STEP 1 and COUNT 3).
fn slurm_env(id: u64, ids: &[u64], step: u64) -> Vec<(&'static str, String)> {
    vec![
        ("SLURM_ARRAY_TASK_ID", id.to_string()),
        ("SLURM_ARRAY_TASK_MIN", ids[0].to_string()),
        ("SLURM_ARRAY_TASK_MAX", ids[ids.len() - 1].to_string()),
        ("SLURM_ARRAY_TASK_STEP", step.to_string()),
        ("SLURM_ARRAY_TASK_COUNT", ids.len().to_string()),
    ]
}

#[test]
fn slurm_stepped_arrays_make_every_seed_and_lists_are_refused() {
    // --array=0-6:2 and 3-13:5: every task makes its part; together the whole set.
    for (ids, step) in [(vec![0u64, 2, 4, 6], 2u64), (vec![3, 8, 13], 5)] {
        let dir = temp_dir(&format!("slurm-step{step}"));
        for &id in &ids {
            let env = slurm_env(id, &ids, step);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ok(&sample(&dir, &["--seeds", "0-7"]), &env);
        }
        let want: Vec<String> = (0..8).map(|s| format!("{s:06}.png")).collect();
        assert_eq!(pngs(&dir), want, "--array with step {step}");
    }
    // --array=1,3,5 with no way to ask Slurm for its members: refused, nothing written.
    let dir = temp_dir("slurm-list");
    let env = slurm_env(3, &[1, 3, 5], 1);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = ddim(&sample(&dir, &["--seeds", "0-7"]), &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a list array was guessed");
    assert!(
        err.contains("--shard I/N") && err.contains("range"),
        "{err}"
    );
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
}

/// The tiny model copied into a folder of its own (to change its config or weights).
fn model_copy(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    for sub in ["unet", "scheduler"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(Path::new(TINY).join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(sub).join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(
        Path::new(TINY).join("model_index.json"),
        dir.join("model_index.json"),
    )
    .unwrap();
    dir
}

/// `sample` on another model directory.
fn sample_model<'a>(model: &'a str, dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = sample(dir, extra);
    a[2] = model;
    a
}

/// `sample` of `model` into `dir` with only `extra` besides the device and --quiet.
fn bare<'a>(model: &'a str, dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "sample",
        "--model",
        model,
        "--device",
        "cpu",
        "--quiet",
        "--out-dir",
        dir.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn every_setting_that_changes_the_pixels_is_refused_on_resume() {
    let dir = temp_dir("identity");
    ok(
        &bare(
            TINY,
            &dir,
            &["--seeds", "0-3", "--steps", "2", "--eta", "0.5"],
        ),
        &[],
    );
    let before: Vec<Vec<u8>> = pngs(&dir)
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    // Each differs from the folder's run in one setting, and the refusal names it.
    for (extra, key) in [
        (
            &["--prediction-type", "sample"][..],
            "scheduler.prediction_type",
        ),
        (
            &["--prediction-type", "v_prediction"],
            "scheduler.prediction_type",
        ),
        (&["--clip-sample", "false"], "scheduler.clip_sample"),
        (
            &["--beta-schedule", "scaled_linear"],
            "scheduler.beta_schedule",
        ),
        (
            &["--set-alpha-to-one", "false"],
            "scheduler.set_alpha_to_one",
        ),
        (&["--steps-offset", "1"], "scheduler.steps_offset"),
        (&["--spacing", "trailing"], "scheduler.timestep_spacing"),
        (&["--eta", "0.25"], "sampler.eta"),
        (
            &["--use-clipped-model-output"],
            "sampler.use_clipped_model_output",
        ),
        (&["--sampler", "ddpm"], "sampler: the folder has \"ddim\""),
        (&["--sampler", "dpm-solver++", "--eta", "0"], "sampler"),
        (&["--rng", "philox"], "rng"),
    ] {
        let mut args = vec!["--seeds", "0-3", "--steps", "2"];
        if !extra.contains(&"--eta") {
            args.extend(["--eta", "0.5"]);
        }
        args.extend_from_slice(extra);
        let full = bare(TINY, &dir, &args);
        let out = ddim(&full, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} resumed the folder");
        assert!(
            err.contains(key),
            "{extra:?}: the refusal does not name {key}: {err}"
        );
    }
    // A scheduler config file with another clip range or thresholding.
    for (json, key) in [
        (
            r#"{"clip_sample_range": 0.5}"#,
            "scheduler.clip_sample_range",
        ),
        (r#"{"thresholding": true}"#, "scheduler.thresholding"),
        (r#"{"beta_end": 0.03}"#, "scheduler.beta_end"),
    ] {
        let cfg = dir.with_extension("scheduler.json");
        let base: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(TINY).join("scheduler/scheduler_config.json"))
                .unwrap(),
        )
        .unwrap();
        let mut merged = base.as_object().unwrap().clone();
        let extra: serde_json::Value = serde_json::from_str(json).unwrap();
        merged.extend(extra.as_object().unwrap().clone());
        std::fs::write(&cfg, serde_json::to_string(&merged).unwrap()).unwrap();
        let out = ddim(
            &bare(
                TINY,
                &dir,
                &[
                    "--seeds",
                    "0-3",
                    "--steps",
                    "2",
                    "--eta",
                    "0.5",
                    "--scheduler-config",
                    cfg.to_str().unwrap(),
                ],
            ),
            &[],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{json} resumed the folder");
        assert!(err.contains(key), "{json}: {err}");
    }
    // The model's config (same weights) and the model's weights (same config).
    let changed_config = model_copy("identity-config");
    let path = changed_config.join("unet/config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"freq_shift\": 0", "\"freq_shift\": 1"),
    )
    .unwrap();
    let changed_weights = model_copy("identity-weights");
    let path = changed_weights.join("unet/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&0.5f32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    for (model, key) in [
        (&changed_config, "model.config.freq_shift"),
        (&changed_weights, "model.weights_sha256"),
    ] {
        let out = ddim(
            &bare(
                model.to_str().unwrap(),
                &dir,
                &["--seeds", "0-3", "--steps", "2", "--eta", "0.5"],
            ),
            &[],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{} resumed the folder",
            model.display()
        );
        assert!(err.contains(key), "{err}");
    }
    let after: Vec<Vec<u8>> = pngs(&dir)
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    assert_eq!(before, after, "a refused run changed the folder");
}

#[test]
fn the_same_model_by_another_path_is_the_same_model() {
    let dir = temp_dir("paths");
    ok(&sample(&dir, &["--seeds", "0-3"]), &[]);
    std::fs::remove_file(dir.join("000002.png")).unwrap();
    let link = dir.with_extension("link");
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    std::os::unix::fs::symlink(TINY, &link).unwrap();
    let slash = format!("{TINY}/");
    let dotted = format!("{TINY}/../tiny");
    let mut paths = vec![slash, dotted];
    if link.exists() {
        paths.push(link.to_str().unwrap().to_string());
    }
    for (i, model) in paths.iter().enumerate() {
        let log = ok(
            &sample_model(model, &dir, &["--seeds", "0-3"])
                .into_iter()
                .filter(|a| *a != "--quiet")
                .collect::<Vec<_>>(),
            &[],
        );
        let want = if i == 0 {
            "made 1 image(s)"
        } else {
            "nothing to make"
        };
        assert!(log.contains(want), "{model}: {log}");
    }
    // A relative path, from the model's parent folder.
    let out = Command::new(env!("CARGO_BIN_EXE_ddim"))
        .current_dir(Path::new(TINY).parent().unwrap())
        .args(sample_model("tiny", &dir, &["--seeds", "0-3"]))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pngs(&dir).len(), 4);
}

#[test]
fn a_folder_with_images_but_no_manifest_is_not_adopted() {
    let dir = temp_dir("adopt");
    ok(&sample(&dir, &["--seeds", "0-1"]), &[]);
    std::fs::remove_file(dir.join("ddim-manifest.json")).unwrap();
    fails(&sample(&dir, &["--seeds", "0-3"]), "no ddim-manifest.json");
    assert!(!dir.join("ddim-manifest.json").exists());
}

#[test]
fn writers_at_once_cooperate_with_the_same_settings_and_exclude_others() {
    for trial in 0..4 {
        // Two different --steps at the same moment into one empty folder: one of them loses.
        let dir = temp_dir(&format!("race-{trial}"));
        let spawn = |steps: &str| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ddim"));
            cmd.args(bare(TINY, &dir, &["--seeds", "0-5", "--steps", steps]))
                .env("RUST_LOG", "error")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        };
        let (a, b) = (spawn("2"), spawn("3"));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        assert!(
            a.status.success() != b.status.success(),
            "trial {trial}: --steps 2 {} and --steps 3 {} into one folder",
            a.status,
            b.status
        );
        let loser = if a.status.success() { &b } else { &a };
        let why = String::from_utf8_lossy(&loser.stderr);
        assert!(why.contains("sampler.steps"), "trial {trial}: {why}");
        let manifest = std::fs::read_to_string(dir.join("ddim-manifest.json")).unwrap();
        let steps = if a.status.success() { "\"2\"" } else { "\"3\"" };
        assert!(
            manifest.contains(&format!("\"sampler.steps\": {steps}")),
            "{manifest}"
        );
        // The same settings, two shards at once: both succeed, the set is complete.
        let dir = temp_dir(&format!("coop-{trial}"));
        let spawn = |shard: &str| {
            Command::new(env!("CARGO_BIN_EXE_ddim"))
                .args(sample(&dir, &["--seeds", "0-5", "--shard", shard]))
                .env("RUST_LOG", "error")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn("0/2"), spawn("1/2"));
        for out in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(pngs(&dir).len(), 6);
    }
}

#[test]
fn pack_refuses_files_that_are_not_of_the_run() {
    let dir = temp_dir("foreign");
    ok(&sample(&dir, &["--seeds", "0-3"]), &[]);
    let npz = dir.with_extension("npz");
    let pack = || {
        ddim(
            &[
                "pack",
                dir.to_str().unwrap(),
                "--npz",
                npz.to_str().unwrap(),
            ],
            &[],
        )
    };
    let other = temp_dir("foreign-other");
    ok(&sample(&other, &["--seeds", "0-9"]), &[]);
    // A seed outside the run (a real image of the same shape), a foreign PNG, a non-image,
    // a folder under a seed's name, an image of the wrong size under a seed's name.
    type Plant<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Plant)> = vec![
        (
            "000009.png",
            Box::new(|| {
                std::fs::copy(other.join("000009.png"), dir.join("000009.png")).unwrap();
            }),
        ),
        (
            "0000001.png",
            Box::new(|| {
                std::fs::copy(other.join("000001.png"), dir.join("0000001.png")).unwrap();
            }),
        ),
        (
            "cat.png",
            Box::new(|| {
                std::fs::copy(other.join("000005.png"), dir.join("cat.png")).unwrap();
            }),
        ),
        (
            "notes.txt",
            Box::new(|| std::fs::write(dir.join("notes.txt"), b"hi").unwrap()),
        ),
        (
            "000010.png",
            Box::new(|| std::fs::create_dir(dir.join("000010.png")).unwrap()),
        ),
    ];
    for (name, plant) in cases {
        plant();
        let out = pack();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "packed a folder with {name}");
        assert!(err.contains(name), "{name}: {err}");
        assert!(!npz.exists());
        let p = dir.join(name);
        if p.is_dir() {
            std::fs::remove_dir(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    // The wrong size under a seed's name: refused naming the file, no npz.
    let big = vec![0u8; 8 * 8 * 3];
    let mut png = Vec::new();
    image::write_buffer_with_format(
        &mut std::io::Cursor::new(&mut png),
        &big,
        8,
        8,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .unwrap();
    let kept = std::fs::read(dir.join("000002.png")).unwrap();
    std::fs::write(dir.join("000002.png"), &png).unwrap();
    let out = pack();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("000002.png"));
    assert!(!npz.exists());
    std::fs::write(dir.join("000002.png"), kept).unwrap();
    let out = pack();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `dir` holds a PNG (or `secs` pass).
fn wait_for_png(dir: &Path, secs: u64) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if !pngs(dir).is_empty() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

fn hidden(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
#[cfg(unix)]
fn leftovers_of_killed_writers_are_removed_and_never_packed() {
    let dir = temp_dir("killed");
    // A writer killed with SIGKILL in the middle of its run (no handler runs).
    let mut child = Command::new(env!("CARGO_BIN_EXE_ddim"))
        .args(sample(&dir, &["--seeds", "0-199", "--batch", "1"]))
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    assert!(wait_for_png(&dir, 120), "no image within 120 s");
    // While it writes, pack refuses.
    let npz = dir.with_extension("npz");
    let out = ddim(
        &[
            "pack",
            dir.to_str().unwrap(),
            "--npz",
            npz.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("still writing"));
    child.kill().unwrap();
    child.wait().unwrap();
    // What a writer killed mid-write leaves (write_atomic's temporary names), planted so that
    // the test does not depend on the moment of the kill.
    for name in [
        ".000150.png.tmp-4000000-0",
        ".ddim-manifest.json.tmp-4000000-1",
    ] {
        std::fs::write(dir.join(name), b"partial").unwrap();
    }
    let made = pngs(&dir).len();
    assert!(made < 200);
    // pack on the incomplete folder: refuses (seeds missing) but has removed the leftovers.
    let out = ddim(
        &[
            "pack",
            dir.to_str().unwrap(),
            "--npz",
            npz.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(hidden(&dir).is_empty(), "{:?}", hidden(&dir));
    // Again, then the next run removes them and finishes the set; pack then succeeds.
    std::fs::write(dir.join(".000151.png.tmp-4000000-2"), b"partial").unwrap();
    ok(&sample(&dir, &["--seeds", "0-199", "--batch", "1"]), &[]);
    assert!(hidden(&dir).is_empty(), "{:?}", hidden(&dir));
    assert_eq!(pngs(&dir).len(), 200);
    let out = ddim(
        &[
            "pack",
            dir.to_str().unwrap(),
            "--npz",
            npz.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(npz);
}

#[test]
fn a_huge_seed_set_starts_at_once_in_bounded_memory() {
    let dir = temp_dir("huge");
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ddim"))
        .args(sample(&dir, &["--seeds", "0-99999999999"]))
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let first = wait_for_png(&dir, 60);
    let secs = started.elapsed().as_secs_f64();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first, "no image of --seeds 0-99999999999 within 60 s");
    println!("first image of a 1e11-seed set after {secs:.2} s");
    // Too many for anything sensible, and too many to hold without a folder: refused at once.
    fails(
        &sample(&dir, &["--seeds", "0-18446744073709551615"]),
        "at most",
    );
    let out = ddim(
        &[
            "sample",
            "--model",
            TINY,
            "--device",
            "cpu",
            "--seeds",
            "0-99999999",
            "--quiet",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--out-dir") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bad_seed_arguments_write_nothing() {
    let dir = temp_dir("bad");
    for (seeds, needle) in [
        ("5-3", "descends"),
        ("1,1", "overlaps"),
        ("", "empty"),
        ("x", "whole number"),
    ] {
        fails(&sample(&dir, &["--seeds", seeds]), needle);
    }
    fails(
        &sample(&dir, &["--seeds", "0-3", "--shard", "4/4"]),
        "does not exist",
    );
    fails(
        &sample(&dir, &["--seeds", "0-3", "-n", "4"]),
        "cannot be used",
    );
    // A missing --out-dir is made (issue 26 §5); a file in its place is refused.
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    fails(&sample(&file, &["--seeds", "0-3"]), "is a regular file");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "a failed run wrote files"
    );
}

/// A folder nobody may create files in. As root (CI here) permission bits do not stop a write,
/// so the always-unwritable `/proc/self` stands in; as another user a read-only temp folder
/// is tried as well.
#[test]
#[cfg(target_os = "linux")]
fn an_unwritable_out_dir_is_refused() {
    fails(
        &sample(Path::new("/proc/self"), &["--seeds", "0-3"]),
        "is not writable",
    );
    let dir = temp_dir("read-only");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = dir.join("probe");
    if std::fs::write(&probe, b"").is_err() {
        fails(&sample(&dir, &["--seeds", "0-3"]), "is not writable");
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
