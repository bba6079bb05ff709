// The fused update of the multistep solvers (DPM-Solver(++) and its SDE variants, UniPC, PNDM),
// one element per invocation. Every step is linear in the sample, in the kept model outputs of
// earlier steps and in this step's noise (schedule::multistep, whose multistep_step_noisy is the
// CPU twin):
//   (x0, ε) = predict(x, m); x0 /= s after thresholding, ε re-derived from it where asked
//   y0      = x0 or ε, or m itself (raw_output: PNDM)  this step's kept output
//   x       = corr_sample·last + corr_y0·y0 + Σ_k corr_slots[k]·slot[k]   (UniPC's corrector;
//             PNDM's transfers from cur_sample: x = last)
//   last    = x                                        when the next step corrects
//   x'      = pred_sample·x + pred_y0·y0 + Σ_k pred_slots[k]·slot[k] + noise·z
//   slot[write_slot] = y0                              when a later step reads it
// `history` holds up to 8 slots of numel values (assigned by liveness on the host) and then, at
// last_offset, the sample the previous predictor started from. The host turns each output's age
// into its slot, so a row carries one coefficient per slot; slots with coefficient 0 are not
// read (a slot not yet written is never touched). Rows come from a table of 256-byte slots
// bound with a dynamic offset, like ddim_step.wgsl's. The threshold search (threshold.wgsl) reads
// sqrt_a, sqrt_b from this step's row, so Step starts with them. A new sample that is NaN or
// infinite lowers `first_bad` (reset to 0xFFFFFFFF by the host) to this step's index.
// predict_x0_eps and is_non_finite come from predict.wgsl, appended to this source.

struct Params {
    numel: u32,
    per_sample: u32,
    prediction: u32,     // 0 epsilon, 1 sample, 2 v_prediction
    thresholding: u32,   // x0 is divided by its sample's threshold
    predicts_x0: u32,    // the converted output is x0 (else ε)
    rederive_eps: u32,   // ε = (x − α·x0)/σ from the thresholded x0 (DPM-Solver's ε)
    write_x0: u32,       // also store the data prediction (trajectory frames)
    last_offset: u32,    // element offset of `last` in history
    raw_output: u32,     // keep the model output itself (PNDM), x0 only for x0_out
}

struct Step {
    sqrt_a: f32,         // α_s; first, for threshold.wgsl
    sqrt_b: f32,         // σ_s; second, for threshold.wgsl
    pred_sample: f32,
    pred_y0: f32,
    corr_sample: f32,
    corr_y0: f32,
    corrects: u32,       // apply the corrector
    save_last: u32,      // keep the (corrected) sample for the next step's corrector
    pred_slots: array<vec4<f32>, 2>,
    corr_slots: array<vec4<f32>, 2>,
    write_slot: u32,     // this step's slot, when `writes`
    step: u32,           // s, for first_bad
    noise: f32,          // coefficient of this step's draw z (SDE solvers)
    writes: u32,         // a later step reads this output
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> st: Step;
@group(0) @binding(2) var<storage, read> model_out: array<f32>;
@group(0) @binding(3) var<storage, read> thresholds: array<f32>;
@group(0) @binding(4) var<storage, read_write> sample: array<f32>;
@group(0) @binding(5) var<storage, read_write> history: array<f32>;
@group(0) @binding(6) var<storage, read_write> x0_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> first_bad: atomic<u32>;
@group(0) @binding(8) var<storage, read> noise: array<f32>;
// Classifier-free guidance (guide.wgsl, appended): the output read is guided_model_out(i).
@group(0) @binding(9) var<uniform> guide: Guide;
@group(0) @binding(10) var<storage, read> guide_ratio: array<f32>;

const WG: u32 = 256u;

// Σ_k slots[k]·slot k of the history at element i, for the four slots from `first`, over the
// slots in use.
fn slot_terms(slots: vec4<f32>, first: u32, i: u32) -> f32 {
    var v = 0.0;
    for (var k = 0u; k < 4u; k++) {
        if slots[k] != 0.0 {
            v += slots[k] * history[(first + k) * p.numel + i];
        }
    }
    return v;
}

fn ring_terms(slots: array<vec4<f32>, 2>, i: u32) -> f32 {
    return slot_terms(slots[0], 0u, i) + slot_terms(slots[1], 4u, i);
}

@compute @workgroup_size(256)
fn multistep_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i >= p.numel {
        return;
    }
    let x_in = sample[i];
    let m = guided_model_out(i);
    let pe = predict_x0_eps(p.prediction, st.sqrt_a, st.sqrt_b, x_in, m);
    var x0 = pe.x;
    var eps = pe.y;
    if p.thresholding != 0u {
        let s = thresholds[i / p.per_sample];
        x0 = clamp(x0, -s, s) / s;
        if p.rederive_eps != 0u {
            eps = (x_in - st.sqrt_a * x0) / st.sqrt_b;
        }
    }
    var y0 = select(eps, x0, p.predicts_x0 != 0u);
    if p.raw_output != 0u {
        y0 = m;
    }
    var x = x_in;
    if st.corrects != 0u {
        x = st.corr_sample * history[p.last_offset + i] + st.corr_y0 * y0
            + ring_terms(st.corr_slots, i);
    }
    if st.save_last != 0u {
        history[p.last_offset + i] = x;
    }
    var next = st.pred_sample * x + st.pred_y0 * y0 + ring_terms(st.pred_slots, i);
    if st.noise != 0.0 {
        next += st.noise * noise[i];
    }
    sample[i] = next;
    if is_non_finite(next) {
        atomicMin(&first_bad, st.step);
    }
    if st.writes != 0u {
        history[st.write_slot * p.numel + i] = y0;
    }
    if p.write_x0 != 0u {
        var x0_frame = select((x_in - st.sqrt_b * y0) / st.sqrt_a, y0, p.predicts_x0 != 0u);
        if p.raw_output != 0u {
            x0_frame = x0;
        }
        x0_out[i] = x0_frame;
    }
}
