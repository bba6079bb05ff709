//! Data flows one way through `src/`: no module imports a module that imports it back
//! (`tools/module_cycles.py` resolves `use` paths and re-exports; plain CPython, no packages).

#[test]
fn no_two_modules_import_each_other() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/tools/module_cycles.py"))
        .arg(format!("{root}/src"))
        .output()
        .expect("python3 runs tools/module_cycles.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "modules that import each other:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 mutual import(s)"), "{stdout}");
}
