//! The tuning pass (`gpu::tune`) on each backend: a plan built with tuning on times every
//! (kernel, shape) among its variants, keeps the fastest, writes the cache and still matches
//! the CPU reference; a second context reading that cache times nothing and makes the same
//! choices; `force` times everything again; a corrupt cache, a cached variant that does not
//! apply, and another adapter's entries are never trusted.

mod common;

use std::path::{Path, PathBuf};

use ddim_wgpu::cpu::forward::forward as cpu_forward;
use ddim_wgpu::gpu::plan::forward;
use ddim_wgpu::gpu::tune::{Source, TuneReport};
use ddim_wgpu::gpu::{BackendChoice, GpuContext, GpuWeights, KernelChoice, TuneMode};
use ddim_wgpu::Tensor;

/// A fresh cache path for one test on one backend.
fn cache_path(test: &str, backend: BackendChoice) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tune-{test}-{backend}.json"));
    let _ = std::fs::remove_file(&p);
    p
}

/// A context of its own with tuning in `mode` on `cache` (nothing forced by the environment:
/// every kernel family is tuned).
fn tuned(backend: BackendChoice, mode: TuneMode, cache: &Path) -> GpuContext {
    common::open_with(backend, |c| {
        c.kernels = KernelChoice::default();
        c.tune = mode;
        c.tune_cache = Some(cache.to_path_buf());
    })
    .expect("the backend opened once already")
}

/// The tiny pipeline's U-Net (convs, attention, group norms) on a batch of 3, on `ctx`,
/// checked against the CPU reference; returns what the tuner did.
fn forward_checked(ctx: &GpuContext, what: &str) -> TuneReport {
    let pipe = common::tiny_pipeline();
    let unet = &pipe.unet;
    let x = Tensor::new(
        vec![3, unet.input.c, unet.input.h, unet.input.w],
        common::random(3 * unet.input.numel(), 7),
    )
    .unwrap();
    let t = [999.0, 500.0, 3.0];
    let weights = GpuWeights::upload(ctx, unet, &pipe.model.weights).unwrap();
    let y = forward(ctx, unet, &weights, &x, &t, None, None).unwrap();
    let want = cpu_forward(unet, &pipe.model.weights, &x, &t).unwrap();
    common::assert_close(what, &y.data, &want.data, common::FORWARD_TOL);
    ctx.tuner.report()
}

