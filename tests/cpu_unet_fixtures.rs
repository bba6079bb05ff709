//! The CPU U-Net forward against PyTorch/diffusers on the committed fixtures
//! (tools/export_unet_fixtures.py, and tools/export_unet_model_coverage_fixtures.py for resnet
//! resampling, skip blocks, Fourier/learned time and class embeddings): every layer is compared,
//! and the output must match the PyTorch f32 output with relative L2 ≤ 1e-5.

use ddim_wgpu::cpu::forward::forward_with;
use ddim_wgpu::model::dir::Layout;
use ddim_wgpu::model::tensor_io::read_tensor;
use ddim_wgpu::model::{ClassLabels, Model, UNet};
use ddim_wgpu::tensor::{max_abs_diff, rel_l2};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet")
        .join(name)
}

fn read_all(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.names()
        .into_iter()
        .map(|n| {
            let d = st.tensor(n).unwrap().data().to_vec();
            let v = d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (n.to_string(), v)
        })
        .collect()
}

struct Case {
    timesteps: Vec<f32>,
    layout: String,
    weights_dtype: String,
    legacy_names: bool,
    /// One label per image, or identity vectors from input.safetensors, or none.
    labels: Option<ClassLabels>,
}

fn read_case(dir: &Path) -> Case {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    Case {
        timesteps: v["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap() as f32)
            .collect(),
        layout: v["layout"].as_str().unwrap().into(),
        weights_dtype: v["weights_dtype"].as_str().unwrap().into(),
        legacy_names: v["legacy_names"].as_bool().unwrap(),
        labels: if v["class_vectors"].as_bool() == Some(true) {
            let t = read_tensor(&dir.join("input.safetensors"), "class_labels").unwrap();
            Some(ClassLabels::Vectors {
                width: t.shape[1],
                data: t.data,
            })
        } else {
            v["class_labels"].as_array().map(|a| {
                ClassLabels::Indices(a.iter().map(|l| l.as_u64().unwrap() as u32).collect())
            })
        },
    }
}

/// Runs one fixture; returns the output's relative L2 error against PyTorch f32.
fn check(name: &str) -> f64 {
    let dir = fixture(name);
    let case = read_case(&dir);
    let model = Model::load(&dir).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let expected_layout = if case.layout == "pipeline" {
        Layout::Pipeline
    } else {
        Layout::Flat
    };
    assert_eq!(model.paths.layout, expected_layout, "{name}");
    assert!(model.paths.scheduler_config.is_some(), "{name}");
    assert_eq!(model.weights.source_dtype, case.weights_dtype, "{name}");
    assert_eq!(
        model.weights.legacy_names_mapped > 0,
        case.legacy_names,
        "{name}"
    );

    let x = read_tensor(&dir.join("input.safetensors"), "sample").unwrap();
    let (_, _, h, w) = x.nchw();
    let unet = UNet::new(&model.config, h, w).unwrap();
    let expected = read_all(&dir.join("expected.safetensors"));

    let mut compared = 0;
    let mut worst_layer = (0.0f64, String::new());
    let y = forward_with(
        &unet,
        &model.weights,
        &x,
        &case.timesteps,
        case.labels.as_ref(),
        &mut |layer, out| {
            if let Some(reference) = expected.get(layer) {
                let err = rel_l2(&out.data, reference);
                assert!(
                    err <= TOLERANCE,
                    "{name}: layer {layer} differs from PyTorch: rel L2 {err:.3e}"
                );
                compared += 1;
                if err > worst_layer.0 {
                    worst_layer = (err, layer.to_string());
                }
            }
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let layer_names = expected.keys().filter(|k| !k.starts_with("sample")).count();
    assert_eq!(
        compared, layer_names,
        "{name}: every recorded layer is compared"
    );

    let err = rel_l2(&y.data, &expected["sample"]);
    let err64 = rel_l2(&y.data, &expected["sample_f64"]);
    let (max_abs, _) = max_abs_diff(&y.data, &expected["sample"]);
    println!(
        "{name}: output {:?}, rel L2 vs torch f32 {err:.2e} (max abs {max_abs:.2e}), vs torch f64 {err64:.2e}, \
         {compared} layers checked (worst {} at {:.2e})",
        y.shape, worst_layer.1, worst_layer.0
    );
    assert!(
        err <= TOLERANCE,
        "{name}: output rel L2 {err:.3e} > {TOLERANCE}"
    );
    err
}

#[test]
fn attention_in_down_up_mid_with_several_heads_pipeline_layout() {
    check("attn_heads_pipeline");
}

#[test]
fn cifar_like_asymmetric_downsample_two_layers_flat_layout() {
    check("cifar_like_flat");
}

#[test]
fn one_channel_f16_weights_with_legacy_attention_names() {
    check("gray_f16_legacy");
}

#[test]
fn bf16_scale_shift_centered_non_square() {
    check("bf16_scale_shift_flat");
}

#[test]
fn no_mid_block_batch_one() {
    check("no_mid_pipeline");
}

#[test]
fn channels_not_divisible_by_head_dim() {
    check("uneven_heads_flat");
}

#[test]
fn resnet_resampling_scale_shift_class_table_like_cd_imagenet64() {
    check("cd_imagenet64_like");
}

#[test]
fn ncsnpp_skip_blocks_fourier_sigma_centered_null_groups() {
    check("ncsnpp_skip_fourier");
}

#[test]
fn skip_blocks_image_path_across_three_levels() {
    check("skip_three_levels");
}

#[test]
fn timestep_class_embedding_and_fractional_timesteps() {
    check("class_timestep");
}

#[test]
fn identity_class_embedding_takes_vectors() {
    check("class_identity");
}

#[test]
fn learned_time_embedding_with_class_table() {
    check("learned_time");
}
