// conv2d as an implicit GEMM over NHWC activations: M = B·OH·OW output pixels, N = Cout,
// K = KH·KW·Cin with k = (ky·KW + kx)·Cin + ci. Weights are pre-transposed to K-major
// [KH][KW][Cin][Cout4] (Cout padded with zeros to a multiple of 4) so a weight row is read as vec4.
//
// Loader: the logical input may be a nearest 2× upsample of the stored one (read at (y/2, x/2)),
// and its channels may come from two buffers (ci < c1 from `x_a`, the rest from `x_b`): the
// decoder's upsample and skip concatenation cost no extra pass.
// Epilogue: out = (acc + bias[n] + chan_add[b, n]? + residual[m, n]?) · out_scale.
//
// Two variants, one interface (chosen per adapter, see src/gpu/kernels/conv2d.rs):
//   register — no workgroup memory and no barriers, for CPU adapters (lavapipe), where barriers
//              are slow: conv_rows16 / conv_rows8 for 3×3 stride-1 convolutions (a row of 16 or 8
//              pixels × 4 channels per invocation, input columns shared between neighbours), and
//              conv_reg for everything else (4 pixels × 8 channels per invocation).
//   tiled    — conv_tiled: workgroup-memory tiled, a 64×64 output tile per 16×16 workgroup, K in
//              steps of 16, each invocation 4×4 outputs. For real GPUs.

struct Params {
    batch: u32,
    src_h: u32,      // stored input height (before the optional upsample)
    src_w: u32,
    c1: u32,         // channels read from x_a
    c2: u32,         // channels read from x_b (0 without concatenation)
    out_h: u32,
    out_w: u32,
    cout: u32,
    cout_v: u32,     // Cout4 / 4: vec4 columns per weight row
    kh: u32,
    kw: u32,
    stride: u32,
    pad_top: u32,
    pad_left: u32,
    up_shift: u32,   // 1: nearest 2× upsample of the input, 0: none
    flags: u32,      // bit 0: chan_add, bit 1: residual
    out_scale: f32,
    m_total: u32,    // B·OH·OW
    m_groups_y: u32, // workgroups along grid y; grid z extends M past 65535 groups
    _pad: u32,
}

const HAS_CHAN_ADD: u32 = 1u;
const HAS_RESIDUAL: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x_a: array<f32>;
@group(0) @binding(2) var<storage, read> x_b: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> chan_add: array<f32>;
@group(0) @binding(6) var<storage, read> residual: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

// Where an output pixel's receptive field starts, in logical (upsampled) input coordinates.
struct Pixel {
    b: u32,
    iy0: i32,
    ix0: i32,
    valid: bool,
}

fn pixel(m: u32) -> Pixel {
    var px: Pixel;
    px.valid = m < p.m_total;
    let mm = select(0u, m, px.valid);
    let ox = mm % p.out_w;
    let t = mm / p.out_w;
    let oy = t % p.out_h;
    px.b = t / p.out_h;
    px.iy0 = i32(oy * p.stride) - i32(p.pad_top);
    px.ix0 = i32(ox * p.stride) - i32(p.pad_left);
    return px;
}

// Element offset of pixel (b, iy, ix) in the stored input, in units of "pixels" (multiply by the
// buffer's channel count), or -1 when (iy, ix) falls in the padding.
fn src_pixel(b: u32, iy: i32, ix: i32) -> i32 {
    let in_h = i32(p.src_h << p.up_shift);
    let in_w = i32(p.src_w << p.up_shift);
    if (iy < 0 || ix < 0 || iy >= in_h || ix >= in_w) {
        return -1;
    }
    let sy = u32(iy) >> p.up_shift;
    let sx = u32(ix) >> p.up_shift;
    return i32((b * p.src_h + sy) * p.src_w + sx);
}

// One input value for implicit-GEMM column k of a pixel; 0 in the padding.
fn load_x(px: Pixel, k: u32) -> f32 {
    let cin = p.c1 + p.c2;
    let ci = k % cin;
    let tap = k / cin;
    let kx = tap % p.kw;
    let ky = tap / p.kw;
    let s = src_pixel(px.b, px.iy0 + i32(ky), px.ix0 + i32(kx));
    if (!px.valid || s < 0 || tap >= p.kh * p.kw) {
        return 0.0;
    }
    if (ci < p.c1) {
        return x_a[u32(s) * p.c1 + ci];
    }
    return x_b[u32(s) * p.c2 + (ci - p.c1)];
}