fn tuned_choices(r: &TuneReport) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = r
        .choices
        .iter()
        .filter(|c| c.source != Source::Fixed)
        .map(|c| (c.kernel.clone(), c.shape.clone(), c.variant.clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn auto_tunes_each_shape_once_and_a_second_run_reads_the_cache() {
    for backend in common::backends() {
        let _guard = common::gpu_lock();
        if common::context(backend).is_none() {
            continue;
        }
        let cache = cache_path("auto", backend);
        let first = forward_checked(
            &tuned(backend, TuneMode::Auto, &cache),
            &format!("{backend} tuned forward vs CPU"),
        );
        assert!(first.warning.is_none(), "{:?}", first.warning);
        let timed: Vec<_> = first
            .choices
            .iter()
            .filter(|c| c.source == Source::Measured)
            .collect();
        // On CPU adapters only the barrier-free conv applies (the tiled ones are not
        // candidates there), so conv shapes take the fixed rule; GPUs tune convs and products.
        let cpu = common::context(backend).expect("opened above").is_cpu();
        let tuned_kernels: &[&str] = if cpu { &[] } else { &["conv2d", "matmul"] };
        for kernel in tuned_kernels {
            assert!(
                timed.iter().any(|c| c.kernel == *kernel),
                "{backend}: no {kernel} shape was tuned: {:?}",
                first.choices
            );
        }
        if cpu {
            assert!(
                !timed.is_empty(),
                "{backend}: nothing tuned: {:?}",
                first.choices
            );
            for c in first.choices.iter().filter(|c| c.kernel == "conv2d") {
                assert_eq!(
                    (c.variant.as_str(), c.source),
                    ("reg", Source::Fixed),
                    "{c:?}"
                );
            }
        }
        for c in &timed {
            assert!(c.candidates.len() >= 2, "{c:?}");
            assert!(
                c.candidates.iter().all(|k| k.ms.is_finite() && k.ms > 0.0),
                "{c:?}"
            );
            let best = c
                .candidates
                .iter()
                .min_by(|a, b| a.ms.total_cmp(&b.ms))
                .unwrap();
            assert_eq!(c.variant, best.variant, "{backend}: not the fastest: {c:?}");
        }
        assert!(first.seconds > 0.0);
        assert!(cache.exists(), "{backend}: no cache file written");

        let second = forward_checked(
            &tuned(backend, TuneMode::Auto, &cache),
            &format!("{backend} forward from the cache vs CPU"),
        );
        assert_eq!(
            second.measured(),
            0,
            "{backend}: re-timed {:?}",
            second.choices
        );
        assert!(second.from_cache(), "{backend}: {:?}", second.choices);
        assert_eq!(tuned_choices(&first), tuned_choices(&second));

        let forced = forward_checked(
            &tuned(backend, TuneMode::Force, &cache),
            &format!("{backend} forced re-tune vs CPU"),
        );
        assert_eq!(
            forced.measured(),
            timed.len(),
            "{backend}: force must time every shape again"
        );
        eprintln!(
            "[tune] {backend}: {} shapes timed in {:.2} s; second run from the cache",
            timed.len(),
            first.seconds
        );
    }
}

#[test]
fn a_corrupt_cache_is_ignored_with_a_warning_and_rewritten() {
    for backend in common::backends() {
        let _guard = common::gpu_lock();
        if common::context(backend).is_none() {
            continue;
        }
        let cache = cache_path("corrupt", backend);
        std::fs::write(&cache, b"{\"format\": 1, \"entries\": [{\"adapter\": tru").unwrap();
        let report = forward_checked(
            &tuned(backend, TuneMode::Auto, &cache),
            &format!("{backend} forward with a corrupt cache vs CPU"),
        );
        let warning = report.warning.clone().expect("a warning about the cache");
        assert!(warning.contains("ignoring the tuning cache"), "{warning}");
        assert!(report.measured() > 0, "nothing was timed");
        assert_eq!(
            report
                .choices
                .iter()
                .filter(|c| c.source == Source::Cache)
                .count(),
            0
        );
        // The file was replaced by a valid one that the next run uses.
        let again = forward_checked(
            &tuned(backend, TuneMode::Auto, &cache),
            &format!("{backend} forward after the rewrite vs CPU"),
        );
        assert!(again.warning.is_none(), "{:?}", again.warning);
        assert!(again.from_cache());
    }
}

#[test]
fn cached_entries_that_do_not_apply_or_belong_to_another_adapter_are_not_trusted() {
    for backend in common::backends() {
        let _guard = common::gpu_lock();
        if common::context(backend).is_none() {
            continue;
        }
        let cache = cache_path("untrusted", backend);
        let first = forward_checked(
            &tuned(backend, TuneMode::Auto, &cache),
            &format!("{backend} tuned forward vs CPU"),
        );
        let n = first.measured();
        let mut file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
        let entries = file["entries"].as_array_mut().unwrap();
        assert_eq!(entries.len(), n);
        // Half the entries name a variant that does not exist; the other half another adapter.
        for (i, e) in entries.iter_mut().enumerate() {
            if i % 2 == 0 {
                e["variant"] = "no-such-variant".into();
            } else {
                e["adapter"] = "some other GPU | driver 0.0".into();
            }
        }
        std::fs::write(&cache, serde_json::to_string(&file).unwrap()).unwrap();
        let second = forward_checked(
            &tuned(backend, TuneMode::Auto, &cache),
            &format!("{backend} forward with untrusted entries vs CPU"),
        );
        assert_eq!(second.measured(), n, "{backend}: {:?}", second.choices);
    }
}

/// Validate, then time: a deliberately wrong conv candidate (the fixed variant's dispatch with
/// no workgroups: the fastest of all, and no output written) is injected into every
/// conv shape's candidates. Validation against the fixed variant's output must reject it with a
/// warning that names it, never choose it (the forward still matches the CPU reference), and
/// cache the rejection so that the next run neither tries nor chooses it.
#[test]
fn an_injected_wrong_variant_is_rejected_and_never_chosen() {
    for backend in common::backends() {
        let _guard = common::gpu_lock();
        if common::context(backend).is_none() {
            continue;
        }
        let cache = cache_path("faulty", backend);
        let faulty = |mode| {
            common::open_with(backend, |c| {
                c.kernels = KernelChoice {
                    inject_faulty_conv: true,
                    ..KernelChoice::default()
                };
                c.tune = mode;
                c.tune_cache = Some(cache.to_path_buf());
            })
            .expect("the backend opened once already")
        };
        let first = forward_checked(
            &faulty(TuneMode::Force),
            &format!("{backend} forward with a faulty candidate vs CPU"),
        );
        let convs: Vec<_> = first
            .choices
            .iter()
            .filter(|c| c.kernel == "conv2d")
            .collect();
        assert!(
            !convs.is_empty(),
            "{backend}: no conv shape: {:?}",
            first.choices
        );
        for c in &convs {
            assert_eq!(c.source, Source::Measured, "{backend}: {c:?}");
            assert_ne!(
                c.variant, "faulty",
                "{backend}: chose the faulty variant: {c:?}"
            );
            assert!(
                c.rejected.iter().any(|r| r.variant == "faulty"),
                "{backend}: the faulty variant was not rejected: {c:?}"
            );
            assert!(
                c.candidates.iter().all(|k| k.variant != "faulty"),
                "{backend}: the faulty variant was timed: {c:?}"
            );
        }
        let again = forward_checked(
            &faulty(TuneMode::Auto),
            &format!("{backend} forward from a cache with a rejection vs CPU"),
        );
        assert_eq!(again.measured(), 0, "{backend}: {:?}", again.choices);
        for c in again.choices.iter().filter(|c| c.kernel == "conv2d") {
            assert_eq!(c.source, Source::Cache, "{c:?}");
            assert_ne!(c.variant, "faulty");
            assert!(c.rejected.iter().any(|r| r.variant == "faulty"), "{c:?}");
        }
    }
}
