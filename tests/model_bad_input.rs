//! Bad model files and inputs give clear errors, never panics. Each corrupt file is built here, in
//! a temporary directory, from a good fixture (tests/fixtures/unet/uneven_heads_flat, f32, flat).

use ddim_wgpu::cpu::forward::forward;
use ddim_wgpu::cpu::forward::forward_labeled;
use ddim_wgpu::model::{ClassLabels, Model, UNet, UNet2DConfig, Weights};
use ddim_wgpu::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

const GOOD: &str = "uneven_heads_flat";
const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// A private copy of the good fixture, removed when dropped.
struct TempModel(PathBuf);

impl TempModel {
    fn new(test: &str) -> Self {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/unet")
            .join(GOOD);
        let dst = std::env::temp_dir().join(format!("ddim-bad-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
        Self(dst)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// Rewrites the weights file from (name, dtype, shape, bytes) entries.
    fn write_weights(&self, entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) {
        let views: Vec<(String, safetensors::tensor::TensorView)> = entries
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        std::fs::write(self.path(WEIGHTS), bytes).unwrap();
    }

    fn weights_entries(&self) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let bytes = std::fs::read(self.path(WEIGHTS)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.path("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    /// Loading must fail with an error mentioning every one of `needles`.
    fn expect_error(&self, needles: &[&str]) {
        let err = match Model::load(&self.0) {
            Ok(_) => panic!("loading succeeded; expected an error mentioning {needles:?}"),
            Err(e) => format!("{e:#}"),
        };
        println!("{err}");
        for n in needles {
            assert!(err.contains(n), "error {err:?} does not mention {n:?}");
        }
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_good_copy_loads() {
    let m = TempModel::new("good");
    Model::load(&m.0).unwrap();
}

#[test]
fn truncated_weights_file() {
    let m = TempModel::new("truncated");
    let bytes = std::fs::read(m.path(WEIGHTS)).unwrap();
    std::fs::write(m.path(WEIGHTS), &bytes[..bytes.len() - 100]).unwrap();
    m.expect_error(&[WEIGHTS, "truncated"]);
    std::fs::write(m.path(WEIGHTS), &bytes[..5]).unwrap();
    m.expect_error(&[WEIGHTS, "truncated"]);
}

#[test]
fn broken_header() {
    let m = TempModel::new("header");
    let mut bytes = std::fs::read(m.path(WEIGHTS)).unwrap();
    bytes[8] = b'#'; // the header's opening brace
    std::fs::write(m.path(WEIGHTS), &bytes).unwrap();
    m.expect_error(&[WEIGHTS, "header is broken"]);
    // A header length larger than the file.
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(m.path(WEIGHTS), &bytes).unwrap();
    m.expect_error(&[WEIGHTS, "header claims"]);
}

#[test]
fn integer_dtype_is_named() {
    let m = TempModel::new("int");
    let mut e = m.weights_entries();
    let i = e.iter().position(|x| x.0 == "conv_in.weight").unwrap();
    e[i].1 = Dtype::I32;
    m.write_weights(e);
    m.expect_error(&["conv_in.weight", "I32", "floating-point"]);
}

#[test]
fn missing_tensor_is_named() {
    let m = TempModel::new("missing");
    let mut e = m.weights_entries();
    e.retain(|x| x.0 != "mid_block.resnets.1.conv2.bias");
    m.write_weights(e);
    m.expect_error(&["missing", "mid_block.resnets.1.conv2.bias"]);
}

#[test]
fn extra_tensor_is_named() {
    let m = TempModel::new("extra");
    let mut e = m.weights_entries();
    e.push((
        "class_embedding.weight".into(),
        Dtype::F32,
        vec![2],
        vec![0; 8],
    ));
    m.write_weights(e);
    m.expect_error(&["unexpected", "class_embedding.weight"]);
}

#[test]
fn shape_mismatch_names_key_expected_and_found() {
    let m = TempModel::new("shape");
    let mut e = m.weights_entries();
    let i = e.iter().position(|x| x.0 == "conv_in.weight").unwrap();
    assert_eq!(e[i].2, vec![12, 3, 3, 3]);
    e[i].2 = vec![12, 9, 3, 1];
    m.write_weights(e);
    m.expect_error(&["conv_in.weight", "[12, 9, 3, 1]", "[12, 3, 3, 3]"]);
}

#[test]
fn legacy_and_current_name_together() {
    let m = TempModel::new("duplicate");
    let mut e = m.weights_entries();
    let copy = e
        .iter()
        .find(|x| x.0 == "mid_block.attentions.0.to_q.weight")
        .unwrap()
        .clone();
    e.push((
        "mid_block.attentions.0.query.weight".into(),
        copy.1,
        copy.2,
        copy.3,
    ));
    m.write_weights(e);
    m.expect_error(&["mid_block.attentions.0.to_q.weight", "twice"]);
}

#[test]
fn invalid_json_config() {
    let m = TempModel::new("json");
    std::fs::write(m.path("config.json"), "{ \"in_channels\": 3,").unwrap();
    m.expect_error(&["config.json", "not valid JSON"]);
    std::fs::write(m.path("config.json"), "{ \"in_channels\": \"three\" }").unwrap();
    m.expect_error(&["config.json", "in_channels"]);
}

#[test]
fn unsupported_block_and_options() {
    let m = TempModel::new("unsupported");
    m.edit_config(|c| c["down_block_types"][1] = "CrossAttnDownBlock2D".into());
    m.expect_error(&[
        "unsupported down block type",
        "CrossAttnDownBlock2D",
        "allowed",
    ]);

    let m = TempModel::new("unsupported2");
    m.edit_config(|c| c["time_embedding_type"] = "sinusoidal".into());
    m.expect_error(&[
        "unsupported time_embedding_type",
        "positional, fourier, learned",
    ]);

    let m = TempModel::new("unsupported3");
    m.edit_config(|c| c["class_embed_type"] = "projection".into());
    m.expect_error(&[
        "unsupported class_embed_type \"projection\"",
        "null, timestep, identity",
    ]);

    let m = TempModel::new("unsupported5");
    m.edit_config(|c| c["downsample_type"] = "fir".into());
    m.expect_error(&["unsupported downsample_type \"fir\"", "conv, resnet"]);

    let m = TempModel::new("unsupported6");
    m.edit_config(|c| c["time_embedding_type"] = "learned".into());
    m.expect_error(&["\"learned\"", "needs num_train_timesteps"]);

    // Only skip blocks choose their own group counts.
    let m = TempModel::new("unsupported7");
    m.edit_config(|c| c["norm_num_groups"] = serde_json::Value::Null);
    m.expect_error(&[
        "unsupported norm_num_groups null",
        "AttnDownBlock2D",
        "every block is a skip block",
    ]);

    // Skip blocks hard-wire the image path to 3 channels.
    let m = TempModel::new("unsupported8");
    m.edit_config(|c| {
        c["in_channels"] = 1.into();
        c["down_block_types"][0] = "SkipDownBlock2D".into();
    });
    m.expect_error(&["skip blocks", "in_channels = 1", "must be 3"]);

    // An accepted config whose file lacks the tensors it needs names them.
    let m = TempModel::new("unsupported9");
    m.edit_config(|c| c["num_class_embeds"] = 10.into());
    m.expect_error(&["class_embedding.weight"]);

    let m = TempModel::new("unsupported4");
    m.edit_config(|c| c["norm_num_groups"] = 5.into());
    m.expect_error(&["channels cannot be split into 5 groups"]);
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let m = TempModel::new("absurd");
    m.edit_config(|c| c["block_out_channels"] = serde_json::json!([2_000_000_000u64, 24]));
    m.expect_error(&["absurdly large", "2000000000"]);

    // Every channel count in range, but far too many parameters in all.
    let m = TempModel::new("absurd2");
    m.edit_config(|c| {
        c["block_out_channels"] = serde_json::json!([65536, 65536]);
        c["norm_num_groups"] = 32.into();
        c["attn_norm_num_groups"] = 32.into();
    });
    m.expect_error(&["parameters", "GiB"]);

    // Found by fuzzing: an image side this large overflowed the FLOP count (a silent wrong
    // number in release builds).
    let m = TempModel::new("absurd3");
    m.edit_config(|c| c["sample_size"] = serde_json::json!(66_666_666_624u64));
    m.expect_error(&["sample_size", "absurdly large"]);
}

#[test]
fn missing_files_are_named() {
    let m = TempModel::new("nofiles");
    std::fs::remove_file(m.path(WEIGHTS)).unwrap();
    m.expect_error(&["missing weights file", WEIGHTS]);
    std::fs::remove_file(m.path("config.json")).unwrap();
    m.expect_error(&["not a diffusers model directory", "config.json"]);
    let gone = m.path("no-such-dir");
    let e = format!("{:#}", Model::load(&gone).unwrap_err());
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn forward_refuses_wrong_input_shapes_and_timestep_counts() {
    let config = UNet2DConfig::mnist_like();
    let weights = Weights::random(&config, 0).unwrap();
    let unet = UNet::new(&config, 8, 8).unwrap();
    let x = Tensor::zeros(&[2, 1, 8, 8]);
    let e = forward(&unet, &weights, &x, &[1.0, 2.0, 3.0]).unwrap_err();
    assert!(
        e.to_string().contains("3 timesteps for a batch of 2"),
        "{e}"
    );
    let e = forward(&unet, &weights, &Tensor::zeros(&[2, 3, 8, 8]), &[1.0]).unwrap_err();
    assert!(e.to_string().contains("model was built for"), "{e}");
    let e = UNet::new(&config, 6, 8).unwrap_err();
    assert!(e.to_string().contains("multiples of 4"), "{e}");
    // Weights of another config are detected, not indexed blindly.
    let other = Weights::random(&UNet2DConfig::cifar10(), 0).unwrap();
    assert!(forward(&unet, &other, &x, &[1.0]).is_err());
}

#[test]
fn non_finite_weights_are_refused_with_name_and_count() {
    let m = TempModel::new("nan");
    let mut e = m.weights_entries();
    let i = e.iter().position(|x| x.0 == "conv_out.weight").unwrap();
    // Three values become NaN, +Inf and -Inf, in the tensor's own dtype.
    let (width, specials): (usize, [Vec<u8>; 3]) = match e[i].1 {
        Dtype::F32 => (
            4,
            [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].map(|v| v.to_le_bytes().to_vec()),
        ),
        Dtype::F16 => (
            2,
            [0x7E00u16, 0x7C00, 0xFC00].map(|v| v.to_le_bytes().to_vec()),
        ),
        Dtype::BF16 => (
            2,
            [0x7FC0u16, 0x7F80, 0xFF80].map(|v| v.to_le_bytes().to_vec()),
        ),
        other => panic!("fixture dtype {other:?}"),
    };
    for (k, v) in specials.iter().enumerate() {
        e[i].3[k * 7 * width..][..width].copy_from_slice(v);
    }
    m.write_weights(e);
    m.expect_error(&["conv_out.weight", "3 non-finite"]);
}

/// A small model of `config` (8×8 images) with random weights.
fn small(edit: impl FnOnce(&mut UNet2DConfig)) -> (UNet, Weights) {
    let mut config = UNet2DConfig {
        block_out_channels: vec![8, 16],
        down_block_types: vec!["DownBlock2D".into(), "DownBlock2D".into()],
        up_block_types: vec!["UpBlock2D".into(), "UpBlock2D".into()],
        norm_num_groups: Some(4),
        layers_per_block: 1,
        ..UNet2DConfig::default()
    };
    edit(&mut config);
    let weights = Weights::random(&config, 0).unwrap();
    (UNet::new(&config, 8, 8).unwrap(), weights)
}

/// The forward fails with an error containing `needle`.
fn refuses(unet: &UNet, weights: &Weights, t: &[f32], labels: Option<&ClassLabels>, needle: &str) {
    let x = Tensor::zeros(&[2, unet.input.c, 8, 8]);
    let e = forward_labeled(unet, weights, &x, t, labels).unwrap_err();
    let e = format!("{e:#}");
    println!("{e}");
    assert!(e.contains(needle), "{e:?} does not mention {needle:?}");
    assert!(!e.contains('\n'), "{e:?} is not one line");
}

#[test]
fn class_labels_are_required_in_range_and_of_the_right_kind() {
    let (unet, w) = small(|c| c.num_class_embeds = Some(10));
    refuses(
        &unet,
        &w,
        &[5.0],
        None,
        "the model is class-conditional (num_class_embeds = 10)",
    );
    let out_of_range = ClassLabels::Indices(vec![3, 10]);
    refuses(
        &unet,
        &w,
        &[5.0],
        Some(&out_of_range),
        "class label 10 is out of range: the model has 10 classes (0..=9)",
    );
    let three = ClassLabels::Indices(vec![1, 2, 3]);
    refuses(
        &unet,
        &w,
        &[5.0],
        Some(&three),
        "3 class labels for a batch of 2",
    );
    let vectors = ClassLabels::Vectors {
        width: 32,
        data: vec![0.0; 32],
    };
    refuses(&unet, &w, &[5.0], Some(&vectors), "takes class indices");
    let x = Tensor::zeros(&[2, 3, 8, 8]);
    let one = ClassLabels::Indices(vec![9]);
    assert!(forward_labeled(&unet, &w, &x, &[5.0], Some(&one)).is_ok());

    let (unet, w) = small(|_| {});
    refuses(
        &unet,
        &w,
        &[5.0],
        Some(&one),
        "the model is not class-conditional",
    );

    let (unet, w) = small(|c| c.class_embed_type = Some("identity".into()));
    refuses(
        &unet,
        &w,
        &[5.0],
        Some(&one),
        "takes a vector of 32 values per image",
    );
    let narrow = ClassLabels::Vectors {
        width: 8,
        data: vec![0.0; 16],
    };
    refuses(&unet, &w, &[5.0], Some(&narrow), "class vectors of width 8");
}

#[test]
fn timesteps_the_time_embedding_cannot_take_are_refused() {
    let (unet, w) = small(|c| {
        c.time_embedding_type = "learned".into();
        c.num_train_timesteps = Some(1000);
    });
    refuses(
        &unet,
        &w,
        &[10.5],
        None,
        "timestep 10.5 cannot be used: a learned time embedding takes integer values in 0..1000",
    );
    refuses(&unet, &w, &[1000.0], None, "integer values in 0..1000");
    let x = Tensor::zeros(&[2, 3, 8, 8]);
    assert!(forward_labeled(&unet, &w, &x, &[999.0], None).is_ok());

    let (unet, w) = small(|c| c.time_embedding_type = "fourier".into());
    refuses(&unet, &w, &[0.0], None, "must be positive (σ > 0)");
    refuses(&unet, &w, &[f32::NAN], None, "not a finite number");
}
