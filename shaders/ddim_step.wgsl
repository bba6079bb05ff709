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
// With dynamic thresholding, threshold.wgsl's kernel runs first and leaves each sample's s in
// `thresholds`; it reads sqrt_a and sqrt_b from this step's row, so Step must start with them.
// An element whose new sample is NaN or infinite lowers `first_bad` (reset to 0xFFFFFFFF by the
// host) to this step's index, so the host learns where a run diverged from its one read-back.
// predict_x0_eps and is_non_finite come from predict.wgsl, appended to this source; Guide and
// guided_model_out (classifier-free guidance on the doubled batch) from guide.wgsl.

struct Params {
    numel: u32,
    per_sample: u32,
    prediction: u32,     // 0 epsilon, 1 sample, 2 v_prediction
    limit: u32,          // 0 none, 1 clip, 2 dynamic threshold
    clip_range: f32,
    use_clipped: u32,    // use_clipped_model_output
    write_x0: u32,       // also store the (limited) x0
    _pad: u32,
}

struct Step {
    sqrt_a: f32,         // sqrt(alpha_prod_t); first, for threshold.wgsl
    sqrt_b: f32,         // sqrt(1 − alpha_prod_t); second, for threshold.wgsl
    x0_coef: f32,
    eps_coef: f32,
    sample_coef: f32,
    sigma: f32,          // standard deviation of the noise term
    noise_offset: u32,   // element offset of this step's noise
    has_noise: u32,
    step: u32,           // this row's step index, for first_bad
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> st: Step;
@group(0) @binding(2) var<storage, read> model_out: array<f32>;
@group(0) @binding(3) var<storage, read> noise: array<f32>;
@group(0) @binding(4) var<storage, read> thresholds: array<f32>;
@group(0) @binding(5) var<storage, read_write> sample: array<f32>;
@group(0) @binding(6) var<storage, read_write> x0_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> first_bad: atomic<u32>;
@group(0) @binding(8) var<uniform> guide: Guide;
@group(0) @binding(9) var<storage, read> guide_ratio: array<f32>;

const WG: u32 = 256u;

fn predict(x: f32, m: f32) -> vec2<f32> {
    return predict_x0_eps(p.prediction, st.sqrt_a, st.sqrt_b, x, m);
}

@compute @workgroup_size(256)
fn ddim_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i >= p.numel {
        return;
    }
    let x = sample[i];
    let pe = predict(x, guided_model_out(i));
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
    if is_non_finite(prev) {
        atomicMin(&first_bad, st.step);
    }
    if p.write_x0 != 0u {
        x0_out[i] = x0;
    }
}
