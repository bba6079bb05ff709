//! The batch is decided in one place, with the run's trajectory frames counted (issue 26, 3):
//! under a memory budget that holds fewer images with frames than without, `ddim sample
//! --save-trajectory` without `--batch` runs in a batch that fits. (Before, the command line
//! chose the batch without the frames and the run then refused it, telling the user to leave
//! out a `--batch` they never gave.) An explicit batch that does not fit is refused with the
//! typed `BatchTooLarge`, and the command line names `--batch`.

mod common;

use ddim_wgpu::gpu::memory::MemoryBudget;
use ddim_wgpu::gpu::plan::{plan_footprint, PlanOptions};
use ddim_wgpu::gpu::sampler::{batch_capacity, RunUpdate};
use ddim_wgpu::gpu::GpuContext;
use ddim_wgpu::pipeline::{
    BatchTooLarge, Device, Noise, Pipeline, SampleRequest, TrajectoryFrames,
};
use ddim_wgpu::sampling::SampleSettings;
use std::sync::Arc;

const STEPS: usize = 20;

fn request(num: usize, trajectory: TrajectoryFrames, batch: Option<usize>) -> SampleRequest {
    SampleRequest {
        settings: SampleSettings {
            steps: STEPS,
            ..Default::default()
        },
        noise: Noise::Seed { seed: 3, num },
        batch,
        trajectory,
        ..Default::default()
    }
}

/// The most images per chunk the sampler allows on `ctx` when it keeps `frames` frames.
fn capacity(ctx: &GpuContext, pipe: &Pipeline, frames: usize) -> Option<usize> {
    let steps = pipe
        .steps(&request(1, TrajectoryFrames::Off, None).settings)
        .unwrap();
    let timesteps: Vec<f64> = (0..steps.len()).map(|i| steps.timestep(i)).collect();
    let weights = pipe.gpu_weights(ctx).unwrap();
    let update = RunUpdate::new(&pipe.scheduler, &steps);
    let options = PlanOptions::default();
    batch_capacity(
        ctx, &pipe.unet, &weights, &update, &timesteps, options, frames,
    )
    .ok()
    .map(|c| c.max_batch)
}

/// A budget in whole MiB (as `--gpu-memory` gives it) under which `k0` images fit without
/// frames but fewer with a frame after every step: (MiB, k0, what fits with the frames).
fn budget_that_frames_shrink(ctx: &mut GpuContext, pipe: &Pipeline) -> (u64, usize, usize) {
    let weights = pipe.gpu_weights(ctx).unwrap();
    let steps = pipe
        .steps(&request(1, TrajectoryFrames::Off, None).settings)
        .unwrap();
    let ts: Vec<f32> = (0..steps.len()).map(|i| steps.timestep(i) as f32).collect();
    let plan = plan_footprint(ctx, &pipe.unet, &weights, &ts, PlanOptions::default()).unwrap();
    // Start where about 6 images fit: there one MiB step crosses a frames-only boundary.
    let first = (weights.bytes + plan.fixed + 6 * plan.per_image) >> 20;
    for mib in first..first + 64 {
        ctx.memory = Some(MemoryBudget {
            bytes: mib << 20,
            source: format!("the test's {mib} MiB"),
        });
        if let (Some(k0), Some(kf)) = (capacity(ctx, pipe, 0), capacity(ctx, pipe, STEPS)) {
            if kf >= 1 && kf < k0 && k0 <= 16 {
                return (mib, k0, kf);
            }
        }
    }
    panic!("no budget from {first} MiB on holds fewer images with frames than without");
}

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
fn a_trajectory_run_chooses_a_batch_that_holds_its_frames() {
    let pipe = ddim_wgpu::bundled::pipeline().unwrap();
    let mut ran = 0;
    for backend in common::backends() {
        let Some(mut ctx) = common::fresh_context(backend, None) else {
            continue;
        };
        ran += 1;
        let (mib, k0, kf) = budget_that_frames_shrink(&mut ctx, &pipe);
        eprintln!("{backend}: {mib} MiB hold {k0} images without frames, {kf} with {STEPS}");
        let device = Device::Gpu(Arc::new(ctx));
        let every = TrajectoryFrames::Every(1);

        // Without the frames the choice is k0 images: what the command line used to fix as the
        // batch before the run (which then refused it).
        let plain = pipe
            .batch_for(&device, &request(k0, TrajectoryFrames::Off, None))
            .unwrap();
        assert_eq!(plain, k0, "{backend}");
        // With them, the one decision picks a batch that fits, and the run uses exactly it.
        let chosen = pipe.batch_for(&device, &request(k0, every, None)).unwrap();
        assert!(chosen <= kf, "{backend}: batch {chosen} but {kf} fit");
        let run = pipe
            .sample_with(&device, &request(k0, every, None))
            .unwrap_or_else(|e| panic!("{backend}: {e:#}"));
        assert_eq!(run.batch, chosen, "{backend}");
        let t = run.trajectory.expect("frames were asked for");
        assert_eq!(t.steps, (0..STEPS).collect::<Vec<_>>());
        assert_eq!(t.frames.len(), STEPS);
        assert_eq!(t.frames[0].shape, [k0, 1, 32, 32]);
        assert!(run.images.data.iter().all(|v| v.is_finite()));

        // An explicit batch of k0 with the frames does not fit: a typed refusal naming the limit.
        let err = pipe
            .sample_with(&device, &request(k0, every, Some(k0)))
            .expect_err("k0 images with frames cannot fit");
        let too_large = err
            .downcast_ref::<BatchTooLarge>()
            .unwrap_or_else(|| panic!("{backend}: not BatchTooLarge: {err:#}"));
        assert_eq!((too_large.batch, too_large.fits), (k0, kf), "{backend}");
        assert!(!format!("{err:#}").contains("--"), "{backend}: {err:#}");

        // The command line: no --batch runs and writes the trajectory; --batch k0 is refused
        // with the flag named.
        let dir = std::env::temp_dir().join(format!("ddim-trajectory-batch-{backend}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (out, traj) = (dir.join("grid.png"), dir.join("traj.png"));
        let (mib, n, steps) = (mib.to_string(), k0.to_string(), STEPS.to_string());
        let b = backend.to_string();
        let args = [
            "sample",
            "--backend",
            &b,
            "--device",
            "gpu",
            "--gpu-memory",
            &mib,
            // The library context's fixed kernel rule, so the footprint is the one measured.
            "--tune",
            "off",
            "-n",
            &n,
            "--steps",
            &steps,
            "--save-trajectory",
            traj.to_str().unwrap(),
            "--trajectory-every",
            "1",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        let (ok, err) = ddim(&args);
        assert!(
            ok,
            "{b}: sample --save-trajectory without --batch failed: {err}"
        );
        assert!(traj.is_file() && out.is_file(), "{b}: outputs missing");
        std::fs::remove_file(&traj).unwrap();
        let with_batch: Vec<&str> = args.iter().copied().chain(["--batch", &n]).collect();
        let (ok, err) = ddim(&with_batch);
        assert!(!ok, "{b}: --batch {n} with frames ran under {mib} MiB");
        assert!(
            err.contains(&format!("a batch of {n} does not fit"))
                && err.contains(&format!("--batch {n}"))
                && err.contains(&format!("at most {kf} image")),
            "{b}: {err}"
        );
        assert!(
            !traj.exists(),
            "{b}: a refused run wrote {}",
            traj.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    common::assert_some_ran(ran);
}
