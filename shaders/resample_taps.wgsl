// The ×2 resamplers as separable taps, appended to the shaders that resample while they load or
// store (resample.wgsl, group_norm.wgsl's apply pass, conv2d.wgsl's residual read). Along one
// axis, output `o` reads inputs `first .. first + count` with weights `w`; inputs outside the
// image count as zero (diffusers pads the FIR filters with zeros, so borders attenuate).
//   RS_AVG_POOL  F.avg_pool2d(x, 2): (x[2o] + x[2o+1]) / 2; odd sizes floor (the caller's size)
//   RS_FIR_DOWN  upfirdn2d (1,3,3,1), down 2, pad (1,1): (x[2o−1] + 3x[2o] + 3x[2o+1] + x[2o+2]) / 8
//   RS_FIR_UP    upfirdn2d (1,3,3,1)·4, up 2, pad (2,1): y[2j] = (x[j−1] + 3x[j]) / 4,
//                y[2j+1] = (3x[j] + x[j+1]) / 4
//   RS_NEAREST   F.interpolate(nearest, ×2): x[o/2]
// All weights are dyadic, so the 2-D weight wy·wx is exact in f32.

const RS_NONE: u32 = 0u;
const RS_AVG_POOL: u32 = 1u;
const RS_FIR_DOWN: u32 = 2u;
const RS_FIR_UP: u32 = 3u;
const RS_NEAREST: u32 = 4u;

struct Taps {
    first: i32,
    count: u32,
    w: vec4<f32>,
}

fn axis_taps(mode: u32, o: u32) -> Taps {
    let oi = i32(o);
    switch mode {
        case 1u: { // RS_AVG_POOL
            return Taps(2 * oi, 2u, vec4<f32>(0.5, 0.5, 0.0, 0.0));
        }
        case 2u: { // RS_FIR_DOWN
            return Taps(2 * oi - 1, 4u, vec4<f32>(0.125, 0.375, 0.375, 0.125));
        }
        case 3u: { // RS_FIR_UP
            let j = oi / 2;
            if (o % 2u == 0u) {
                return Taps(j - 1, 2u, vec4<f32>(0.25, 0.75, 0.0, 0.0));
            }
            return Taps(j, 2u, vec4<f32>(0.75, 0.25, 0.0, 0.0));
        }
        case 4u: { // RS_NEAREST
            return Taps(oi / 2, 1u, vec4<f32>(1.0, 0.0, 0.0, 0.0));
        }
        default: {
            return Taps(oi, 1u, vec4<f32>(1.0, 0.0, 0.0, 0.0));
        }
    }
}
