// conv2d as an implicit GEMM over NHWC activations: M = B·OH·OW output pixels, N = Cout,
// K = KH·KW·Cin with k = (ky·KW + kx)·Cin + ci. Weights are pre-transposed to K-major
// [KH][KW][Cin][Cout4] (Cout padded with zeros to a multiple of 4) so a weight row is read as vec4.
//
// Loader: the logical input may be a nearest 2× upsample of the stored one (read at (y/2, x/2)),
// and its channels may come from two buffers (ci < c1 from `x_a`, the rest from `x_b`): the
// decoder's upsample and skip concatenation cost no extra pass.
// Epilogue: out = (acc + bias[n] + chan_add[b, n]? + residual[m, n]?) · out_scale (/ div[b]?).
// The residual may be stored at another size and resampled as it is read (resample_taps.wgsl,
// appended): a resnet's identity path when the resnet pools (avg-pool 2×2) or upsamples (nearest),
// so x = Dn(x) / U(x) costs no pass of its own. With IMAGE_DIV the per-step table holds one
// divisor per image instead of channel additions (a fourier skip model's output / σ).
//
// Two variants, one interface (chosen per adapter, see src/gpu/kernels/conv2d.rs):
//   register — no workgroup memory and no barriers, for CPU adapters (lavapipe), where barriers
//              are slow: conv_rows16 / conv_rows8 for 3×3 stride-1 convolutions (a row of 16 or 8
//              pixels × 4 channels per invocation, input columns shared between neighbours;
//              generated into conv2d_rows.wgsl, which is appended to this file), and
//              conv_reg for everything else (4 pixels × 8 channels per invocation).
//   tiled    — conv_tiled: workgroup-memory tiled, a 64×64 output tile per 16×16 workgroup, K in
//              steps of 16, each invocation 4×4 outputs. For real GPUs.
//   tiled128 — conv_tiled128: a 128×64 tile per 16×16 workgroup, 8×4 outputs per invocation,
//              and the next K step's inputs loaded into registers while the current step is
//              multiplied from workgroup memory (more reuse per load, global latency hidden).

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
    res_h: u32,      // stored residual size (out_h × out_w unless res_mode resamples it)
    res_w: u32,
    res_mode: u32,   // RS_* (resample_taps.wgsl) applied to the residual as it is read
    _pad0: u32,
    _pad1: u32,
}

// The storage type of activations and weights: f32, or f16 where the plan is built in half
// precision (src/gpu/precision.rs rewrites this line). Arithmetic stays f32 either way.
alias act = f32;

const HAS_CHAN_ADD: u32 = 1u;
const HAS_RESIDUAL: u32 = 2u;
const IMAGE_DIV: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x_a: array<act>;
@group(0) @binding(2) var<storage, read> x_b: array<act>;
@group(0) @binding(3) var<storage, read> w: array<vec4<act>>;
@group(0) @binding(4) var<storage, read> bias: array<vec4<f32>>;
// The step's [B, Cout] block of a per-step table (HAS_CHAN_ADD), or its [B, 1] divisors (IMAGE_DIV).
@group(0) @binding(5) var<storage, read> chan_add: array<f32>;
@group(0) @binding(6) var<storage, read> residual: array<act>;
@group(0) @binding(7) var<storage, read_write> out: array<act>;

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
        return f32(x_a[u32(s) * p.c1 + ci]);
    }
    return f32(x_b[u32(s) * p.c2 + (ci - p.c1)]);
}

// The residual of output pixel m (image b), channel n, resampled from res_h × res_w if res_mode
// says so (the residual buffer has Cout channels either way).
fn residual_at(m: u32, b: u32, n: u32) -> f32 {
    if (p.res_mode == RS_NONE) {
        return f32(residual[m * p.cout + n]);
    }
    let ox = m % p.out_w;
    let oy = (m / p.out_w) % p.out_h;
    let ty = axis_taps(p.res_mode, oy);
    let tx = axis_taps(p.res_mode, ox);
    var acc = 0.0;
    for (var a = 0u; a < ty.count; a++) {
        let iy = ty.first + i32(a);
        if (iy < 0 || iy >= i32(p.res_h)) {
            continue;
        }
        for (var e = 0u; e < tx.count; e++) {
            let ix = tx.first + i32(e);
            if (ix < 0 || ix >= i32(p.res_w)) {
                continue;
            }
            let r = ((b * p.res_h + u32(iy)) * p.res_w + u32(ix)) * p.cout + n;
            acc += ty.w[a] * tx.w[e] * f32(residual[r]);
        }
    }
    return acc;
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
                o += residual_at(m, px.b, n);
            }
            o *= p.out_scale;
            if ((p.flags & IMAGE_DIV) != 0u) {
                o /= chan_add[px.b];
            }
            out[m * p.cout + n] = act(o);
        }
    }
}

fn m_group(wid: vec3<u32>) -> u32 {
    return wid.z * p.m_groups_y + wid.y;
}

