//! A real Slurm job array (issue 15): four array tasks sample 32 seeds of the bundled model into
//! one folder, each taking its shard from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT; the
//! packed npz equals one single-process run byte for byte. Needs a running cluster
//! (`tools/slurm-cluster.sh up`, which `.ci/run` does); with CI=true a missing `sbatch` fails.

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
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
    ] {
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
