// Imagen's dynamic thresholding, the search half: one workgroup per sample finds the two order
// statistics of |x0| around q·(N−1) exactly, by a radix select over the f32 bit patterns (for
// non-negative floats, integer order equals float order) with workgroup-atomic histograms, and
// stores s = clamp(quantile, 1, max_value). The sampler update that follows divides by s.
//
// Shared by every update that thresholds (DDIM/DDPM, the multistep solvers): `lv` is bound to
// the first 8 bytes of that update's per-step row (every row starts with sqrt_a, sqrt_b), with
// the same dynamic offset, so this kernel needs no table of its own.

struct Params {
    per_sample: u32,
    prediction: u32,     // 0 epsilon, 1 sample, 2 v_prediction
    rank_lo: u32,        // floor(q·(N−1)) and ceil(q·(N−1)) for the quantile
    rank_hi: u32,
    rank_weight: f32,    // q·(N−1) − floor(q·(N−1))
    max_value: f32,      // sample_max_value: s = clamp(quantile, 1, max_value)
    _pad0: u32,
    _pad1: u32,
}

struct Level {
    sqrt_a: f32,
    sqrt_b: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> lv: Level;
@group(0) @binding(2) var<storage, read> model_out: array<f32>;
@group(0) @binding(3) var<storage, read> sample: array<f32>;
@group(0) @binding(4) var<storage, read_write> thresholds: array<f32>;
// Classifier-free guidance (guide.wgsl, appended): x0 comes from guided_model_out.
@group(0) @binding(5) var<uniform> guide: Guide;
@group(0) @binding(6) var<storage, read> guide_ratio: array<f32>;

const WG: u32 = 256u;

// Histograms of the current 8-bit digit for the two order statistics ([rank][digit]), and the
// selection state: bit prefix decided so far and rank within it, for each statistic.
var<workgroup> hist: array<atomic<u32>, 512>;
var<workgroup> sel_prefix: array<u32, 2>;
var<workgroup> sel_rank: array<u32, 2>;

@compute @workgroup_size(256)
fn dynamic_threshold(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let base = b * p.per_sample;
    if lid == 0u {
        sel_prefix[0] = 0u;
        sel_prefix[1] = 0u;
        sel_rank[0] = p.rank_lo;
        sel_rank[1] = p.rank_hi;
    }
    // Most significant 8-bit digit first: 4 passes, 3 barriers each.
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        for (var i = lid; i < 512u; i += WG) {
            atomicStore(&hist[i], 0u);
        }
        workgroupBarrier();
        let prefix = vec2<u32>(sel_prefix[0], sel_prefix[1]);
        for (var j = lid; j < p.per_sample; j += WG) {
            let x0 = predict_x0_eps(p.prediction, lv.sqrt_a, lv.sqrt_b, sample[base + j], guided_model_out(base + j)).x;
            let bits = bitcast<u32>(abs(x0));
            let digit = (bits >> shift) & 255u;
            // Only values whose higher digits equal the prefix chosen so far (all in round 0).
            // (In round 0 the shift would be 32, which WGSL reduces modulo 32; hence the test.)
            let higher = (vec2<u32>(bits) ^ prefix) >> vec2<u32>(min(shift + 8u, 31u));
            let same = vec2<bool>(round == 0u) | (higher == vec2<u32>(0u));
            if same.x {
                atomicAdd(&hist[digit], 1u);
            }
            if same.y {
                atomicAdd(&hist[256u + digit], 1u);
            }
        }
        workgroupBarrier();
        if lid < 2u {
            var below = 0u;
            var digit = 255u;
            for (var d = 0u; d < 256u; d++) {
                let count = atomicLoad(&hist[lid * 256u + d]);
                if below + count > sel_rank[lid] {
                    digit = d;
                    break;
                }
                below += count;
            }
            sel_rank[lid] -= below;
            sel_prefix[lid] |= digit << shift;
        }
        workgroupBarrier();
    }
    if lid == 0u {
        let below = bitcast<f32>(sel_prefix[0]);
        let above = bitcast<f32>(sel_prefix[1]);
        let w = p.rank_weight;
        // torch.lerp's two-sided formula, as torch.quantile uses it.
        var q = below + w * (above - below);
        if w >= 0.5 {
            q = above - (above - below) * (1.0 - w);
        }
        thresholds[b] = clamp(q, 1.0, p.max_value);
    }
}