fn epilogue(m: u32, px: Pixel, nv: u32, acc: vec4<f32>) {
    if (!px.valid || nv >= p.cout_v) {
        return;
    }
    var v = acc + bias[nv];
    let n0 = nv * 4u;
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + j;
        if (n < p.cout) {
            var o = v[j];
            if ((p.flags & HAS_CHAN_ADD) != 0u) {
                o += chan_add[px.b * p.cout + n];
            }
            if ((p.flags & HAS_RESIDUAL) != 0u) {
                o += residual[m * p.cout + n];
            }
            out[m * p.cout + n] = o * p.out_scale;
        }
    }
}

fn m_group(wid: vec3<u32>) -> u32 {
    return wid.z * p.m_groups_y + wid.y;
}

// ---- register-tiled variant --------------------------------------------------------------
// The 64 invocations of a workgroup share one slice of 8 output channels (workgroup-uniform weight
// addresses) and take 64 consecutive pixels, 4 times over; each keeps 4 pixels × 8 channels in
// registers. Measured on lavapipe (llvmpipe 22.3, 128→128 3×3, 32×32, batch 8): 4×8 beat 2×16,
// 4×4, 2×8 and 8×8 (register spills), and unrolling the channel loop by 4 did not help.

const REG_TM: u32 = 4u;  // pixels per invocation
const REG_TNV: u32 = 2u; // vec4 columns per invocation (and per workgroup)
const REG_WG: u32 = 64u;

@compute @workgroup_size(64, 1, 1)
fn conv_reg(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let nv0 = wid.x * REG_TNV;
    // Columns past Cout read a clamped (valid) column; only their store is skipped.
    let col0 = min(nv0 + 0u, p.cout_v - 1u);
    let col1 = min(nv0 + 1u, p.cout_v - 1u);
    let m_base = m_group(wid) * (REG_WG * REG_TM) + lid.x;
    // No barriers here, so an invocation without any valid pixel may leave at once.
    if (m_base >= p.m_total) {
        return;
    }

    var px: array<Pixel, REG_TM>;
    for (var i = 0u; i < REG_TM; i++) {
        px[i] = pixel(m_base + i * REG_WG);
    }
    // One accumulator array per vec4 column, indexed by pixel (plain names keep them in registers).
    var acc0: array<vec4<f32>, REG_TM>;
    var acc1: array<vec4<f32>, REG_TM>;
    let cin = p.c1 + p.c2;
    for (var ky = 0u; ky < p.kh; ky++) {
        for (var kx = 0u; kx < p.kw; kx++) {
            // Per pixel: offsets of this tap in x_a and x_b, and whether it is inside the image.
            var off_a: array<u32, REG_TM>;
            var off_b: array<u32, REG_TM>;
            var inside: array<bool, REG_TM>;
            for (var i = 0u; i < REG_TM; i++) {
                let s = src_pixel(px[i].b, px[i].iy0 + i32(ky), px[i].ix0 + i32(kx));
                inside[i] = px[i].valid && s >= 0;
                let su = select(0u, u32(s), inside[i]);
                off_a[i] = su * p.c1;
                off_b[i] = su * p.c2;
            }
            let krow = (ky * p.kw + kx) * cin;
            for (var ci = 0u; ci < p.c1; ci++) {
                let wrow = (krow + ci) * p.cout_v;
                let w0 = w[wrow + col0];
                let w1 = w[wrow + col1];
                for (var i = 0u; i < REG_TM; i++) {
                    let a = select(0.0, x_a[off_a[i] + ci], inside[i]);
                    acc0[i] += a * w0;
                    acc1[i] += a * w1;
                }
            }
            for (var ci = 0u; ci < p.c2; ci++) {
                let wrow = (krow + p.c1 + ci) * p.cout_v;
                let w0 = w[wrow + col0];
                let w1 = w[wrow + col1];
                for (var i = 0u; i < REG_TM; i++) {
                    let a = select(0.0, x_b[off_b[i] + ci], inside[i]);
                    acc0[i] += a * w0;
                    acc1[i] += a * w1;
                }
            }
        }
    }
    for (var i = 0u; i < REG_TM; i++) {
        epilogue(m_base + i * REG_WG, px[i], nv0 + 0u, acc0[i]);
        epilogue(m_base + i * REG_WG, px[i], nv0 + 1u, acc1[i]);
    }
}

