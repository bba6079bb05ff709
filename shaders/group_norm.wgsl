// Group normalisation over NHWC f32 activations, with an optional fused SiLU, and in the apply
// pass the resnet's neighbours: the scale-shift time conditioning and the ×2 resampling of h.
//
// Three barrier-free passes (lavapipe is slow with workgroup barriers; real GPUs get enough
// parallelism from the chunking):
//   gn_stats   one invocation per (batch, pixel chunk, channel): two-pass mean and M2 over the
//              chunk's pixels of that channel (adjacent invocations read adjacent channels).
//   gn_combine one invocation per (batch, group): Chan's parallel formula over the group's
//              (chunk, channel) partials, giving the mean and rstd = 1/sqrt(var + eps) (biased
//              variance), stored per (batch, channel) as (mean, rstd·gamma[c], beta[c]).
//   gn_apply   four consecutive elements per invocation: y = (x − mean)·scale + shift, then
//              with resnet_time_scale_shift = "scale_shift" y·(1 + s[b, c]) + t[b, c] (the step's
//              [B, 2C] block of the resnet's projection table, diffusers' order: norm2, then the
//              time conditioning, then SiLU), then SiLU. Channel and image indices advance
//              incrementally: two integer divisions per four elements (division by a run-time
//              value is slow on CPU adapters).
//   gn_apply_resample  one output element per invocation of y = resample(silu(norm(x))), the
//              resnet's down/up paths after norm1 + SiLU (avg-pool 2×2, FIR down/up, nearest;
//              resample_taps.wgsl, appended): conv1 then reads h at its own resolution, and the
//              full-resolution normalised h is never stored.
// Any number of groups; channels per group need not be a multiple of 4.

struct Params {
    batch: u32,
    hw: u32,            // pixels per image (H * W)
    channels: u32,
    groups: u32,
    chunk_pixels: u32,  // pixels per stats chunk
    num_chunks: u32,    // ceil(hw / chunk_pixels)
    eps: f32,
    silu: u32,          // 1: apply SiLU after the affine transform
    width: u32,         // image width (height = hw / width), for gn_apply_resample
    out_h: u32,         // y's size (gn_apply_resample)
    out_w: u32,
    resample: u32,      // RS_* (resample_taps.wgsl), gn_apply_resample
    scale_shift: u32,   // 1: y·(1 + s) + t from `table` before the SiLU
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Storage type of x and y: f32, or f16 in a half-precision plan (src/gpu/precision.rs rewrites
// this line). Statistics, coefficients and arithmetic stay f32.
alias act = f32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<act>;
// (count, mean, M2) per (batch, chunk, channel); the fourth lane is unused.
@group(0) @binding(2) var<storage, read_write> partials: array<vec4<f32>>;
// (mean, rstd·gamma, beta, unused) per (batch, channel).
@group(0) @binding(3) var<storage, read_write> coef: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<act>;
// The step's [B, 2C] block (scale, shift) of a resnet's time projection (bound at a dynamic
// offset per step), when p.scale_shift = 1.
@group(0) @binding(7) var<storage, read> table: array<f32>;

const WG: u32 = 256u;

// Flattened invocation index over a 2-D grid of 1-D workgroups (to pass 65535 workgroups).
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * nwg.x * WG + gid.x;
}

@compute @workgroup_size(256)
fn gn_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let c = p.channels;
    if idx >= p.batch * p.num_chunks * c {
        return;
    }
    let ch = idx % c;
    let rest = idx / c;
    let chunk = rest % p.num_chunks;
    let b = rest / p.num_chunks;
    let p0 = chunk * p.chunk_pixels;
    let p1 = min(p0 + p.chunk_pixels, p.hw);
    let base = b * p.hw * c + ch;
    var sum = 0.0;
    for (var px = p0; px < p1; px++) {
        sum += f32(x[base + px * c]);
    }
    let count = f32(p1 - p0);
    let mean = sum / count;
    var m2 = 0.0;
    for (var px = p0; px < p1; px++) {
        let d = f32(x[base + px * c]) - mean;
        m2 += d * d;
    }
    partials[idx] = vec4<f32>(count, mean, m2, 0.0);
}

