//! An adapter opens and runs a compute shader end to end: upload, dispatch, read back, compare.
//! With `CI=true` a missing Vulkan adapter, or no backend at all, fails it (see tests/common).

mod common;

use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::smoke;
use ddim_wgpu::gpu::Precision;

#[test]
fn axpy_round_trip_on_every_backend() {
    // Not a multiple of the workgroup size: the bounds check on the tail is exercised.
    let n = 70_001usize;
    let x = common::random(n, 1);
    let b = common::random(n, 2);
    let a = 1.5f32;
    let want: Vec<f32> = x.iter().zip(&b).map(|(x, b)| a * x + b).collect();
    common::for_each_backend(|backend, ctx| {
        let xb = ctx
            .tensor_from("x", &x, &[x.len()], Precision::F32)
            .unwrap();
        let bb = ctx
            .tensor_from("b", &b, &[b.len()], Precision::F32)
            .unwrap();
        let yb = ctx.poisoned_tensor("y", &[n], Precision::F32);
        let d = smoke::axpy(ctx, a, &xb, &bb, &yb).expect("building the dispatch");
        run_dispatches(ctx, &[d], 0).expect("running");
        let got = ctx.read_tensor(&yb).expect("reading back");
        // a·x + b is one fused or two rounded operations: allow an ulp or two.
        common::assert_close(&format!("axpy on {backend}"), &got, &want, 1e-6);
    });
}

#[test]
fn pipeline_cache_reuses_compiled_kernels() {
    common::for_each_backend(|_, ctx| {
        let k1 = ctx.kernel(&smoke::spec()).unwrap();
        let before = ctx.pipelines.len();
        let k2 = ctx.kernel(&smoke::spec()).unwrap();
        assert!(std::sync::Arc::ptr_eq(&k1, &k2));
        assert_eq!(ctx.pipelines.len(), before);
    });
}

#[test]
fn bad_shader_is_an_error_not_a_panic() {
    common::for_each_backend(|_, ctx| {
        let spec = ddim_wgpu::gpu::KernelSpec {
            shader: "broken_for_test",
            source: "@compute @workgroup_size(1) fn main() { let x: f32 = undefined_name; }",
            entry: "main",
            bindings: vec![],
        };
        let err = ctx
            .kernel(&spec)
            .err()
            .expect("an invalid shader must fail");
        assert!(format!("{err:#}").contains("broken_for_test"), "{err:#}");
    });
}
