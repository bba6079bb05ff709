// Subgroup version of softmax_rows (appended to attention.wgsl, whose Params and binding it
// uses): one 64-invocation workgroup per row. Lanes sweep the row with a stride of 64, so
// neighbouring lanes touch neighbouring values; the row maximum and the sum of exponentials are
// reduced with subgroupMax / subgroupAdd, and across subgroups through workgroup memory (any
// subgroup size works). As in softmax_rows, logits stay f32 with the maximum subtracted first.

const SM_WG: u32 = 64u;

var<workgroup> sm_partial: array<f32, SM_WG>;

@compute @workgroup_size(64)
fn softmax_rows_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    let row = wid.y * nwg.x + wid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.len;
    var mx = s[base];
    for (var j = li; j < p.len; j += SM_WG) {
        mx = max(mx, s[base + j]);
    }
    mx = subgroupMax(mx);
    if lane == 0u {
        sm_partial[sg] = mx;
    }
    workgroupBarrier();
    mx = sm_partial[0];
    for (var k = 1u; k < n_sg; k++) {
        mx = max(mx, sm_partial[k]);
    }
    workgroupBarrier();
    var sum = 0.0;
    for (var j = li; j < p.len; j += SM_WG) {
        let e = exp(s[base + j] - mx);
        s[base + j] = e;
        sum += e;
    }
    sum = subgroupAdd(sum);
    if lane == 0u {
        sm_partial[sg] = sum;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var k = 0u; k < n_sg; k++) {
        total += sm_partial[k];
    }
    // Each lane scales the values it wrote itself: no barrier needed before this sweep.
    let inv = 1.0 / total;
    for (var j = li; j < p.len; j += SM_WG) {
        s[base + j] *= inv;
    }
}
