//! A real Slurm job array (issue 15): four array tasks sample 32 seeds of the bundled model into
//! one folder, each taking its shard from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT; the
//! packed npz equals one single-process run byte for byte. Arrays with a step (`0-6:2`) and
//! lists (`1,3,5`, found through `scontrol`) do the same (issue 30); a list whose members Slurm
//! cannot tell is refused by every task. Needs a running cluster (`tools/slurm-cluster.sh up`,
//! which `.ci/run` does); with CI=true a missing `sbatch` fails.

use std::path::Path;
use std::process::Command;

fn ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

fn have_sbatch() -> bool {
    Command::new("sbatch")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_slurm_job_array_makes_the_same_images_as_one_process() {
    if !have_sbatch() {
        assert!(
            !ci(),
            "CI=true but sbatch is missing: .ci/run starts a one-node cluster (tools/slurm-cluster.sh up)"
        );
        eprintln!("[slurm] SKIPPING: no sbatch (start a cluster with tools/slurm-cluster.sh up)");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_ddim");
    let work = std::env::temp_dir().join(format!("ddim-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (array_dir, single_dir) = (work.join("array"), work.join("single"));
    std::fs::create_dir_all(&array_dir).unwrap();
    std::fs::create_dir_all(&single_dir).unwrap();
    let common = "--seeds 0-31 --steps 3 --eta 0.5 --device cpu --batch 5 --quiet";

    let script = work.join("job.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n#SBATCH --job-name=ddim-test\n#SBATCH --array=0-3\n#SBATCH --time=10\n\
             #SBATCH --output={out}/slurm-%A_%a.out\n\
             exec {bin} sample {common} --out-dir {dir}\n",
            out = work.display(),
            dir = array_dir.display()
        ),
    )
    .unwrap();
    run(Command::new("sbatch").arg("--wait").arg(&script));
    let logs: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name()?.to_string_lossy().into_owned();
            name.starts_with("slurm-")
                .then(|| std::fs::read_to_string(&p).unwrap_or_default())
        })
        .collect();
    assert_eq!(logs.len(), 4, "expected one log per array task: {logs:?}");

    let mut single = Command::new(bin);
    single
        .arg("sample")
        .args(common.split(' '))
        .arg("--out-dir")
        .arg(&single_dir);
    for v in SLURM_VARS {
        single.env_remove(v);
    }
    run(&mut single);

    let pack = |dir: &Path| {
        let npz = dir.join("all.npz");
        run(Command::new(bin)
            .arg("pack")
            .arg(dir)
            .arg("--npz")
            .arg(&npz));
        std::fs::read(npz).unwrap()
    };
    let (a, b) = (pack(&array_dir), pack(&single_dir));
    assert!(a.len() > 32 * 32 * 32, "npz of {} bytes", a.len());
    assert!(a == b, "the job array's npz differs from one process's");
    let _ = std::fs::remove_dir_all(&work);
}

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pipeline/tiny");
const SLURM_VARS: [&str; 6] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_JOB_ID",
];

/// Runs `sbatch --array=SPEC` of `ddim sample` (tiny model, 12 seeds) into `work/name`, with
/// `prelude` before it in the job script; returns whether sbatch reported success and the tasks'
/// logs.
fn array_job(work: &Path, name: &str, spec: &str, prelude: &str) -> (bool, Vec<String>) {
    let bin = env!("CARGO_BIN_EXE_ddim");
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let logs = work.join(format!("logs-{name}"));
    std::fs::create_dir_all(&logs).unwrap();
    let script = work.join(format!("{name}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n#SBATCH --job-name=ddim-{name}\n#SBATCH --array={spec}\n\
             #SBATCH --time=10\n#SBATCH --output={logs}/%A_%a.out\n{prelude}\n\
             exec {bin} sample --model {TINY} --seeds 0-11 --steps 2 --device cpu --quiet \
             --out-dir {dir}\n",
            logs = logs.display(),
            dir = dir.display()
        ),
    )
    .unwrap();
    let ok = Command::new("sbatch")
        .arg("--wait")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("sbatch: {e}"))
        .status
        .success();
    let logs = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    (ok, logs)
}

fn pack(dir: &Path) -> Vec<u8> {
    let npz = dir.with_extension("npz");
    run(Command::new(env!("CARGO_BIN_EXE_ddim"))
        .arg("pack")
        .arg(dir)
        .arg("--npz")
        .arg(&npz));
    std::fs::read(npz).unwrap()
}

#[test]
fn stepped_and_listed_slurm_arrays_make_every_seed_or_refuse() {
    if !have_sbatch() {
        assert!(
            !ci(),
            "CI=true but sbatch is missing: .ci/run starts a one-node cluster (tools/slurm-cluster.sh up)"
        );
        eprintln!("[slurm] SKIPPING: no sbatch (start a cluster with tools/slurm-cluster.sh up)");
        return;
    }
    let work = std::env::temp_dir().join(format!("ddim-slurm-arrays-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let single = work.join("single");
    std::fs::create_dir_all(&single).unwrap();
    let mut one = Command::new(env!("CARGO_BIN_EXE_ddim"));
    one.args([
        "sample",
        "--model",
        TINY,
        "--seeds",
        "0-11",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--quiet",
        "--out-dir",
    ])
    .arg(&single);
    for v in SLURM_VARS {
        one.env_remove(v);
    }
    run(&mut one);
    let want = pack(&single);

    // A step, a step that does not start at 0, a list, and a list mixing a step.
    for (name, spec, tasks) in [
        ("step", "0-6:2", 4),
        ("step3", "3-11:4", 3),
        ("list", "1,3,5", 3),
        ("mixed", "0-4:2,7", 4),
    ] {
        let (ok, logs) = array_job(&work, name, spec, "");
        assert!(ok, "--array={spec}: {logs:?}");
        assert_eq!(logs.len(), tasks, "--array={spec}: {logs:?}");
        assert!(
            pack(&work.join(name)) == want,
            "--array={spec}: the npz differs from one process's"
        );
    }
    // A list while Slurm cannot be asked (no scontrol on PATH): every task refuses.
    let (ok, logs) = array_job(&work, "blind", "1,3,5", "export PATH=/nonexistent");
    assert!(!ok, "--array=1,3,5 without scontrol succeeded: {logs:?}");
    assert_eq!(logs.len(), 3, "{logs:?}");
    for log in &logs {
        assert!(
            log.contains("--shard I/N") && log.contains("range"),
            "{log}"
        );
    }
    let made = std::fs::read_dir(work.join("blind"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert_eq!(made, 0, "a refused list array made images");
    let _ = std::fs::remove_dir_all(&work);
}