// ---- register-tiled rows: 3×3, stride 1 ---------------------------------------------
// Each invocation computes TP consecutive pixels of one output row × 4 channels (the
// workgroup's vec4 column, a uniform weight address). Neighbouring pixels share input
// columns, so each (ky, ci) reads TP + 2 input values instead of 3·TP. TP = 16 for rows of
// 16 pixels or more, 8 below (lavapipe, 128→128 at 32×32: TP 6 / 8 / 16 / 32 gave 5.7 / 7.2 /
// 8.5 / 9.2 GFLOP per CPU-second; the 4×8 general kernel 5.4). Generated code: the unrolled
// names keep everything in registers (indexed private arrays were 2× slower).

const ROW_WG: u32 = 64u;

@compute @workgroup_size(64, 1, 1)
fn conv_rows8(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let nv = wid.x;
    let col = min(nv, p.cout_v - 1u);
    let segs = (p.out_w + 8u - 1u) / 8u;
    let seg_total = p.batch * p.out_h * segs;
    let sidx = m_group(wid) * ROW_WG + lid.x;
    let valid = sidx < seg_total;
    // No barriers here, so idle invocations may leave at once (on a CPU adapter a SIMD
    // batch of idle lanes then costs nothing: small layers leave many idle).
    if (!valid) {
        return;
    }
    let s = select(0u, sidx, valid);
    let ox0 = (s % segs) * 8u;
    let row = s / segs; // b * out_h + oy
    let oy = row % p.out_h;
    let b = row / p.out_h;
    let cin = p.c1 + p.c2;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    for (var ky = 0u; ky < 3u; ky++) {
        let iy = i32(oy + ky) - i32(p.pad_top);
        let s0 = src_pixel(b, iy, i32(ox0 + 0u) - i32(p.pad_left));
        let in0 = valid && s0 >= 0;
        let o0 = select(0u, u32(s0), in0);
        let s1 = src_pixel(b, iy, i32(ox0 + 1u) - i32(p.pad_left));
        let in1 = valid && s1 >= 0;
        let o1 = select(0u, u32(s1), in1);
        let s2 = src_pixel(b, iy, i32(ox0 + 2u) - i32(p.pad_left));
        let in2 = valid && s2 >= 0;
        let o2 = select(0u, u32(s2), in2);
        let s3 = src_pixel(b, iy, i32(ox0 + 3u) - i32(p.pad_left));
        let in3 = valid && s3 >= 0;
        let o3 = select(0u, u32(s3), in3);
        let s4 = src_pixel(b, iy, i32(ox0 + 4u) - i32(p.pad_left));
        let in4 = valid && s4 >= 0;
        let o4 = select(0u, u32(s4), in4);
        let s5 = src_pixel(b, iy, i32(ox0 + 5u) - i32(p.pad_left));
        let in5 = valid && s5 >= 0;
        let o5 = select(0u, u32(s5), in5);
        let s6 = src_pixel(b, iy, i32(ox0 + 6u) - i32(p.pad_left));
        let in6 = valid && s6 >= 0;
        let o6 = select(0u, u32(s6), in6);
        let s7 = src_pixel(b, iy, i32(ox0 + 7u) - i32(p.pad_left));
        let in7 = valid && s7 >= 0;
        let o7 = select(0u, u32(s7), in7);
        let s8 = src_pixel(b, iy, i32(ox0 + 8u) - i32(p.pad_left));
        let in8 = valid && s8 >= 0;
        let o8 = select(0u, u32(s8), in8);
        let s9 = src_pixel(b, iy, i32(ox0 + 9u) - i32(p.pad_left));
        let in9 = valid && s9 >= 0;
        let o9 = select(0u, u32(s9), in9);
        for (var ci = 0u; ci < p.c1; ci++) {
            let k0 = (ky * 3u * cin + 0u + ci) * p.cout_v + col;
            let w0 = w[k0];
            let w1 = w[k0 + cin * p.cout_v];
            let w2 = w[k0 + 2u * cin * p.cout_v];
            let v0 = select(0.0, x_a[o0 * p.c1 + ci], in0);
            let v1 = select(0.0, x_a[o1 * p.c1 + ci], in1);
            let v2 = select(0.0, x_a[o2 * p.c1 + ci], in2);
            let v3 = select(0.0, x_a[o3 * p.c1 + ci], in3);
            let v4 = select(0.0, x_a[o4 * p.c1 + ci], in4);
            let v5 = select(0.0, x_a[o5 * p.c1 + ci], in5);
            let v6 = select(0.0, x_a[o6 * p.c1 + ci], in6);
            let v7 = select(0.0, x_a[o7 * p.c1 + ci], in7);
            let v8 = select(0.0, x_a[o8 * p.c1 + ci], in8);
            let v9 = select(0.0, x_a[o9 * p.c1 + ci], in9);
            acc0 += v0 * w0 + v1 * w1 + v2 * w2;
            acc1 += v1 * w0 + v2 * w1 + v3 * w2;
            acc2 += v2 * w0 + v3 * w1 + v4 * w2;
            acc3 += v3 * w0 + v4 * w1 + v5 * w2;
            acc4 += v4 * w0 + v5 * w1 + v6 * w2;
            acc5 += v5 * w0 + v6 * w1 + v7 * w2;
            acc6 += v6 * w0 + v7 * w1 + v8 * w2;
            acc7 += v7 * w0 + v8 * w1 + v9 * w2;
        }
        for (var ci = 0u; ci < p.c2; ci++) {
            let k0 = (ky * 3u * cin + p.c1 + ci) * p.cout_v + col;
            let w0 = w[k0];
            let w1 = w[k0 + cin * p.cout_v];
            let w2 = w[k0 + 2u * cin * p.cout_v];
            let v0 = select(0.0, x_b[o0 * p.c2 + ci], in0);
            let v1 = select(0.0, x_b[o1 * p.c2 + ci], in1);
            let v2 = select(0.0, x_b[o2 * p.c2 + ci], in2);
            let v3 = select(0.0, x_b[o3 * p.c2 + ci], in3);
            let v4 = select(0.0, x_b[o4 * p.c2 + ci], in4);
            let v5 = select(0.0, x_b[o5 * p.c2 + ci], in5);
            let v6 = select(0.0, x_b[o6 * p.c2 + ci], in6);
            let v7 = select(0.0, x_b[o7 * p.c2 + ci], in7);
            let v8 = select(0.0, x_b[o8 * p.c2 + ci], in8);
            let v9 = select(0.0, x_b[o9 * p.c2 + ci], in9);
            acc0 += v0 * w0 + v1 * w1 + v2 * w2;
            acc1 += v1 * w0 + v2 * w1 + v3 * w2;
            acc2 += v2 * w0 + v3 * w1 + v4 * w2;
            acc3 += v3 * w0 + v4 * w1 + v5 * w2;
            acc4 += v4 * w0 + v5 * w1 + v6 * w2;
            acc5 += v5 * w0 + v6 * w1 + v7 * w2;
            acc6 += v6 * w0 + v7 * w1 + v8 * w2;
            acc7 += v7 * w0 + v8 * w1 + v9 * w2;
        }
    }
    let m0 = row * p.out_w + ox0;
    var px = pixel(m0);
    px = pixel(m0 + 0u);
    px.valid = valid && ox0 + 0u < p.out_w;
    epilogue(m0 + 0u, px, nv, acc0);
    px = pixel(m0 + 1u);
    px.valid = valid && ox0 + 1u < p.out_w;
    epilogue(m0 + 1u, px, nv, acc1);
    px = pixel(m0 + 2u);
    px.valid = valid && ox0 + 2u < p.out_w;
    epilogue(m0 + 2u, px, nv, acc2);
    px = pixel(m0 + 3u);
    px.valid = valid && ox0 + 3u < p.out_w;
    epilogue(m0 + 3u, px, nv, acc3);
    px = pixel(m0 + 4u);
    px.valid = valid && ox0 + 4u < p.out_w;
    epilogue(m0 + 4u, px, nv, acc4);
    px = pixel(m0 + 5u);
    px.valid = valid && ox0 + 5u < p.out_w;
    epilogue(m0 + 5u, px, nv, acc5);
    px = pixel(m0 + 6u);
    px.valid = valid && ox0 + 6u < p.out_w;
    epilogue(m0 + 6u, px, nv, acc6);
    px = pixel(m0 + 7u);
    px.valid = valid && ox0 + 7u < p.out_w;
    epilogue(m0 + 7u, px, nv, acc7);
}
@compute @workgroup_size(64, 1, 1)
fn conv_rows16(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let nv = wid.x;
    let col = min(nv, p.cout_v - 1u);
    let segs = (p.out_w + 16u - 1u) / 16u;
    let seg_total = p.batch * p.out_h * segs;
    let sidx = m_group(wid) * ROW_WG + lid.x;
    let valid = sidx < seg_total;
    // No barriers here, so idle invocations may leave at once (on a CPU adapter a SIMD
    // batch of idle lanes then costs nothing: small layers leave many idle).
    if (!valid) {
        return;
    }
    let s = select(0u, sidx, valid);
    let ox0 = (s % segs) * 16u;
    let row = s / segs; // b * out_h + oy
    let oy = row % p.out_h;
    let b = row / p.out_h;
    let cin = p.c1 + p.c2;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    var acc8 = vec4<f32>(0.0);
    var acc9 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0);
    var acc11 = vec4<f32>(0.0);
    var acc12 = vec4<f32>(0.0);
    var acc13 = vec4<f32>(0.0);
    var acc14 = vec4<f32>(0.0);
    var acc15 = vec4<f32>(0.0);
    for (var ky = 0u; ky < 3u; ky++) {
        let iy = i32(oy + ky) - i32(p.pad_top);
        let s0 = src_pixel(b, iy, i32(ox0 + 0u) - i32(p.pad_left));
        let in0 = valid && s0 >= 0;
        let o0 = select(0u, u32(s0), in0);
        let s1 = src_pixel(b, iy, i32(ox0 + 1u) - i32(p.pad_left));
        let in1 = valid && s1 >= 0;
        let o1 = select(0u, u32(s1), in1);
        let s2 = src_pixel(b, iy, i32(ox0 + 2u) - i32(p.pad_left));
        let in2 = valid && s2 >= 0;
        let o2 = select(0u, u32(s2), in2);
        let s3 = src_pixel(b, iy, i32(ox0 + 3u) - i32(p.pad_left));
        let in3 = valid && s3 >= 0;
        let o3 = select(0u, u32(s3), in3);
        let s4 = src_pixel(b, iy, i32(ox0 + 4u) - i32(p.pad_left));
        let in4 = valid && s4 >= 0;
        let o4 = select(0u, u32(s4), in4);
        let s5 = src_pixel(b, iy, i32(ox0 + 5u) - i32(p.pad_left));
        let in5 = valid && s5 >= 0;
        let o5 = select(0u, u32(s5), in5);
        let s6 = src_pixel(b, iy, i32(ox0 + 6u) - i32(p.pad_left));
        let in6 = valid && s6 >= 0;
        let o6 = select(0u, u32(s6), in6);
        let s7 = src_pixel(b, iy, i32(ox0 + 7u) - i32(p.pad_left));
        let in7 = valid && s7 >= 0;
        let o7 = select(0u, u32(s7), in7);
        let s8 = src_pixel(b, iy, i32(ox0 + 8u) - i32(p.pad_left));
        let in8 = valid && s8 >= 0;
        let o8 = select(0u, u32(s8), in8);
        let s9 = src_pixel(b, iy, i32(ox0 + 9u) - i32(p.pad_left));
        let in9 = valid && s9 >= 0;
        let o9 = select(0u, u32(s9), in9);
        let s10 = src_pixel(b, iy, i32(ox0 + 10u) - i32(p.pad_left));
        let in10 = valid && s10 >= 0;
        let o10 = select(0u, u32(s10), in10);
        let s11 = src_pixel(b, iy, i32(ox0 + 11u) - i32(p.pad_left));
        let in11 = valid && s11 >= 0;
        let o11 = select(0u, u32(s11), in11);
        let s12 = src_pixel(b, iy, i32(ox0 + 12u) - i32(p.pad_left));
        let in12 = valid && s12 >= 0;
        let o12 = select(0u, u32(s12), in12);
        let s13 = src_pixel(b, iy, i32(ox0 + 13u) - i32(p.pad_left));
        let in13 = valid && s13 >= 0;
        let o13 = select(0u, u32(s13), in13);
        let s14 = src_pixel(b, iy, i32(ox0 + 14u) - i32(p.pad_left));
        let in14 = valid && s14 >= 0;
        let o14 = select(0u, u32(s14), in14);
        let s15 = src_pixel(b, iy, i32(ox0 + 15u) - i32(p.pad_left));
        let in15 = valid && s15 >= 0;
        let o15 = select(0u, u32(s15), in15);
        let s16 = src_pixel(b, iy, i32(ox0 + 16u) - i32(p.pad_left));
        let in16 = valid && s16 >= 0;
        let o16 = select(0u, u32(s16), in16);
        let s17 = src_pixel(b, iy, i32(ox0 + 17u) - i32(p.pad_left));
        let in17 = valid && s17 >= 0;
        let o17 = select(0u, u32(s17), in17);
        for (var ci = 0u; ci < p.c1; ci++) {
            let k0 = (ky * 3u * cin + 0u + ci) * p.cout_v + col;
            let w0 = w[k0];
            let w1 = w[k0 + cin * p.cout_v];
            let w2 = w[k0 + 2u * cin * p.cout_v];
            let v0 = select(0.0, x_a[o0 * p.c1 + ci], in0);
            let v1 = select(0.0, x_a[o1 * p.c1 + ci], in1);
            let v2 = select(0.0, x_a[o2 * p.c1 + ci], in2);
            let v3 = select(0.0, x_a[o3 * p.c1 + ci], in3);
            let v4 = select(0.0, x_a[o4 * p.c1 + ci], in4);
            let v5 = select(0.0, x_a[o5 * p.c1 + ci], in5);
            let v6 = select(0.0, x_a[o6 * p.c1 + ci], in6);
            let v7 = select(0.0, x_a[o7 * p.c1 + ci], in7);
            let v8 = select(0.0, x_a[o8 * p.c1 + ci], in8);
            let v9 = select(0.0, x_a[o9 * p.c1 + ci], in9);
            let v10 = select(0.0, x_a[o10 * p.c1 + ci], in10);
            let v11 = select(0.0, x_a[o11 * p.c1 + ci], in11);
            let v12 = select(0.0, x_a[o12 * p.c1 + ci], in12);
            let v13 = select(0.0, x_a[o13 * p.c1 + ci], in13);
            let v14 = select(0.0, x_a[o14 * p.c1 + ci], in14);
            let v15 = select(0.0, x_a[o15 * p.c1 + ci], in15);
            let v16 = select(0.0, x_a[o16 * p.c1 + ci], in16);
            let v17 = select(0.0, x_a[o17 * p.c1 + ci], in17);
            acc0 += v0 * w0 + v1 * w1 + v2 * w2;
            acc1 += v1 * w0 + v2 * w1 + v3 * w2;
            acc2 += v2 * w0 + v3 * w1 + v4 * w2;
            acc3 += v3 * w0 + v4 * w1 + v5 * w2;
            acc4 += v4 * w0 + v5 * w1 + v6 * w2;
            acc5 += v5 * w0 + v6 * w1 + v7 * w2;
            acc6 += v6 * w0 + v7 * w1 + v8 * w2;
            acc7 += v7 * w0 + v8 * w1 + v9 * w2;
            acc8 += v8 * w0 + v9 * w1 + v10 * w2;
            acc9 += v9 * w0 + v10 * w1 + v11 * w2;
            acc10 += v10 * w0 + v11 * w1 + v12 * w2;
            acc11 += v11 * w0 + v12 * w1 + v13 * w2;
            acc12 += v12 * w0 + v13 * w1 + v14 * w2;
            acc13 += v13 * w0 + v14 * w1 + v15 * w2;
            acc14 += v14 * w0 + v15 * w1 + v16 * w2;
            acc15 += v15 * w0 + v16 * w1 + v17 * w2;
        }
        for (var ci = 0u; ci < p.c2; ci++) {
            let k0 = (ky * 3u * cin + p.c1 + ci) * p.cout_v + col;
            let w0 = w[k0];
            let w1 = w[k0 + cin * p.cout_v];
            let w2 = w[k0 + 2u * cin * p.cout_v];
            let v0 = select(0.0, x_b[o0 * p.c2 + ci], in0);
            let v1 = select(0.0, x_b[o1 * p.c2 + ci], in1);
            let v2 = select(0.0, x_b[o2 * p.c2 + ci], in2);
            let v3 = select(0.0, x_b[o3 * p.c2 + ci], in3);
            let v4 = select(0.0, x_b[o4 * p.c2 + ci], in4);
            let v5 = select(0.0, x_b[o5 * p.c2 + ci], in5);
            let v6 = select(0.0, x_b[o6 * p.c2 + ci], in6);
            let v7 = select(0.0, x_b[o7 * p.c2 + ci], in7);
            let v8 = select(0.0, x_b[o8 * p.c2 + ci], in8);
            let v9 = select(0.0, x_b[o9 * p.c2 + ci], in9);
            let v10 = select(0.0, x_b[o10 * p.c2 + ci], in10);
            let v11 = select(0.0, x_b[o11 * p.c2 + ci], in11);
            let v12 = select(0.0, x_b[o12 * p.c2 + ci], in12);
            let v13 = select(0.0, x_b[o13 * p.c2 + ci], in13);
            let v14 = select(0.0, x_b[o14 * p.c2 + ci], in14);
            let v15 = select(0.0, x_b[o15 * p.c2 + ci], in15);
            let v16 = select(0.0, x_b[o16 * p.c2 + ci], in16);
            let v17 = select(0.0, x_b[o17 * p.c2 + ci], in17);
            acc0 += v0 * w0 + v1 * w1 + v2 * w2;
            acc1 += v1 * w0 + v2 * w1 + v3 * w2;
            acc2 += v2 * w0 + v3 * w1 + v4 * w2;
            acc3 += v3 * w0 + v4 * w1 + v5 * w2;
            acc4 += v4 * w0 + v5 * w1 + v6 * w2;
            acc5 += v5 * w0 + v6 * w1 + v7 * w2;
            acc6 += v6 * w0 + v7 * w1 + v8 * w2;
            acc7 += v7 * w0 + v8 * w1 + v9 * w2;
            acc8 += v8 * w0 + v9 * w1 + v10 * w2;
            acc9 += v9 * w0 + v10 * w1 + v11 * w2;
            acc10 += v10 * w0 + v11 * w1 + v12 * w2;
            acc11 += v11 * w0 + v12 * w1 + v13 * w2;
            acc12 += v12 * w0 + v13 * w1 + v14 * w2;
            acc13 += v13 * w0 + v14 * w1 + v15 * w2;
            acc14 += v14 * w0 + v15 * w1 + v16 * w2;
            acc15 += v15 * w0 + v16 * w1 + v17 * w2;
        }
    }
    let m0 = row * p.out_w + ox0;
    var px = pixel(m0);
    px = pixel(m0 + 0u);
    px.valid = valid && ox0 + 0u < p.out_w;
    epilogue(m0 + 0u, px, nv, acc0);
    px = pixel(m0 + 1u);
    px.valid = valid && ox0 + 1u < p.out_w;
    epilogue(m0 + 1u, px, nv, acc1);
    px = pixel(m0 + 2u);
    px.valid = valid && ox0 + 2u < p.out_w;
    epilogue(m0 + 2u, px, nv, acc2);
    px = pixel(m0 + 3u);
    px.valid = valid && ox0 + 3u < p.out_w;
    epilogue(m0 + 3u, px, nv, acc3);
    px = pixel(m0 + 4u);
    px.valid = valid && ox0 + 4u < p.out_w;
    epilogue(m0 + 4u, px, nv, acc4);
    px = pixel(m0 + 5u);
    px.valid = valid && ox0 + 5u < p.out_w;
    epilogue(m0 + 5u, px, nv, acc5);
    px = pixel(m0 + 6u);
    px.valid = valid && ox0 + 6u < p.out_w;
    epilogue(m0 + 6u, px, nv, acc6);
    px = pixel(m0 + 7u);
    px.valid = valid && ox0 + 7u < p.out_w;
    epilogue(m0 + 7u, px, nv, acc7);
    px = pixel(m0 + 8u);
    px.valid = valid && ox0 + 8u < p.out_w;
    epilogue(m0 + 8u, px, nv, acc8);
    px = pixel(m0 + 9u);
    px.valid = valid && ox0 + 9u < p.out_w;
    epilogue(m0 + 9u, px, nv, acc9);
    px = pixel(m0 + 10u);
    px.valid = valid && ox0 + 10u < p.out_w;
    epilogue(m0 + 10u, px, nv, acc10);
    px = pixel(m0 + 11u);
    px.valid = valid && ox0 + 11u < p.out_w;
    epilogue(m0 + 11u, px, nv, acc11);
    px = pixel(m0 + 12u);
    px.valid = valid && ox0 + 12u < p.out_w;
    epilogue(m0 + 12u, px, nv, acc12);
    px = pixel(m0 + 13u);
    px.valid = valid && ox0 + 13u < p.out_w;
    epilogue(m0 + 13u, px, nv, acc13);
    px = pixel(m0 + 14u);
    px.valid = valid && ox0 + 14u < p.out_w;
    epilogue(m0 + 14u, px, nv, acc14);
    px = pixel(m0 + 15u);
    px.valid = valid && ox0 + 15u < p.out_w;
    epilogue(m0 + 15u, px, nv, acc15);
}

