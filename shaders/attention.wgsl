// Row softmax for multi-head attention, in place over the score matrix S [rows, len]
// (rows = batch * heads * queries), logits in f32 with the row maximum subtracted first.
// The rest of the attention block is matrix products (linear.wgsl):
//   qkv = h Wqkv^T + b  ->  S = Q K^T / sqrt(d)  ->  softmax(S)  ->  O = S V  ->  out = O Wo^T + b + x
// One invocation per row and three sweeps over it (max, sum of exponentials, normalise): no
// workgroup memory and no barriers, which suits lavapipe; rows are at most a few thousand long.

struct Params {
    rows: u32,
    len: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> s: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn softmax_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.y * nwg.x * WG + gid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.len;
    var mx = s[base];
    for (var j = 1u; j < p.len; j++) {
        mx = max(mx, s[base + j]);
    }
    var sum = 0.0;
    for (var j = 0u; j < p.len; j++) {
        let e = exp(s[base + j] - mx);
        s[base + j] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var j = 0u; j < p.len; j++) {
        s[base + j] *= inv;
    }
}
