//! Model directory resolution: both layouts, the fp16 variant file, and clear errors for missing
//! or unsupported weight files and a missing scheduler config.

use ddim_wgpu::model::dir::{Layout, ModelPaths, WEIGHTS_FILE, WEIGHTS_FP16_FILE};
use ddim_wgpu::model::Model;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet")
        .join(name)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ddim-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn both_layouts_resolve() {
    let p = ModelPaths::resolve(&fixture("gray_f16_legacy")).unwrap();
    assert_eq!(p.layout, Layout::Pipeline);
    assert!(p.config.ends_with("unet/config.json"));
    assert!(p.weights.ends_with(format!("unet/{WEIGHTS_FILE}")));
    assert!(p
        .require_scheduler_config()
        .unwrap()
        .ends_with("scheduler/scheduler_config.json"));

    let p = ModelPaths::resolve(&fixture("cifar_like_flat")).unwrap();
    assert_eq!(p.layout, Layout::Flat);
    assert!(p
        .require_scheduler_config()
        .unwrap()
        .ends_with("scheduler_config.json"));

    // A pipeline's unet/ folder on its own is a flat model without a scheduler config.
    let p = ModelPaths::resolve(&fixture("gray_f16_legacy").join("unet")).unwrap();
    assert_eq!(p.layout, Layout::Flat);
    assert_eq!(p.scheduler_config, None);
    let e = p.require_scheduler_config().unwrap_err().to_string();
    assert!(
        e.contains("no scheduler config") && e.contains("scheduler_config.json"),
        "{e}"
    );
}

#[test]
fn fp16_variant_file_is_used_when_alone() {
    let t = TempDir::new("variant");
    let src = fixture("uneven_heads_flat");
    std::fs::copy(src.join("config.json"), t.0.join("config.json")).unwrap();
    std::fs::copy(src.join(WEIGHTS_FILE), t.0.join(WEIGHTS_FP16_FILE)).unwrap();
    let m = Model::load(&t.0).unwrap();
    assert!(m.paths.weights.ends_with(WEIGHTS_FP16_FILE));
}

#[test]
fn unsupported_weight_files_are_explained() {
    let t = TempDir::new("bin");
    let src = fixture("uneven_heads_flat");
    std::fs::copy(src.join("config.json"), t.0.join("config.json")).unwrap();
    std::fs::write(t.0.join("diffusion_pytorch_model.bin"), b"pickle").unwrap();
    let e = ModelPaths::resolve(&t.0).unwrap_err().to_string();
    assert!(
        e.contains("missing weights file") && e.contains("pickle"),
        "{e}"
    );

    std::fs::write(t.0.join(format!("{WEIGHTS_FILE}.index.json")), b"{}").unwrap();
    let e = ModelPaths::resolve(&t.0).unwrap_err().to_string();
    assert!(e.contains("sharded"), "{e}");
}
