//! The GPU's own failures (issue 16, part 6): a batch or model too large for the adapter is
//! refused before its buffers exist, with the limit it hit; wgpu errors outside any error scope
//! and a lost device become error messages, never panics.

mod common;

use ddim_wgpu::gpu::memory::MemoryBudget;
use ddim_wgpu::gpu::plan::{plan_footprint, PlanOptions};
use ddim_wgpu::gpu::sampler::{batch_capacity, RunUpdate};
use ddim_wgpu::gpu::GpuContext;
use ddim_wgpu::pipeline::{Device, Noise, Pipeline, SampleRequest};
use ddim_wgpu::sampling::SampleSettings;
use std::sync::Arc;

fn request(num: usize, batch: Option<usize>) -> SampleRequest {
    SampleRequest {
        settings: SampleSettings {
            steps: 10,
            ..Default::default()
        },
        noise: Noise::Seed { seed: 5, num },
        batch,
        ..Default::default()
    }
}

/// How many images of a 10-step DDIM run fit `ctx`, as the sampler computes it.
fn capacity(ctx: &GpuContext, pipe: &Pipeline) -> usize {
    let steps = pipe.steps(&request(1, None).settings).unwrap();
    let timesteps: Vec<f64> = (0..steps.len()).map(|i| steps.timestep(i)).collect();
    let weights = pipe.gpu_weights(ctx).unwrap();
    let update = RunUpdate::new(&pipe.scheduler, &steps);
    batch_capacity(
        ctx,
        &pipe.unet,
        &weights,
        &update,
        &timesteps,
        PlanOptions::default(),
        0,
    )
    .unwrap()
    .max_batch
}

#[test]
fn a_batch_over_the_memory_budget_is_refused_before_it_is_allocated() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let mut ran = 0;
    for backend in common::backends() {
        let Some(mut ctx) = common::fresh_context(backend, None) else {
            continue;
        };
        ran += 1;
        // A budget of the weights, the plan's fixed part and 4.5 images' worth of the plan.
        let weights = pipe.gpu_weights(&ctx).unwrap();
        let steps = pipe.steps(&request(1, None).settings).unwrap();
        let ts: Vec<f32> = (0..steps.len()).map(|i| steps.timestep(i) as f32).collect();
        let plan = plan_footprint(&ctx, &pipe.unet, &weights, &ts, PlanOptions::default()).unwrap();
        assert!(plan.per_image > 0, "{backend}: {plan:?}");
        let budget = weights.bytes + plan.fixed + plan.per_image * 9 / 2;
        ctx.memory = Some(MemoryBudget {
            bytes: budget,
            source: "the test's budget".into(),
        });
        let fits = capacity(&ctx, &pipe);
        assert!((1..=4).contains(&fits), "{backend}: {fits} images fit");

        let device = Device::Gpu(Arc::new(ctx));
        let Device::Gpu(ctx) = &device else {
            unreachable!()
        };
        let before = ctx.bytes_created();
        let err = pipe
            .sample(&device, &request(64, Some(64)))
            .expect_err("a batch of 64 cannot fit the budget");
        let created = ctx.bytes_created() - before;
        let msg = format!("{err:#}");
        eprintln!("{backend}: {msg} ({created} bytes created on the way)");
        assert!(
            msg.contains("does not fit")
                && msg.contains("the test's budget")
                && msg.contains(&format!("at most {fits} image")),
            "{backend}: {msg}"
        );
        // Only the two measuring plans (for one and two images) existed, never the batch's.
        assert!(
            created <= 2 * plan.fixed + 3 * plan.per_image + (1 << 20),
            "{backend}: {created} bytes created before refusing; the batch needs {}",
            plan.fixed + 64 * plan.per_image
        );

        // Left to itself the run chunks within the budget, and an explicit batch that fits runs.
        assert!(pipe.batch_for(&device, &request(64, None)).unwrap() <= fits);
        let x = pipe.sample(&device, &request(6, None)).unwrap();
        let y = pipe.sample(&device, &request(6, Some(fits))).unwrap();
        assert_eq!(x.shape, vec![6, 1, 32, 32]);
        assert!(x.data.iter().all(|v| v.is_finite()));
        common::assert_close("chunked within the budget", &x.data, &y.data, 1e-6);
    }
    common::assert_some_ran(ran);
}

