//! The whole U-Net forward on the GPU plan against the CPU reference and against PyTorch's output
//! stored in each `tests/fixtures/unet/*` model fixture: rel L2 ≤ `common::FORWARD_TOL`. Also:
//! batch splitting, both conv variants, and per-layer outputs.

mod common;

use std::path::{Path, PathBuf};

use ddim_wgpu::cpu::forward::{forward as cpu_forward, forward_labeled, forward_with};
use ddim_wgpu::gpu::kernels::conv2d::Variant;
use ddim_wgpu::gpu::plan::{folded_layers, forward, PlanOptions, UNetPlan};
use ddim_wgpu::gpu::{GpuContext, GpuWeights};
use ddim_wgpu::model::tensor_io::read_tensor;
use ddim_wgpu::model::unet::broadcast_timesteps;
use ddim_wgpu::model::{ClassLabels, Model, UNet, Weights};
use ddim_wgpu::Tensor;

const TOL: f64 = common::FORWARD_TOL;

/// The model's weights on the test's device.
fn upload(ctx: &GpuContext, unet: &UNet, weights: &Weights) -> GpuWeights {
    GpuWeights::upload(ctx, unet, weights).unwrap()
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet")
}

/// Every fixture directory that holds a loadable model (config + weights).
fn model_fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.join("case.json").exists())
        .collect();
    dirs.sort();
    dirs
}

fn timesteps(dir: &Path) -> Vec<f32> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    v["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap() as f32)
        .collect()
}

struct Fixture {
    name: String,
    model: Model,
    unet: UNet,
    x: Tensor,
    t: Vec<f32>,
    torch: Tensor,
    labels: Option<ClassLabels>,
}

fn load(dir: &Path) -> Option<Fixture> {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let model = match Model::load(dir) {
        Ok(m) => m,
        Err(e) => {
            // cifar10_formula stores no checkpoint (its weights come from a formula in
            // tests/cpu_cifar10_arch.rs).
            eprintln!("[gpu forward] {name}: no loadable model ({e:#}); skipped");
            return None;
        }
    };
    let x = read_tensor(&dir.join("input.safetensors"), "sample").unwrap();
    let (_, _, h, w) = x.nchw();
    let unet = UNet::new(&model.config, h, w).unwrap();
    let torch = read_tensor(&dir.join("expected.safetensors"), "sample").unwrap();
    Some(Fixture {
        name,
        model,
        unet,
        x,
        t: timesteps(dir),
        torch,
        labels: common::fixture_labels(dir),
    })
}

#[test]
fn forward_matches_cpu_reference_and_pytorch_on_every_fixture() {
    let fixtures: Vec<Fixture> = model_fixtures().iter().filter_map(|d| load(d)).collect();
    assert!(fixtures.len() >= 5, "expected the committed model fixtures");
    let cpu: Vec<Tensor> = fixtures
        .iter()
        .map(|f| forward_labeled(&f.unet, &f.model.weights, &f.x, &f.t, f.labels.as_ref()).unwrap())
        .collect();
    common::for_each_backend(|backend, ctx| {
        for (f, cpu) in fixtures.iter().zip(&cpu) {
            let y = forward(
                ctx,
                &f.unet,
                &upload(ctx, &f.unet, &f.model.weights),
                &f.x,
                &f.t,
                f.labels.as_ref(),
                None,
            )
            .unwrap_or_else(|e| panic!("{}: {e:#}", f.name));
            assert_eq!(y.shape, cpu.shape, "{}", f.name);
            let vs_cpu = common::assert_close(
                &format!("{} on {backend} vs CPU", f.name),
                &y.data,
                &cpu.data,
                TOL,
            );
            let vs_torch = common::assert_close(
                &format!("{} on {backend} vs PyTorch", f.name),
                &y.data,
                &f.torch.data,
                TOL,
            );
            eprintln!(
                "[gpu forward] {backend} {}: rel L2 vs CPU {vs_cpu:.2e}, vs PyTorch {vs_torch:.2e}",
                f.name
            );
        }
    });
}

#[test]
fn batch_split_and_both_conv_variants_agree() {
    let dir = fixtures_dir().join("cifar_like_flat");
    let f = load(&dir).unwrap();
    // Batch 3 with distinct timesteps, run as chunks of 1 and of 2, and whole.
    let (n, c, h, w) = f.x.nchw();
    let mut data = f.x.data.clone();
    data.extend_from_slice(&common::random(c * h * w, 5));
    let x = Tensor::new(vec![n + 1, c, h, w], data).unwrap();
    let t = [3.0, 400.0, 999.0];
    let cpu = cpu_forward(&f.unet, &f.model.weights, &x, &t).unwrap();
    common::for_each_backend(|backend, ctx| {
        for chunk in [None, Some(1), Some(2)] {
            let y = forward(
                ctx,
                &f.unet,
                &upload(ctx, &f.unet, &f.model.weights),
                &x,
                &t,
                None,
                chunk,
            )
            .unwrap();
            common::assert_close(
                &format!("{backend} chunk {chunk:?}"),
                &y.data,
                &cpu.data,
                TOL,
            );
        }
        for variant in Variant::ALL {
            let plan = UNetPlan::new(
                ctx,
                &f.unet,
                &upload(ctx, &f.unet, &f.model.weights),
                &[t.to_vec()],
                PlanOptions {
                    conv_variant: Some(variant),
                    keep_layer_outputs: false,
                },
            )
            .unwrap();
            plan.write_input(ctx, &x).unwrap();
            plan.run(ctx, 0).unwrap();
            let y = plan.read_output(ctx).unwrap();
            common::assert_close(&format!("{backend} {variant:?}"), &y.data, &cpu.data, TOL);
        }
    });
}

