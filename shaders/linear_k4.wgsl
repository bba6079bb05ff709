// Version 2 of linear.wgsl's product, for operands contiguous along k (linear layers x·Wᵀ with
// torch [out, in] weights, and Q·Kᵀ): each invocation owns a 4×4 output tile and walks k four
// at a time with vec4 loads of A rows and B columns, 16 dot products per step (64 multiply-adds
// per 8 loads instead of 16 per 8). Requires K, every row stride, batch stride and offset to be
// multiples of 4 (checked on the host); the epilogue is linear.wgsl's. No workgroup memory.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    inner_count: u32,
    a_m: u32,
    a_k: u32,
    a_outer: u32,
    a_inner: u32,
    b_k: u32,
    b_n: u32,
    b_outer: u32,
    b_inner: u32,
    c_m: u32,
    c_outer: u32,
    c_inner: u32,
    alpha: f32,
    flags: u32,
    a_base: u32,
    b_base: u32,
    c_base: u32,
    out_scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Storage types of A, B and out/residual, as in linear.wgsl (src/gpu/precision.rs rewrites
// these lines for half precision); products accumulate in f32.
alias a_t = f32;
alias b_t = f32;
alias c_t = f32;

const HAS_BIAS: u32 = 1u;
const HAS_RESIDUAL: u32 = 2u;
const SILU_IN: u32 = 4u;
const SILU_OUT: u32 = 8u;
const BIAS_PER_ROW: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<a_t>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<b_t>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<c_t>;
@group(0) @binding(5) var<storage, read_write> out: array<c_t>;

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

fn silu4(v: vec4<f32>) -> vec4<f32> {
    return v / (1.0 + exp(-v));
}

@compute @workgroup_size(16, 16)
fn matmul_k4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let z = gid.z;
    let zo = z / p.inner_count;
    let zi = z % p.inner_count;
    // Element offsets divided by 4: vec4 indices.
    let a_base = (p.a_base + zo * p.a_outer + zi * p.a_inner) / 4u;
    let b_base = (p.b_base + zo * p.b_outer + zi * p.b_inner) / 4u;
    let c_base = p.c_base + zo * p.c_outer + zi * p.c_inner;
    let m0 = gid.y * 4u;
    let n0 = gid.x * 4u;
    if m0 >= p.m || n0 >= p.n {
        return;
    }
    let last_m = p.m - 1u;
    let last_n = p.n - 1u;
    let a_row = p.a_m / 4u;
    let b_col = p.b_n / 4u;
    let r0 = a_base + min(m0, last_m) * a_row;
    let r1 = a_base + min(m0 + 1u, last_m) * a_row;
    let r2 = a_base + min(m0 + 2u, last_m) * a_row;
    let r3 = a_base + min(m0 + 3u, last_m) * a_row;
    let c0 = b_base + min(n0, last_n) * b_col;
    let c1 = b_base + min(n0 + 1u, last_n) * b_col;
    let c2 = b_base + min(n0 + 2u, last_n) * b_col;
    let c3 = b_base + min(n0 + 3u, last_n) * b_col;
    let silu_in = (p.flags & SILU_IN) != 0u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let k4 = p.k / 4u;
    for (var kk = 0u; kk < k4; kk++) {
        var a0 = vec4<f32>(a[r0 + kk]);
        var a1 = vec4<f32>(a[r1 + kk]);
        var a2 = vec4<f32>(a[r2 + kk]);
        var a3 = vec4<f32>(a[r3 + kk]);
        if silu_in {
            a0 = silu4(a0);
            a1 = silu4(a1);
            a2 = silu4(a2);
            a3 = silu4(a3);
        }
        let b0 = vec4<f32>(b[c0 + kk]);
        let b1 = vec4<f32>(b[c1 + kk]);
        let b2 = vec4<f32>(b[c2 + kk]);
        let b3 = vec4<f32>(b[c3 + kk]);
        acc0 += vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
        acc1 += vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
        acc2 += vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
        acc3 += vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
    }
    store_row(c_base, m0, n0, acc0);
    store_row(c_base, m0 + 1u, n0, acc1);
    store_row(c_base, m0 + 2u, n0, acc2);
    store_row(c_base, m0 + 3u, n0, acc3);
}

fn store_row(c_base: u32, m: u32, n0: u32, acc: vec4<f32>) {
    if m >= p.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + j;
        if n < p.n {
            var v = p.alpha * acc[j];
            if (p.flags & HAS_BIAS) != 0u {
                v += bias[select(n, m, (p.flags & BIAS_PER_ROW) != 0u)];
            }
            if (p.flags & SILU_OUT) != 0u {
                v = silu(v);
            }
            let o = c_base + m * p.c_m + n;
            if (p.flags & HAS_RESIDUAL) != 0u {
                v += f32(residual[o]);
            }
            out[o] = c_t(v * p.out_scale);
        }
    }
}
