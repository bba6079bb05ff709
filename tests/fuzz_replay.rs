//! Replays every committed fuzz input (`fuzz/corpus/<target>/` and the crash inputs in
//! `fuzz/artifacts/<target>/`) through the fuzz targets' bodies (`ddim_wgpu::fuzz`) on stable
//! Rust, so what the fuzzer once found stays fixed. Run the fuzzer itself with
//! `cd fuzz && cargo +nightly fuzz run <target>`.

use std::path::Path;

#[test]
fn committed_fuzz_inputs_run_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut total = 0;
    for (name, body) in ddim_wgpu::fuzz::TARGETS {
        let mut replayed = 0;
        for dir in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
            paths.sort();
            for path in paths.iter().filter(|p| p.is_file()) {
                let data = std::fs::read(path).unwrap();
                let result = std::panic::catch_unwind(|| body(&data));
                assert!(result.is_ok(), "{name}: {} panics", path.display());
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no committed inputs for fuzz target {name}");
        println!("{name}: {replayed} inputs");
        total += replayed;
    }
    println!("{total} inputs replayed");
}