// Chan's parallel update: the running (count, mean, M2) `s` merged with one partial `q`
// (count, mean, M2, unused). Shared with gn_combine_sg (group_norm_subgroup.wgsl).
fn chan_merge(s: vec3<f32>, q: vec4<f32>) -> vec3<f32> {
    let n_ab = s.x + q.x;
    let delta = q.y - s.y;
    let w = q.x / n_ab;
    return vec3<f32>(n_ab, s.y + delta * w, s.z + q.z + delta * delta * s.x * w);
}

@compute @workgroup_size(256)
fn gn_combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if idx >= p.batch * p.groups {
        return;
    }
    let b = idx / p.groups;
    let g = idx % p.groups;
    let cpg = p.channels / p.groups;
    var s = vec3<f32>(0.0); // (count, mean, M2)
    for (var chunk = 0u; chunk < p.num_chunks; chunk++) {
        let row = (b * p.num_chunks + chunk) * p.channels + g * cpg;
        for (var j = 0u; j < cpg; j++) {
            s = chan_merge(s, partials[row + j]);
        }
    }
    let mean = s.y;
    let var_biased = max(s.z / s.x, 0.0);
    // 1/sqrt rather than inverseSqrt: the latter may be a low-precision approximation on GPUs.
    let rstd = 1.0 / sqrt(var_biased + p.eps);
    for (var j = 0u; j < cpg; j++) {
        let ch = g * cpg + j;
        coef[b * p.channels + ch] = vec4<f32>(mean, rstd * gamma[ch], beta[ch], 0.0);
    }
}

// silu?(scale_shift?((v − mean)·rstd·γ + β)) of value v of image b, channel ch.
fn normalized(v: f32, b: u32, ch: u32) -> f32 {
    let k = coef[b * p.channels + ch];
    var r = (v - k.x) * k.y + k.z;
    if p.scale_shift != 0u {
        let row = b * 2u * p.channels;
        r = r * (1.0 + table[row + ch]) + table[row + p.channels + ch];
    }
    if p.silu != 0u {
        r = r / (1.0 + exp(-r));
    }
    return r;
}

@compute @workgroup_size(256)
fn gn_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i0 = flat_index(gid, nwg) * 4u;
    let c = p.channels;
    let numel = p.batch * p.hw * c;
    if i0 >= numel {
        return;
    }
    var pixel = i0 / c;          // over batch · hw
    var ch = i0 - pixel * c;
    var b = pixel / p.hw;
    for (var j = 0u; j < 4u; j++) {
        let i = i0 + j;
        if i >= numel {
            break;
        }
        y[i] = act(normalized(f32(x[i]), b, ch));
        ch += 1u;
        if ch == c {
            ch = 0u;
            pixel += 1u;
            b = pixel / p.hw;
        }
    }
}

@compute @workgroup_size(256)
fn gn_apply_resample(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let c = p.channels;
    if i >= p.batch * p.out_h * p.out_w * c {
        return;
    }
    let ch = i % c;
    let px = i / c;
    let ox = px % p.out_w;
    let t = px / p.out_w;
    let oy = t % p.out_h;
    let b = t / p.out_h;
    let height = p.hw / p.width;
    let ty = axis_taps(p.resample, oy);
    let tx = axis_taps(p.resample, ox);
    var acc = 0.0;
    for (var a = 0u; a < ty.count; a++) {
        let iy = ty.first + i32(a);
        if (iy < 0 || iy >= i32(height)) {
            continue; // zero padding: outside samples add nothing (not normalized(0))
        }
        let row = (b * height + u32(iy)) * p.width;
        for (var e = 0u; e < tx.count; e++) {
            let ix = tx.first + i32(e);
            if (ix < 0 || ix >= i32(p.width)) {
                continue;
            }
            let v = normalized(f32(x[(row + u32(ix)) * c + ch]), b, ch);
            acc += ty.w[a] * tx.w[e] * v;
        }
    }
    y[i] = act(acc);
}
