// ×2 resampling of NHWC activations on its own (resample_taps.wgsl, appended, has the filters),
// where no neighbouring kernel can take it: the skip blocks' 3-channel image path (FIR down and
// up) and a skip block's x before its 1×1 shortcut conv. The resnet's h path is resampled by
// the group norm's apply pass and its identity residual by the conv epilogue instead.
// One output element per invocation: adjacent invocations take adjacent channels of one pixel,
// so reads and writes are contiguous.

struct Params {
    batch: u32,
    height: u32,     // input
    width: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    mode: u32,       // RS_* (resample_taps.wgsl)
    row_groups: u32, // workgroups per grid row (2-D grid)
}

// Storage type of x and out: f32, or f16 in a half-precision plan (src/gpu/precision.rs rewrites
// this line). Arithmetic stays f32.
alias act = f32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read_write> out: array<act>;

@compute @workgroup_size(64)
fn resample(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row_groups * 64u + gid.x;
    if (i >= p.batch * p.out_h * p.out_w * p.channels) {
        return;
    }
    let ch = i % p.channels;
    let px = i / p.channels;
    let ox = px % p.out_w;
    let t = px / p.out_w;
    let oy = t % p.out_h;
    let b = t / p.out_h;
    let ty = axis_taps(p.mode, oy);
    let tx = axis_taps(p.mode, ox);
    var acc = 0.0;
    for (var a = 0u; a < ty.count; a++) {
        let iy = ty.first + i32(a);
        if (iy < 0 || iy >= i32(p.height)) {
            continue;
        }
        let row = (b * p.height + u32(iy)) * p.width;
        for (var c = 0u; c < tx.count; c++) {
            let ix = tx.first + i32(c);
            if (ix < 0 || ix >= i32(p.width)) {
                continue;
            }
            acc += ty.w[a] * tx.w[c] * f32(x[(row + u32(ix)) * p.channels + ch]);
        }
    }
    out[i] = act(acc);
}
