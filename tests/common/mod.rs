//! Shared harness for GPU tests: one context per backend, shared by every test in a binary and
//! used one test at a time, and random inputs and comparisons.
//!
//! Backends tested: `DDIM_TEST_BACKENDS` (comma list, default "vulkan,gl"). A backend without an
//! adapter is skipped with a clear line, except with `CI=true`, where a missing Vulkan (lavapipe)
//! or GL (llvmpipe) adapter fails the test (`.ci/run` installs both drivers). Outside CI,
//! `DDIM_REQUIRE_GPU=1` / `DDIM_REQUIRE_GL=1` make them required too.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use ddim_wgpu::gpu::{
    AdapterChoice, BackendChoice, ConvVariant, GpuContext, KernelChoice, MatmulVariant,
};
use ddim_wgpu::pipeline::Device;
use ddim_wgpu::tensor::{max_abs_diff, rel_l2};

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).map(|v| v.to_ascii_lowercase()),
        Ok(v) if v == "1" || v == "true" || v == "yes"
    )
}

fn backends_under_test() -> Vec<BackendChoice> {
    let list = std::env::var("DDIM_TEST_BACKENDS").unwrap_or_else(|_| "vulkan,gl".into());
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("DDIM_TEST_BACKENDS: {e}"))
        })
        .collect()
}

fn required(backend: BackendChoice) -> bool {
    match backend {
        BackendChoice::Vulkan => env_flag("CI") || env_flag("DDIM_REQUIRE_GPU"),
        BackendChoice::Gl => env_flag("CI") || env_flag("DDIM_REQUIRE_GL"),
        _ => false,
    }
}

fn slot(backend: BackendChoice) -> &'static OnceLock<Option<Arc<GpuContext>>> {
    static SLOTS: [OnceLock<Option<Arc<GpuContext>>>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let i = BackendChoice::ALL
        .iter()
        .position(|&b| b == backend)
        .unwrap();
    &SLOTS[i]
}

/// The shared context for `backend`, or None (after printing why) when it has no adapter.
/// Panics when the backend is required (see the module doc).
pub fn context(backend: BackendChoice) -> Option<&'static GpuContext> {
    shared_context(backend).map(|c| &**c)
}

/// The shared context of `backend` as a library [`Device`].
pub fn device(backend: BackendChoice) -> Option<Device> {
    shared_context(backend).map(|c| Device::Gpu(c.clone()))
}

/// DDIM_CONV_VARIANT / DDIM_MATMUL_VARIANT / DDIM_NO_SUBGROUPS force kernel variants in the
/// tests, as in the CLI.
fn kernels_from_env() -> KernelChoice {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    KernelChoice {
        inject_faulty_conv: false,
        conv: var("DDIM_CONV_VARIANT")
            .map(|v| ConvVariant::parse(&v).unwrap_or_else(|e| panic!("{e:#}"))),
        matmul: var("DDIM_MATMUL_VARIANT")
            .map(|v| MatmulVariant::parse(&v).unwrap_or_else(|e| panic!("{e:#}"))),
        no_subgroups: env_flag("DDIM_NO_SUBGROUPS"),
    }
}

fn shared_context(backend: BackendChoice) -> Option<&'static Arc<GpuContext>> {
    slot(backend)
        .get_or_init(|| open_context(backend, None).map(Arc::new))
        .as_ref()
}

/// A context of its own on `backend` (for tests that break it or limit its memory), with
/// `memory_mib` as its memory budget; None (after printing why) as [`context`].
pub fn fresh_context(backend: BackendChoice, memory_mib: Option<u64>) -> Option<GpuContext> {
    open_context(backend, memory_mib)
}

/// Runs `f` on each backend's shared context, and on Vulkan also on a context of its own that
/// forces the reductions' fallback (`KernelChoice::no_subgroups`), so both the subgroup path
/// and the fallback are tested on the same adapter. `f` gets a label naming the path. Under
/// `CI=true` the Vulkan adapter (lavapipe) must have `SUBGROUP`: the subgroup path must not go
/// untested there.
pub fn for_each_reduction_path(mut f: impl FnMut(&str, &GpuContext)) {
    let _guard = gpu_lock();
    let mut ran = 0;
    for backend in backends_under_test() {
        let Some(ctx) = context(backend) else {
            continue;
        };
        let path = if ctx.uses_subgroups() {
            "subgroups"
        } else {
            "no subgroups"
        };
        f(&format!("{backend}, {path}"), ctx);
        ran += 1;
        if backend == BackendChoice::Vulkan {
            assert!(
                ctx.uses_subgroups() || !env_flag("CI") || env_flag("DDIM_NO_SUBGROUPS"),
                "CI=true but {} has no SUBGROUP: Mesa 25's lavapipe has it",
                ctx.describe()
            );
            if ctx.uses_subgroups() {
                let mut choice = AdapterChoice {
                    kernels: kernels_from_env(),
                    ..AdapterChoice::backend(backend)
                };
                choice.kernels.no_subgroups = true;
                let fallback = GpuContext::new(&choice).expect("reopening the Vulkan adapter");
                assert!(!fallback.uses_subgroups());
                f(&format!("{backend}, subgroups off"), &fallback);
            }
        }
    }
    assert_some_ran(ran);
}