// ---- register-tiled variant --------------------------------------------------------------
// The 64 invocations of a workgroup share one slice of 8 output channels (workgroup-uniform weight
// addresses) and take 64 consecutive pixels, REG_TM times over; each keeps REG_TM pixels × 8
// channels in registers. Measured on lavapipe (llvmpipe 22.3, 128→128 3×3, 32×32, batch 8): 4×8
// beat 2×16, 4×4, 2×8 and 8×8, and unrolling the channel loop by 4 did not help. Since the 3×3
// stride-1 convs moved to the row kernels, this one runs the 1×1 and stride-2 convs, where
// (Mesa 25.0.7, 2026-12-05, A/B in one session) 8×8 beat 4×8 by 7–32 % per CPU-second in three
// of three lavapipe pairs and on the median of five llvmpipe GL pairs; 16×8 lost to 8×8.

const REG_TM: u32 = 8u;  // pixels per invocation
const REG_TNV: u32 = 2u; // vec4 columns per invocation (and per workgroup)
const REG_WG: u32 = 64u;

@compute @workgroup_size(REG_WG, 1, 1)
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
                let w0 = vec4<f32>(w[wrow + col0]);
                let w1 = vec4<f32>(w[wrow + col1]);
                for (var i = 0u; i < REG_TM; i++) {
                    let a = select(0.0, f32(x_a[off_a[i] + ci]), inside[i]);
                    acc0[i] += a * w0;
                    acc1[i] += a * w1;
                }
            }
            for (var ci = 0u; ci < p.c2; ci++) {
                let wrow = (krow + p.c1 + ci) * p.cout_v;
                let w0 = vec4<f32>(w[wrow + col0]);
                let w1 = vec4<f32>(w[wrow + col1]);
                for (var i = 0u; i < REG_TM; i++) {
                    let a = select(0.0, f32(x_b[off_b[i] + ci]), inside[i]);
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
        b_tile[t] = select(vec4<f32>(0.0), vec4<f32>(w[b_idx]), in_b);
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

// ---- large tiles with register prefetch ----------------------------------------------------
// Twice conv_tiled's pixels per workgroup (8 per invocation instead of 4): each weight vec4 read
// from workgroup memory feeds 8 products instead of 4. The loads of step k0 + T_BK are issued
// before the products of step k0, so their latency overlaps the arithmetic; one tile of
// workgroup memory (12.3 KB with b_tile, within the 16 KB default limit) and two barriers a step.

const TL_BM: u32 = 128u; // pixels per workgroup tile
const TL_ROW: u32 = 129u; // padded row, as T_ROW
var<workgroup> a_big: array<f32, 2064>; // [T_BK][TL_ROW]

@compute @workgroup_size(16, 16, 1)
fn conv_tiled128(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.y * 16u + lid.x;
    let m_base = m_group(wid) * TL_BM;
    let nv_base = wid.x * T_BNV;
    let k_total = p.kh * p.kw * (p.c1 + p.c2);

    // This invocation loads A elements (m_local = t/16 + 16j, k_local = t%16), j = 0..7, and
    // one B vec4 (row t/16, column t%16), as conv_tiled does.
    let k_local = t % 16u;
    var load_px: array<Pixel, 8>;
    for (var j = 0u; j < 8u; j++) {
        load_px[j] = pixel(m_base + t / 16u + 16u * j);
    }
    let b_row = t / 16u;
    let b_col = nv_base + t % 16u;

    var next_a: array<f32, 8>;
    var next_b = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        next_a[j] = select(0.0, load_x(load_px[j], k_local), k_local < k_total);
    }
    let in_b0 = b_row < k_total && b_col < p.cout_v;
    next_b = select(vec4<f32>(0.0), vec4<f32>(w[select(0u, b_row * p.cout_v + b_col, in_b0)]), in_b0);

    var acc: array<vec4<f32>, 8>;
    for (var k0 = 0u; k0 < k_total; k0 += T_BK) {
        for (var j = 0u; j < 8u; j++) {
            a_big[k_local * TL_ROW + t / 16u + 16u * j] = next_a[j];
        }
        b_tile[t] = next_b;
        workgroupBarrier();
        let kn = k0 + T_BK;
        if (kn < k_total) {
            let k = kn + k_local;
            for (var j = 0u; j < 8u; j++) {
                next_a[j] = select(0.0, load_x(load_px[j], k), k < k_total);
            }
            let kb = kn + b_row;
            let in_b = kb < k_total && b_col < p.cout_v;
            next_b = select(vec4<f32>(0.0), vec4<f32>(w[select(0u, kb * p.cout_v + b_col, in_b)]), in_b);
        }
        for (var kk = 0u; kk < T_BK; kk++) {
            let wv = b_tile[kk * T_BNV + lid.x];
            let row = kk * TL_ROW + lid.y * 8u;
            for (var i = 0u; i < 8u; i++) {
                acc[i] += a_big[row + i] * wv;
            }
        }
        workgroupBarrier();
    }
    let nv = nv_base + lid.x;
    for (var i = 0u; i < 8u; i++) {
        let m = m_base + lid.y * 8u + i;
        epilogue(m, pixel(m), nv, acc[i]);
    }
}
