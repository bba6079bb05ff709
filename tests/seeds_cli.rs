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
    assert!(log.contains("making 2"), "{log}");
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
    fails(&sample(&dir, &["--seeds", "0-3", "--steps", "4"]), "steps");
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