fn open_context(backend: BackendChoice, memory_mib: Option<u64>) -> Option<GpuContext> {
    open_with(backend, |c| c.memory_mib = memory_mib)
}

/// A context of its own on `backend`, with the variants forced by the environment and `edit`
/// applied to its [`AdapterChoice`]; None (after printing why) as [`context`].
pub fn open_with(
    backend: BackendChoice,
    edit: impl FnOnce(&mut AdapterChoice),
) -> Option<GpuContext> {
    // Mesa's drivers warn (and some fail) without a runtime dir; give them one.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join("ddim-wgpu-xdg");
        let _ = std::fs::create_dir_all(&dir);
        std::env::set_var("XDG_RUNTIME_DIR", dir);
    }
    let mut choice = AdapterChoice {
        kernels: kernels_from_env(),
        ..AdapterChoice::backend(backend)
    };
    edit(&mut choice);
    match GpuContext::new(&choice) {
        Ok(ctx) => {
            eprintln!("[gpu tests] {backend}: {}", ctx.describe());
            Some(ctx)
        }
        Err(e) if required(backend) => {
            panic!("{backend} adapter required (CI=true) but unavailable: {e:#}")
        }
        Err(e) => {
            eprintln!("[gpu tests] SKIPPING backend {backend}: {e:#}");
            None
        }
    }
}

/// Every backend under test (for tests that open contexts of their own).
pub fn backends() -> Vec<BackendChoice> {
    backends_under_test()
}

/// Panics under `CI=true` when `ran` is 0: a GPU test must not pass in CI without its body.
pub fn assert_some_ran(ran: usize) {
    if ran == 0 {
        assert!(
            !env_flag("CI"),
            "CI=true but no GPU backend ran (DDIM_TEST_BACKENDS={:?})",
            std::env::var("DDIM_TEST_BACKENDS").unwrap_or_else(|_| "vulkan,gl".into())
        );
        eprintln!("[gpu tests] no backend available: test body skipped");
    }
}

/// Runs `f` on each backend's shared context whose device has `SHADER_F16`, and returns the
/// contexts without it (for tests of the refusal). Under `CI=true` Vulkan (lavapipe) must have
/// it, so the f16 path cannot go untested there.
pub fn for_each_f16_backend(mut f: impl FnMut(BackendChoice, &GpuContext)) -> Vec<BackendChoice> {
    let mut without = Vec::new();
    let ran = for_each_backend(|backend, ctx| {
        if ctx.features.contains(wgpu::Features::SHADER_F16) {
            f(backend, ctx);
        } else {
            assert!(
                backend != BackendChoice::Vulkan || !env_flag("CI"),
                "CI=true but {} has no SHADER_F16: Mesa 25's lavapipe has it",
                ctx.describe()
            );
            without.push(backend);
        }
    });
    assert!(
        ran == 0 || without.len() < ran || !env_flag("CI"),
        "no backend ran f16"
    );
    without
}

/// Serialises GPU tests within one test binary (lavapipe is slow and shares 2 cores).
pub fn gpu_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on every available backend under test, holding the GPU lock, and returns how many
/// ran. With `CI=true` it panics when none ran (an empty `DDIM_TEST_BACKENDS`, or backends that
/// all lack an adapter), so a GPU test cannot pass in CI without running its body.
pub fn for_each_backend(mut f: impl FnMut(BackendChoice, &GpuContext)) -> usize {
    let _guard = gpu_lock();
    let mut ran = 0;
    for backend in backends_under_test() {
        if let Some(ctx) = context(backend) {
            f(backend, ctx);
            ran += 1;
        }
    }
    assert_some_ran(ran);
    ran
}

// Tolerances, one per level of comparison, each about 10× the largest error measured on Mesa's
// lavapipe (Vulkan) and llvmpipe (GL) (the figure in its comment), so a real regression fails
// while rounding differences between adapters pass.

/// Rel L2 of one GPU kernel's output against its CPU reference (`cpu::ops` / `cpu::forward`).
/// Measured: ≤ 1.1e-6 (group norm of inputs offset by 20; conv2d ≤ 3.1e-7, matmul ≤ 2.0e-7,
/// DDIM/DDPM update ≤ 1.6e-7, attention block ≤ 1.5e-7, time embedding ≤ 1.5e-7, elementwise
/// ≤ 5.3e-8).
pub const KERNEL_TOL: f64 = 1e-5;