#[test]
fn per_layer_outputs_match_the_cpu_layers() {
    let dir = fixtures_dir().join("attn_heads_pipeline");
    let f = load(&dir).unwrap();
    let mut cpu_layers = std::collections::HashMap::new();
    forward_with(
        &f.unet,
        &f.model.weights,
        &f.x,
        &f.t,
        None,
        &mut |name, t| {
            cpu_layers.insert(name.to_string(), t.clone());
        },
    )
    .unwrap();
    common::for_each_backend(|backend, ctx| {
        // A two-step plan: step 1 holds the fixture's timesteps, step 0 others.
        let other: Vec<f32> = f.t.iter().map(|t| (t + 17.0) % 1000.0).collect();
        let plan = UNetPlan::new(
            ctx,
            &f.unet,
            &upload(ctx, &f.unet, &f.model.weights),
            &[other, f.t.clone()],
            PlanOptions {
                conv_variant: None,
                keep_layer_outputs: true,
            },
        )
        .unwrap();
        plan.write_input(ctx, &f.x).unwrap();
        plan.run(ctx, 1).unwrap();
        let layers = plan.read_layers(ctx).unwrap();
        assert!(layers.len() > 10);
        for (name, got) in &layers {
            let want = &cpu_layers[name];
            assert_eq!(got.shape, want.shape, "{name}");
            common::assert_close(
                &format!("{backend} layer {name}"),
                &got.data,
                &want.data,
                TOL,
            );
        }
    });
}

/// The two built-in architectures with seeded random weights: the bundled MNIST model's
/// (32, 64, 64; one layer per block) and google/ddpm-cifar10-32's (35.7 M parameters, attention
/// at 16×16), so the full-size layer shapes run on the GPU too.
#[test]
fn builtin_architectures_with_random_weights_match_the_cpu() {
    use ddim_wgpu::model::{UNet2DConfig, Weights};
    for (name, config, batch) in [
        ("mnist-like", UNet2DConfig::mnist_like(), 3),
        ("cifar10", UNet2DConfig::cifar10(), 1),
    ] {
        let unet = UNet::from_config(&config).unwrap();
        let weights = Weights::random(&config, 7).unwrap();
        let s = unet.input;
        let x = Tensor::new(
            vec![batch, s.c, s.h, s.w],
            common::random(batch * s.numel(), 11),
        )
        .unwrap();
        let t: Vec<f32> = (0..batch).map(|i| 1.0 + 400.0 * i as f32).collect();
        let cpu = cpu_forward(&unet, &weights, &x, &t).unwrap();
        common::for_each_backend(|backend, ctx| {
            let y = forward(
                ctx,
                &unet,
                &upload(ctx, &unet, &weights),
                &x,
                &t,
                None,
                None,
            )
            .unwrap();
            let err =
                common::assert_close(&format!("{name} on {backend}"), &y.data, &cpu.data, TOL);
            eprintln!("[gpu forward] {backend} {name} (random weights): rel L2 vs CPU {err:.2e}");
        });
    }
}

/// A batch whose buffers would not fit one binding is refused by the plan with a clear error,
/// and `forward` splits it instead (checked here through the computed limit, without running
/// the oversized batch).
#[test]
fn oversized_batch_is_refused_by_the_plan() {
    use ddim_wgpu::gpu::plan::max_batch;
    use ddim_wgpu::model::{UNet2DConfig, Weights};
    let config = UNet2DConfig::cifar10();
    let unet = UNet::from_config(&config).unwrap();
    let weights = Weights::random(&config, 1).unwrap();
    common::for_each_backend(|backend, ctx| {
        let fits = max_batch(ctx, &unet).unwrap();
        // Largest activation: 384 channels at 32×32 (the decoder's first concat at full size).
        let per_image = (unet.max_activation() * 4) as u64;
        assert!(
            fits as u64 * per_image <= ctx.max_binding_bytes(),
            "{backend}"
        );
        assert!(
            (fits as u64 + 1) * per_image > ctx.max_binding_bytes(),
            "{backend}"
        );
        let err = UNetPlan::new(
            ctx,
            &unet,
            &upload(ctx, &unet, &weights),
            &[vec![1.0; fits + 1]],
            PlanOptions::default(),
        )
        .err()
        .expect("an oversized batch must be refused");
        assert!(format!("{err:#}").contains("split the batch"), "{err:#}");
    });
}