// ---- workgroup-memory tiled variant ------------------------------------------------------

const T_BM: u32 = 64u; // pixels per workgroup tile
const T_BNV: u32 = 16u; // vec4 columns per workgroup tile (64 output channels)
const T_BK: u32 = 16u;

// Rows padded by one float: the loads below write 16 consecutive k of one pixel, which would
// otherwise all fall in one memory bank (a row stride of 64 floats).
const T_ROW: u32 = 65u;
var<workgroup> a_tile: array<f32, 1040>;       // [T_BK][T_ROW]
var<workgroup> b_tile: array<vec4<f32>, 256>;  // [T_BK][T_BNV]

@compute @workgroup_size(16, 16, 1)
fn conv_tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.y * 16u + lid.x;
    let m_base = m_group(wid) * T_BM;
    let nv_base = wid.x * T_BNV;
    let k_total = p.kh * p.kw * (p.c1 + p.c2);

    // This invocation loads A elements (m_local = t/16 + 16j, k_local = t%16), j = 0..3:
    // consecutive invocations read consecutive channels of one pixel.
    let k_local = t % 16u;
    var load_px: array<Pixel, 4>;
    for (var j = 0u; j < 4u; j++) {
        load_px[j] = pixel(m_base + t / 16u + 16u * j);
    }
    // And one B vec4: row t/16, column t%16.
    let b_row = t / 16u;
    let b_col = nv_base + t % 16u;

    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < k_total; k0 += T_BK) {
        let k = k0 + k_local;
        for (var j = 0u; j < 4u; j++) {
            a_tile[k_local * T_ROW + t / 16u + 16u * j] = select(0.0, load_x(load_px[j], k), k < k_total);
        }
        let kb = k0 + b_row;
        let in_b = kb < k_total && b_col < p.cout_v;
        let b_idx = select(0u, kb * p.cout_v + b_col, in_b);
        b_tile[t] = select(vec4<f32>(0.0), w[b_idx], in_b);
        workgroupBarrier();
        for (var kk = 0u; kk < T_BK; kk++) {
            let wv = b_tile[kk * T_BNV + lid.x];
            let row = kk * T_ROW + lid.y * 4u;
            acc[0] += a_tile[row] * wv;
            acc[1] += a_tile[row + 1u] * wv;
            acc[2] += a_tile[row + 2u] * wv;
            acc[3] += a_tile[row + 3u] * wv;
        }
        workgroupBarrier();
    }
    let nv = nv_base + lid.x;
    for (var i = 0u; i < 4u; i++) {
        let m = m_base + lid.y * 4u + i;
        epilogue(m, pixel(m), nv, acc[i]);
    }
}