/// Rel L2 of a whole U-Net forward in half precision (f16 activations and weights, f32
/// arithmetic) against the f32 CPU reference: the bound issue 12 sets. Measured: see
/// tests/gpu_f16.rs's output (README.md carries the figures).
pub const F16_FORWARD_TOL: f64 = 3e-3;

/// Rel L2 of one kernel in half precision (f16 inputs and output, f32 arithmetic) against the
/// f32 CPU reference. f16 keeps 11 significant bits (rounding error ≤ 2^-12 ≈ 2.4e-4 of each
/// value). Measured: conv2d ≤ 3.5e-4 against unrounded inputs; group norm (whose inputs sit at
/// 20 ± 3, so their own rounding dominates) is compared on the f16-rounded inputs.
pub const F16_KERNEL_TOL: f64 = 2e-3;

/// Rel L2 of a whole U-Net forward on the GPU plan against the CPU reference, and against the
/// PyTorch outputs of the model fixtures. Measured: ≤ 1.6e-6 (cifar10 architecture, random
/// weights; mnist-like 1.3e-6); fixtures ≤ 4.8e-7 vs CPU and ≤ 6.2e-7 vs PyTorch, per-layer
/// outputs ≤ 4.7e-7.
pub const FORWARD_TOL: f64 = 2e-5;

/// Max abs difference of a GPU sampling run (final sample, the predicted x0 of each step,
/// inversion) against the CPU sampler on the same noise. Measured: ≤ 7.9e-5 (cifar_like_flat,
/// 10 DDIM steps at eta 0, final sample and x0 frames alike; inversion ≤ 2.2e-5, toy loop
/// ≤ 5.4e-7).
pub const SAMPLE_MAX_ABS: f64 = 1e-3;

/// Max abs difference, in [0, 1] pixels, of the CPU sampler against the diffusers pipelines'
/// images (tests/pipeline_torch.rs). Measured: ≤ 5.1e-5 (DDIM eta 0, 10 steps).
pub const TORCH_SAMPLE_MAX_ABS: f64 = 5e-4;

/// Deterministic pseudo-random values in [-1, 1) (splitmix64), so failures reproduce.
pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0xD1B5_4A32_D192_ED03);
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[allow(unused_imports)]
pub use ddim_wgpu::tensor::{nchw_to_nhwc, nhwc_to_nchw};

/// Asserts rel L2 ≤ `tol` (NaN anywhere fails), reporting max-abs error and its index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    let rel = rel_l2(got, want);
    let (max_abs, at) = max_abs_diff(got, want);
    assert!(
        rel <= tol,
        "{what}: rel L2 {rel:.3e} > {tol:.0e}; max abs {max_abs:.3e} at index {at} \
         (got {:?}, want {:?}); lengths {} vs {}",
        got.get(at),
        want.get(at),
        got.len(),
        want.len()
    );
    eprintln!("[close] {what}: rel L2 {rel:.2e}, max abs {max_abs:.2e}");
    rel
}

/// The small random-weight model of tools/export_pipeline_fixtures.py, with its scheduler.
pub const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pipeline/tiny");

pub fn tiny_pipeline() -> ddim_wgpu::pipeline::Pipeline {
    let dir = std::path::Path::new(TINY);
    let model = ddim_wgpu::model::Model::load(dir).unwrap();
    let cfg = ddim_wgpu::schedule::SchedulerConfig::from_file(
        &dir.join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    ddim_wgpu::pipeline::Pipeline::new(model, cfg).unwrap()
}

/// A model fixture's class labels (`case.json`'s `class_labels`, or with `class_vectors` the
/// identity vectors in `input.safetensors`), or None for an unconditional model.
pub fn fixture_labels(dir: &std::path::Path) -> Option<ddim_wgpu::model::ClassLabels> {
    use ddim_wgpu::model::ClassLabels;
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    if v["class_vectors"].as_bool() == Some(true) {
        let path = dir.join("input.safetensors");
        let t = ddim_wgpu::model::tensor_io::read_tensor(&path, "class_labels").unwrap();
        return Some(ClassLabels::Vectors {
            width: t.shape[1],
            data: t.data,
        });
    }
    v["class_labels"]
        .as_array()
        .map(|a| ClassLabels::Indices(a.iter().map(|l| l.as_u64().unwrap() as u32).collect()))
}

/// Decodes a fixture tensor written by the tools/ exporters: `{"f32le_b64": base64 of
/// little-endian f32, "len": n}`.
pub fn fixture_f32(v: &serde_json::Value) -> Vec<f32> {
    let text = v["f32le_b64"].as_str().expect("f32le_b64");
    let digit = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let n = chunk
            .iter()
            .map(|&c| if c == b'=' { 0 } else { digit(c) })
            .fold(0u32, |acc, d| (acc << 6) | d);
        bytes.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    let out: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        Some(out.len() as u64),
        v["len"].as_u64(),
        "fixture tensor length"
    );
    out
}