/// Every fixture layer by layer, as `ddim verify` compares them: each layer the GPU plan reports
/// equals the CPU's, and every CPU layer is reported unless the plan folds it into a neighbour
/// (`folded_layers`; the class embedding lives inside the GPU's embedding table). This covers
/// the resnets that resample (avg-pool, nearest, FIR), the skip blocks' image path, the
/// σ division, Fourier and learned time embeddings and the three class embeddings.
#[test]
fn every_fixture_layer_by_layer() {
    let fixtures: Vec<Fixture> = model_fixtures().iter().filter_map(|d| load(d)).collect();
    let mut cpu = vec![];
    for f in &fixtures {
        let mut layers = vec![];
        forward_with(
            &f.unet,
            &f.model.weights,
            &f.x,
            &f.t,
            f.labels.as_ref(),
            &mut |name, t| layers.push((name.to_string(), t.clone())),
        )
        .unwrap();
        cpu.push(layers);
    }
    common::for_each_backend(|backend, ctx| {
        for (f, cpu_layers) in fixtures.iter().zip(&cpu) {
            let weights = upload(ctx, &f.unet, &f.model.weights);
            let t = broadcast_timesteps(&f.t, f.x.shape[0]).unwrap();
            let plan = UNetPlan::new(
                ctx,
                &f.unet,
                &weights,
                &[t],
                PlanOptions {
                    conv_variant: None,
                    keep_layer_outputs: true,
                },
            )
            .unwrap_or_else(|e| panic!("{}: {e:#}", f.name));
            plan.set_labels(ctx, &f.unet, &weights, f.labels.as_ref())
                .unwrap();
            plan.write_input(ctx, &f.x).unwrap();
            plan.run(ctx, 0).unwrap();
            let got = plan.read_layers(ctx).unwrap();
            let mut folded = folded_layers(&f.unet);
            folded.extend(["time_embedding", "class_embedding"]);
            let mut worst = 0.0f64;
            for (name, want) in cpu_layers {
                match got.iter().find(|(n, _)| n == name) {
                    Some((_, g)) => {
                        assert_eq!(g.shape, want.shape, "{} {name}", f.name);
                        worst = worst.max(common::assert_close(
                            &format!("{} {name} on {backend}", f.name),
                            &g.data,
                            &want.data,
                            TOL,
                        ));
                    }
                    None => assert!(
                        folded.contains(&name.as_str()),
                        "{}: the GPU plan reported no output for {name}",
                        f.name
                    ),
                }
            }
            assert!(
                got.iter()
                    .all(|(n, _)| cpu_layers.iter().any(|(c, _)| c == n)),
                "{}: the GPU reported a layer the CPU does not name",
                f.name
            );
            eprintln!(
                "[gpu layers] {backend} {}: {} layers, worst rel L2 {worst:.2e}",
                f.name,
                got.len()
            );
        }
    });
}

/// A class-conditional model (the consistency-model-like fixture: resnet resampling, scale-shift,
/// a class table) with per-image labels run in chunks of 1 and 2: each chunk's tables are
/// recomputed for its own labels, so every image matches the CPU; a plan run without labels
/// is refused.
#[test]
fn class_labels_follow_the_images_across_chunks() {
    let f = load(&fixtures_dir().join("cd_imagenet64_like")).unwrap();
    let (n, c, h, w) = f.x.nchw();
    let mut data = f.x.data.clone();
    data.extend_from_slice(&common::random(c * h * w, 8));
    let x = Tensor::new(vec![n + 1, c, h, w], data).unwrap();
    let mut t = f.t.clone();
    t.push(500.0);
    let labels = ClassLabels::Indices(vec![3, 7, 1]);
    let cpu = forward_labeled(&f.unet, &f.model.weights, &x, &t, Some(&labels)).unwrap();
    common::for_each_backend(|backend, ctx| {
        let weights = upload(ctx, &f.unet, &f.model.weights);
        for chunk in [None, Some(1), Some(2)] {
            let y = forward(ctx, &f.unet, &weights, &x, &t, Some(&labels), chunk).unwrap();
            common::assert_close(
                &format!("{backend} labels per image, chunk {chunk:?}"),
                &y.data,
                &cpu.data,
                TOL,
            );
        }
        let plan =
            UNetPlan::new(ctx, &f.unet, &weights, &[t.clone()], PlanOptions::default()).unwrap();
        let Err(e) = plan.run(ctx, 0) else {
            panic!("{backend}: a class-conditional plan ran without labels");
        };
        assert!(format!("{e:#}").contains("class-conditional"), "{e:#}");
        let Err(e) = plan.set_labels(ctx, &f.unet, &weights, None) else {
            panic!("{backend}: missing labels were accepted");
        };
        assert!(format!("{e:#}").contains("give a class label"), "{e:#}");
    });
}
