// The consistency-model update (CMStochasticIterativeScheduler.step), one element per
// invocation, fused with the next step's input scaling (schedule::consistency, whose
// consistency_step and consistency_input are the CPU twins):
//   d        = c_out·m + c_skip·x, clamped to [−1, 1] when clip   (the denoised sample)
//   x'       = d + noise·z                                        (z: this step's draw)
//   model_in = x' / in_div                                        (the next step's c_in)
// Rows come from a table of 256-byte slots bound with a dynamic offset, like multistep.wgsl's.
// A new sample that is NaN or infinite lowers `first_bad` (reset to 0xFFFFFFFF by the host) to
// this step's index. is_non_finite comes from predict.wgsl, appended to this source.

struct Params {
    numel: u32,
    clip: u32,           // clip_denoised
    write_x0: u32,       // also store the denoised sample (trajectory frames)
    _pad: u32,
}

struct Step {
    c_skip: f32,
    c_out: f32,
    noise: f32,          // s_noise·sqrt(clamp(σ_next)² − σ_min²); 0 at the last step
    in_div: f32,         // sqrt(σ_next² + σ_d²): the next model input is x'/in_div
    step: u32,           // s, for first_bad
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> st: Step;
@group(0) @binding(2) var<storage, read> model_out: array<f32>;
@group(0) @binding(3) var<storage, read> noise: array<f32>;
@group(0) @binding(4) var<storage, read_write> sample: array<f32>;
@group(0) @binding(5) var<storage, read_write> model_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> x0_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> first_bad: atomic<u32>;
// Classifier-free guidance (guide.wgsl, appended): the output read is guided_model_out(i).
@group(0) @binding(8) var<uniform> guide: Guide;
@group(0) @binding(9) var<storage, read> guide_ratio: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn consistency_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i >= p.numel {
        return;
    }
    var d = st.c_out * guided_model_out(i) + st.c_skip * sample[i];
    if p.clip != 0u {
        d = clamp(d, -1.0, 1.0);
    }
    var next = d;
    if st.noise != 0.0 {
        next += st.noise * noise[i];
    }
    sample[i] = next;
    model_in[i] = next / st.in_div;
    if is_non_finite(next) {
        atomicMin(&first_bad, st.step);
    }
    if p.write_x0 != 0u {
        x0_out[i] = d;
    }
}
