// (x0, ε) from the sample x and the model output m, before any limiting, for the prediction
// type (0 epsilon, 1 sample, 2 v_prediction) at a level with sqrt_a = sqrt(ᾱ) and
// sqrt_b = sqrt(1 − ᾱ) (the multistep solvers' α_s and σ_s are the same numbers). Appended to
// every shader that converts a model output, so the formulas exist once; so is is_non_finite,
// which the sampler updates use to flag a diverging run.
fn predict_x0_eps(prediction: u32, sqrt_a: f32, sqrt_b: f32, x: f32, m: f32) -> vec2<f32> {
    switch prediction {
        case 1u: {
            return vec2<f32>(m, (x - sqrt_a * m) / sqrt_b);
        }
        case 2u: {
            return vec2<f32>(sqrt_a * x - sqrt_b * m, sqrt_a * m + sqrt_b * x);
        }
        default: {
            return vec2<f32>((x - sqrt_b * m) / sqrt_a, m);
        }
    }
}

// NaN or ±Inf: all exponent bits set. Tested on the bits because `v != v` may be folded away
// by shader compilers that assume finite math.
fn is_non_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u;
}
