// Classifier-free guidance, fused where an update reads the model output (appended to
// ddim_step, multistep, sigma_step and threshold, like predict.wgsl). A guided forward ran on the
// doubled batch, so `model_out` holds the null label's half (values 0..numel) and then the class
// half; the update reads g = u + w·(c − u) in place of the output, and with rescale φ > 0
// g ← φ·(g·r) + (1 − φ)·g with r = std(c)/std(g) of its image (guide_std.wgsl, run first).
// The host shader declares `model_out`, `guide: Guide` and `guide_ratio`. Unguided: on = 0 and
// the output is read as it is.
struct Guide {
    on: u32,
    numel: u32,          // values of one half (B·C·H·W)
    per_sample: u32,     // C·H·W
    rescale: u32,        // φ > 0
    w: f32,
    phi: f32,
    keep: f32,           // 1 − φ, rounded from f64 on the host
    _pad: u32,
}

fn guided_model_out(i: u32) -> f32 {
    let u = model_out[i];
    if guide.on == 0u {
        return u;
    }
    let g = u + guide.w * (model_out[guide.numel + i] - u);
    if guide.rescale == 0u {
        return g;
    }
    let rescaled = g * guide_ratio[i / guide.per_sample];
    return guide.phi * rescaled + guide.keep * g;
}
