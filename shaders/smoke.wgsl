// Smoke test kernel: y[i] = a * x[i] + b[i], used to check that an adapter runs compute at all.

struct Params {
    n: u32,
    a: f32,
    _pad0: u32, // padding to 16 bytes, the size of the host's smoke::Params
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 64u + gid.x;
    if (i < params.n) {
        y[i] = params.a * x[i] + b[i];
    }
}
