// The fused sampler update, one element per invocation: diffusers DDIMScheduler.step (and, with
// other coefficients, DDPMScheduler.step):
//   x0, eps  from (x, model output) for the prediction type (epsilon | sample | v_prediction)
//   x0       clipped to ±range, or dynamically thresholded (Imagen) with a per-sample s
//   eps      re-derived from the limited x0 when use_clipped_model_output
//   x_prev = x0_coef·x0 + eps_coef·eps + sample_coef·x + σ·z
//   DDIM: x0_coef = sqrt(a_prev), eps_coef = sqrt(1 − a_prev − σ²), sample_coef = 0
//   DDPM: x0_coef = sqrt(a_prev)·β_t/(1 − a_t), eps_coef = 0, sample_coef = sqrt(α_t)·(1 − a_prev)/(1 − a_t)
// Per-step coefficients (computed in f64 on the host) come from a table of 256-byte slots bound
// with a dynamic offset, so every step of a sampling run is encoded without CPU round trips.
// z is host-generated noise (identical for the CPU reference), read at the step's offset.
//
// ddim_threshold runs first when thresholding: one workgroup per sample finds the two order
// statistics of |x0| around q·(N−1) exactly, by a radix select over the f32 bit patterns (for
// non-negative floats, integer order equals float order) with workgroup-atomic histograms.

struct Params {
    numel: u32,
    per_sample: u32,
    prediction: u32,     // 0 epsilon, 1 sample, 2 v_prediction
    limit: u32,          // 0 none, 1 clip, 2 dynamic threshold
    clip_range: f32,
    rank_lo: u32,        // floor(q·(N−1)) and ceil(q·(N−1)) for the quantile
    rank_hi: u32,
    rank_weight: f32,    // q·(N−1) − floor(q·(N−1))
    max_value: f32,      // sample_max_value: s = clamp(quantile, 1, max_value)
    use_clipped: u32,    // use_clipped_model_output
    write_x0: u32,       // also store the (limited) x0
    _pad: u32,
}

struct Step {
    sqrt_a: f32,         // sqrt(alpha_prod_t)
    sqrt_b: f32,         // sqrt(1 − alpha_prod_t)
    x0_coef: f32,
    eps_coef: f32,
    sample_coef: f32,
    sigma: f32,          // standard deviation of the noise term
    noise_offset: u32,   // element offset of this step's noise
    has_noise: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> st: Step;
@group(0) @binding(2) var<storage, read> model_out: array<f32>;
@group(0) @binding(3) var<storage, read> noise: array<f32>;
@group(0) @binding(4) var<storage, read_write> thresholds: array<f32>;
@group(0) @binding(5) var<storage, read_write> sample: array<f32>;
@group(0) @binding(6) var<storage, read_write> x0_out: array<f32>;

const WG: u32 = 256u;

// (x0, eps) before any limiting.
fn predict(x: f32, m: f32) -> vec2<f32> {
    switch p.prediction {
        case 1u: {
            return vec2<f32>(m, (x - st.sqrt_a * m) / st.sqrt_b);
        }
        case 2u: {
            return vec2<f32>(st.sqrt_a * x - st.sqrt_b * m, st.sqrt_a * m + st.sqrt_b * x);
        }
        default: {
            return vec2<f32>((x - st.sqrt_b * m) / st.sqrt_a, m);
        }
    }
}

@compute @workgroup_size(256)
fn ddim_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i >= p.numel {
        return;
    }
    let x = sample[i];
    let pe = predict(x, model_out[i]);
    var x0 = pe.x;
    var eps = pe.y;
    if p.limit == 1u {
        x0 = clamp(x0, -p.clip_range, p.clip_range);
    } else if p.limit == 2u {
        let s = thresholds[i / p.per_sample];
        x0 = clamp(x0, -s, s) / s;
    }
    if p.use_clipped != 0u {
        eps = (x - st.sqrt_a * x0) / st.sqrt_b;
    }
    var prev = st.x0_coef * x0 + st.eps_coef * eps;
    if st.sample_coef != 0.0 {
        prev += st.sample_coef * x;
    }
    if st.has_noise != 0u {
        prev += st.sigma * noise[st.noise_offset + i];
    }
    sample[i] = prev;
    if p.write_x0 != 0u {
        x0_out[i] = x0;
    }
}

// Histograms of the current 8-bit digit for the two order statistics ([rank][digit]), and the
// selection state: bit prefix decided so far and rank within it, for each statistic.
var<workgroup> hist: array<atomic<u32>, 512>;
var<workgroup> sel_prefix: array<u32, 2>;
var<workgroup> sel_rank: array<u32, 2>;

@compute @workgroup_size(256)
fn ddim_threshold(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let base = b * p.per_sample;
    if lid == 0u {
        sel_prefix[0] = 0u;
        sel_prefix[1] = 0u;
        sel_rank[0] = p.rank_lo;
        sel_rank[1] = p.rank_hi;
    }
    // Radix select over the bit patterns of |x0| (for non-negative floats integer order is
    // float order), most significant 8-bit digit first: 4 passes, 3 barriers each.
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        for (var i = lid; i < 512u; i += WG) {
            atomicStore(&hist[i], 0u);
        }
        workgroupBarrier();
        let prefix = vec2<u32>(sel_prefix[0], sel_prefix[1]);
        for (var j = lid; j < p.per_sample; j += WG) {
            let x = sample[base + j];
            let bits = bitcast<u32>(abs(predict(x, model_out[base + j]).x));
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
