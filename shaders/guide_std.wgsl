// The guidance rescale's per-image ratio r = std(c)/std(g) (torch's unbiased std over C·H·W),
// for guide.wgsl: one workgroup per image, two passes (means, then squared deviations), each a
// strided per-invocation sum and a tree reduction in workgroup memory. `model_out` holds the
// doubled batch (null half, then class half); g = u + w·(c − u) as the update reads it.

struct Guide {
    on: u32,
    numel: u32,
    per_sample: u32,
    rescale: u32,
    w: f32,
    phi: f32,
    keep: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> guide: Guide;
@group(0) @binding(1) var<storage, read> model_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> guide_ratio: array<f32>;

const WG: u32 = 256u;
var<workgroup> sum_c: array<f32, 256>;
var<workgroup> sum_g: array<f32, 256>;

fn reduce(lid: u32) {
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            sum_c[lid] += sum_c[lid + half];
            sum_g[lid] += sum_g[lid + half];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn guide_std(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * guide.per_sample;
    let n = f32(guide.per_sample);
    var c_acc = 0.0;
    var g_acc = 0.0;
    for (var j = lid; j < guide.per_sample; j += WG) {
        let u = model_out[base + j];
        let c = model_out[guide.numel + base + j];
        c_acc += c;
        g_acc += u + guide.w * (c - u);
    }
    sum_c[lid] = c_acc;
    sum_g[lid] = g_acc;
    workgroupBarrier();
    reduce(lid);
    let mean_c = sum_c[0] / n;
    let mean_g = sum_g[0] / n;
    workgroupBarrier();
    c_acc = 0.0;
    g_acc = 0.0;
    for (var j = lid; j < guide.per_sample; j += WG) {
        let u = model_out[base + j];
        let c = model_out[guide.numel + base + j];
        let g = u + guide.w * (c - u);
        c_acc += (c - mean_c) * (c - mean_c);
        g_acc += (g - mean_g) * (g - mean_g);
    }
    sum_c[lid] = c_acc;
    sum_g[lid] = g_acc;
    workgroupBarrier();
    reduce(lid);
    if lid == 0u {
        // The (n − 1) of the unbiased std cancels in the ratio, as does the square root's order.
        guide_ratio[wid.x] = sqrt(sum_c[0]) / sqrt(sum_g[0]);
    }
}
