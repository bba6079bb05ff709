// The fused update of the σ-space samplers (Euler, Euler ancestral, Heun, LMS), one element per
// invocation, and the scale_model_input of the next evaluation (schedule::sigma, whose
// sigma_step is the CPU twin):
//   x'   = x + churn·z                      Euler's churn, where the row draws
//   x0   = x0_sample·x' + x0_model·m        clamped to ±clip_range with Heun's clip_sample
//   d    = (x' − x0) / deriv_sigma          this evaluation's derivative
//   x''  = base + d0·d + Σ_k slots[k]·ring[k] + noise·z      base = x', or Heun's saved sample
//   ring[write_slot] = d; saved = x' where the next evaluation corrects
//   model_in = x'' / next_scale             the next evaluation's input, so no separate pass
// `history` holds the ring of earlier derivatives (R slots of numel values: evaluation s writes
// slot s mod R) and then, at saved_offset, Heun's saved sample. The host turns each
// derivative's age into its ring slot; slots with coefficient 0 are not read. Rows come from a
// table of aligned slots bound with a dynamic offset. A new sample that is NaN or infinite lowers
// `first_bad` (reset to 0xFFFFFFFF by the host) to this evaluation's index. is_non_finite comes
// from predict.wgsl, appended to this source.

struct Params {
    numel: u32,
    clip: u32,           // clamp x0 to ±clip_range (Heun's clip_sample)
    clip_range: f32,
    write_x0: u32,       // also store x0 (trajectory frames)
    saved_offset: u32,   // element offset of Heun's saved sample in history
    ring: u32,           // ring slots of derivatives; 0: none kept
    _pad0: u32,
    _pad1: u32,
}

struct Step {
    churn: f32,
    x0_sample: f32,
    x0_model: f32,
    deriv_sigma: f32,
    d0: f32,             // coefficient of this evaluation's derivative
    noise: f32,          // coefficient of z in the update (Euler ancestral's σ_up)
    next_scale: f32,     // sqrt(σ² + 1) of the next evaluation
    has_noise: u32,      // this evaluation reads z
    slots: vec4<f32>,    // coefficients on ring slots (earlier derivatives)
    from_saved: u32,     // the base is the saved sample (Heun's corrector)
    save_sample: u32,    // keep x' for the corrector that follows
    write_slot: u32,     // s mod R
    step: u32,           // s, for first_bad
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> st: Step;
@group(0) @binding(2) var<storage, read> model_out: array<f32>;
@group(0) @binding(3) var<storage, read> noise: array<f32>;
@group(0) @binding(4) var<storage, read_write> sample: array<f32>;
@group(0) @binding(5) var<storage, read_write> history: array<f32>;
@group(0) @binding(6) var<storage, read_write> model_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> x0_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> first_bad: atomic<u32>;
// Classifier-free guidance (guide.wgsl, appended): the output read is guided_model_out(i), and
// the next model input is written into both halves of the doubled batch.
@group(0) @binding(9) var<uniform> guide: Guide;
@group(0) @binding(10) var<storage, read> guide_ratio: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn sigma_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i >= p.numel {
        return;
    }
    var z = 0.0;
    if st.has_noise != 0u {
        z = noise[i];
    }
    var x = sample[i];
    if st.churn != 0.0 {
        x = x + st.churn * z;
    }
    var x0 = st.x0_sample * x + st.x0_model * guided_model_out(i);
    if p.clip != 0u {
        x0 = clamp(x0, -p.clip_range, p.clip_range);
    }
    let d = (x - x0) / st.deriv_sigma;
    var next = x;
    if st.from_saved != 0u {
        next = history[p.saved_offset + i];
    }
    next += st.d0 * d;
    for (var k = 0u; k < 4u; k++) {
        if st.slots[k] != 0.0 {
            next += st.slots[k] * history[k * p.numel + i];
        }
    }
    if st.noise != 0.0 {
        next += st.noise * z;
    }
    if st.save_sample != 0u {
        history[p.saved_offset + i] = x;
    }
    if p.ring != 0u {
        history[st.write_slot * p.numel + i] = d;
    }
    sample[i] = next;
    let input = next / st.next_scale;
    model_in[i] = input;
    if guide.on != 0u {
        model_in[p.numel + i] = input;
    }
    if is_non_finite(next) {
        atomicMin(&first_bad, st.step);
    }
    if p.write_x0 != 0u {
        x0_out[i] = x0;
    }
}
