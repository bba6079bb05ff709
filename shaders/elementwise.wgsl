// Small elementwise kernels the U-Net plan needs around the big ones (NHWC activations):
//   concat_channels  out[p, c] = c < c1 ? a[p, c] : b[p, c - c1]   (the skip concatenation that
//                    feeds a group norm; convolutions read the two halves directly instead)
//   affine           out = a · scale + shift                        (center_input_sample: 2x − 1)
// (The scale-shift time conditioning is part of the group norm's apply pass.)

struct Params {
    n: u32,        // output elements
    c1: u32,       // channels of `a` (concat)
    c2: u32,       // channels of `b` (concat)
    scale: f32,
    shift: f32,
    row_groups: u32, // workgroups per grid row (2-D grid)
    _pad0: u32,
    _pad1: u32,
}

// Storage types of the inputs a, b and of out: f32, or f16 in a half-precision plan, where
// `affine` also converts between the two at the plan's f32 input and output
// (src/gpu/precision.rs rewrites these lines). Arithmetic stays f32.
alias in_t = f32;
alias out_t = f32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<in_t>;
@group(0) @binding(2) var<storage, read> b: array<in_t>;
@group(0) @binding(3) var<storage, read_write> out: array<out_t>;

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * p.row_groups * 64u + gid.x;
}

@compute @workgroup_size(64)
fn concat_channels(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= p.n) {
        return;
    }
    let c = p.c1 + p.c2;
    let px = i / c;
    let ch = i % c;
    if (ch < p.c1) {
        out[i] = out_t(a[px * p.c1 + ch]);
    } else {
        out[i] = out_t(b[px * p.c2 + (ch - p.c1)]);
    }
}

@compute @workgroup_size(64)
fn affine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= p.n) {
        return;
    }
    out[i] = out_t(f32(a[i]) * p.scale + p.shift);
}