#[test]
fn a_model_larger_than_the_budget_is_refused_before_its_weights_are_uploaded() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let mut ran = 0;
    for backend in common::backends() {
        let Some(ctx) = common::fresh_context(backend, Some(1)) else {
            continue;
        };
        ran += 1;
        let before = ctx.bytes_created();
        let err = pipe
            .gpu_weights(&ctx)
            .err()
            .expect("4.5 MB of weights in 1 MiB");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("parameters") && msg.contains("--gpu-memory 1"),
            "{backend}: {msg}"
        );
        assert_eq!(
            ctx.bytes_created(),
            before,
            "{backend}: allocated before refusing"
        );
    }
    common::assert_some_ran(ran);
}

#[test]
fn a_wgpu_error_outside_any_scope_is_an_error_not_a_panic() {
    let mut ran = 0;
    for backend in common::backends() {
        let Some(ctx) = common::fresh_context(backend, None) else {
            continue;
        };
        ran += 1;
        // Larger than any buffer may be: a validation error, raised outside every error scope
        // (wgpu's default handler would panic here).
        let _too_big = ctx.storage("oversized", ctx.limits.max_buffer_size + 4096);
        let msg = format!("{:#}", ctx.wait_idle().expect_err("the error is kept"));
        assert!(
            msg.contains("outside any checked operation"),
            "{backend}: {msg}"
        );
        // And every later operation on the context says so too.
        let again = ctx
            .read_f32(ctx.placeholder(), 1)
            .expect_err("still failed");
        assert!(format!("{again:#}").contains("outside any checked operation"));
    }
    common::assert_some_ran(ran);
}

#[test]
fn a_lost_device_is_reported_as_lost() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let mut ran = 0;
    for backend in common::backends() {
        let Some(ctx) = common::fresh_context(backend, None) else {
            continue;
        };
        ran += 1;
        let device = Device::Gpu(Arc::new(ctx));
        pipe.sample(&device, &request(2, None)).unwrap();
        let Device::Gpu(ctx) = &device else {
            unreachable!()
        };
        ctx.device.destroy();
        let err = pipe
            .sample(&device, &request(2, None))
            .expect_err("no sampling on a destroyed device");
        let msg = format!("{err:#}");
        eprintln!("{backend}: {msg}");
        assert!(msg.contains("device was lost"), "{backend}: {msg}");
    }
    common::assert_some_ran(ran);
}

/// `ddim` with `args`; (success, stderr).
fn ddim(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ddim"))
        .env(
            "DDIM_TUNE_CACHE",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/tuning.json"),
        )
        .args(args)
        .output()
        .expect("running ddim");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_refuses_batches_the_adapter_cannot_hold_with_the_limit() {
    let mut ran = 0;
    for backend in common::backends() {
        if common::context(backend).is_none() {
            continue;
        }
        ran += 1;
        let b = backend.to_string();
        // Far past one storage binding: refused before the GEMM and kernel sections allocate.
        let (ok, err) = ddim(&[
            "bench",
            "--backend",
            &b,
            "--arch",
            "cifar10",
            "--batch",
            "100000",
            "--steps",
            "2",
        ]);
        assert!(!ok, "{b}: bench --batch 100000 succeeded");
        assert!(
            err.contains("--batch 100000 does not fit") && err.contains("storage binding"),
            "{b}: {err}"
        );
        // Within the binding but not within --gpu-memory.
        let out = std::env::temp_dir().join(format!("ddim-gpu-failures-{b}.png"));
        let _ = std::fs::remove_file(&out);
        let (ok, err) = ddim(&[
            "sample",
            "--backend",
            &b,
            "--device",
            "gpu",
            "-n",
            "64",
            "--batch",
            "64",
            "--steps",
            "2",
            "--gpu-memory",
            "16",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!ok, "{b}: sample --gpu-memory 16 --batch 64 succeeded");
        assert!(!out.exists(), "{b}: a refused run wrote {}", out.display());
        assert!(
            err.contains("a batch of 64 does not fit") && err.contains("--gpu-memory 16"),
            "{b}: {err}"
        );
    }
    common::assert_some_ran(ran);
}
