// Batched, strided matrix product with a fused epilogue:
//   out[z][m][n] = (silu_out?( alpha * sum_k silu_in?(A[z][m][k]) * B[z][k][n] + bias[n or m] )
//                   + residual[z][m][n]) * out_scale
// Strides make one kernel serve every GEMM outside the convolutions:
//   linear layers   y = x W^T + b   (A = x [M,K]; B[k][n] = W[n][k], i.e. b_k = 1, b_n = K)
//   attention       S = Q K^T * scale and O = P V, per (batch, head) with z = outer * inner_count + inner
// Version 1 (barrier-free, for every adapter): each invocation owns a 4x4 register tile of the
// output, loads are scalar with indices clamped in range (no branches in the k loop), and
// nothing lives in workgroup memory. Out-of-range rows and columns are computed but not stored.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    inner_count: u32,   // batch index z splits into (z / inner_count, z % inner_count)
    // A element (z, m, k) = A[a_off(z) + m * a_m + k * a_k]
    a_m: u32,
    a_k: u32,
    a_outer: u32,
    a_inner: u32,
    // B element (z, k, n) = B[b_off(z) + k * b_k + n * b_n]
    b_k: u32,
    b_n: u32,
    b_outer: u32,
    b_inner: u32,
    // out and residual element (z, m, n) = out[c_off(z) + m * c_m + n]
    c_m: u32,
    c_outer: u32,
    c_inner: u32,
    alpha: f32,
    flags: u32,         // bit 0: bias, 1: residual, 2: SiLU on A, 3: SiLU on the output, 4: bias by row
    // Element offsets added to every A, B and out/residual index (sub-batches of a big tensor).
    a_base: u32,
    b_base: u32,
    c_base: u32,
    out_scale: f32,     // 1 / rescale_output_factor of an attention block
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Storage types of A, B and out/residual: f32, or f16 in a half-precision plan
// (src/gpu/precision.rs rewrites these lines). Products accumulate in f32 either way.
alias a_t = f32;
alias b_t = f32;
alias c_t = f32;

const HAS_BIAS: u32 = 1u;
const HAS_RESIDUAL: u32 = 2u;
const SILU_IN: u32 = 4u;
const SILU_OUT: u32 = 8u;
const BIAS_PER_ROW: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<a_t>;
@group(0) @binding(2) var<storage, read> b: array<b_t>;
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
fn matmul_reg4x4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let z = gid.z;
    let zo = z / p.inner_count;
    let zi = z % p.inner_count;
    let a_base = p.a_base + zo * p.a_outer + zi * p.a_inner;
    let b_base = p.b_base + zo * p.b_outer + zi * p.b_inner;
    let c_base = p.c_base + zo * p.c_outer + zi * p.c_inner;
    let m0 = gid.y * 4u;
    let n0 = gid.x * 4u;
    if m0 >= p.m || n0 >= p.n {
        return;
    }
    // Clamp row and column indices so every load is in range; results beyond M or N are dropped.
    let last_m = p.m - 1u;
    let last_n = p.n - 1u;
    let ar = vec4<u32>(
        a_base + min(m0, last_m) * p.a_m,
        a_base + min(m0 + 1u, last_m) * p.a_m,
        a_base + min(m0 + 2u, last_m) * p.a_m,
        a_base + min(m0 + 3u, last_m) * p.a_m,
    );
    let bc = vec4<u32>(
        b_base + min(n0, last_n) * p.b_n,
        b_base + min(n0 + 1u, last_n) * p.b_n,
        b_base + min(n0 + 2u, last_n) * p.b_n,
        b_base + min(n0 + 3u, last_n) * p.b_n,
    );
    let silu_in = (p.flags & SILU_IN) != 0u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let ao = kk * p.a_k;
        var av = vec4<f32>(f32(a[ar.x + ao]), f32(a[ar.y + ao]), f32(a[ar.z + ao]), f32(a[ar.w + ao]));
        if silu_in {
            av = silu4(av);
        }
        let bo = kk * p.b_k;
        let bv = vec4<f32>(f32(b[bc.x + bo]), f32(b[bc.y + bo]), f32(b[bc.z + bo]), f32(b[bc.w + bo]));
        acc0 = fma(vec4<f32>(av.x), bv, acc0);
        acc1 = fma(vec4<f32>(av.y), bv, acc1);
        acc2 = fma(vec4<f32>(av.z), bv, acc2);
        acc3 = fma(vec4<f32>(av.w), bv, acc3);
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

// Version 3 (real GPUs): the same product through workgroup memory. A workgroup computes a
// 64×64 output tile; per 16-wide k slice all 256 invocations cooperatively stage A (64×16) and
// B (16×64) in workgroup memory (8 KiB; out-of-range elements read as 0), then each computes
// its 4×4 outputs from the staged tiles. Two barriers per k slice: slow on lavapipe.
const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> tile_a: array<array<f32, 16>, 64>;  // [m][k]
var<workgroup> tile_b: array<array<f32, 64>, 16>;  // [k][n]

@compute @workgroup_size(16, 16)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let z = wid.z;
    let zo = z / p.inner_count;
    let zi = z % p.inner_count;
    let a_base = p.a_base + zo * p.a_outer + zi * p.a_inner;
    let b_base = p.b_base + zo * p.b_outer + zi * p.b_inner;
    let c_base = p.c_base + zo * p.c_outer + zi * p.c_inner;
    let tile_m0 = wid.y * TM;
    let tile_n0 = wid.x * TN;
    let flat = lid.y * 16u + lid.x;
    let silu_in = (p.flags & SILU_IN) != 0u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        // Stage: each invocation loads 4 elements of A and 4 of B.
        for (var r = 0u; r < 4u; r++) {
            let e = flat + r * 256u;
            let am = e / TK;
            let ak = e % TK;
            let gm = tile_m0 + am;
            let gk = k0 + ak;
            var av = 0.0;
            if gm < p.m && gk < p.k {
                av = f32(a[a_base + gm * p.a_m + gk * p.a_k]);
                if silu_in {
                    av = silu(av);
                }
            }
            tile_a[am][ak] = av;
            let bk = e / TN;
            let bn = e % TN;
            let gk2 = k0 + bk;
            let gn = tile_n0 + bn;
            var bv = 0.0;
            if gk2 < p.k && gn < p.n {
                bv = f32(b[b_base + gk2 * p.b_k + gn * p.b_n]);
            }
            tile_b[bk][bn] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let bv = vec4<f32>(
                tile_b[kk][lid.x * 4u],
                tile_b[kk][lid.x * 4u + 1u],
                tile_b[kk][lid.x * 4u + 2u],
                tile_b[kk][lid.x * 4u + 3u],
            );
            acc0 = fma(vec4<f32>(tile_a[lid.y * 4u][kk]), bv, acc0);
            acc1 = fma(vec4<f32>(tile_a[lid.y * 4u + 1u][kk]), bv, acc1);
            acc2 = fma(vec4<f32>(tile_a[lid.y * 4u + 2u][kk]), bv, acc2);
            acc3 = fma(vec4<f32>(tile_a[lid.y * 4u + 3u][kk]), bv, acc3);
        }
        workgroupBarrier();
    }
    let m0 = tile_m0 + lid.y * 4u;
    let n0 = tile_n0 + lid.x * 4u;
    if n0 >= p.n {
        return;
    }
    store_row(c_base, m0, n0, acc0);
    store_row(c_base, m0 + 1u, n0, acc1);
    store_row(c_base, m0 + 2u, n0, acc2);
    store_row(c_base, m0 + 3u, n0, acc3);
}
