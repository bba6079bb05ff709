// Subgroup version of gn_combine (appended to group_norm.wgsl, whose Params, bindings and
// partials layout it uses): one 64-invocation workgroup per (batch, group) instead of one
// serial invocation. Each lane merges a strided share of the group's (chunk, channel) partials
// with Chan's formula; the lanes' (count, mean, M2) are then combined with subgroup sums —
// N = Σ n, mean = Σ n·mean / N, M2 = Σ (M2 + n·(mean_l − mean)²), the exact pooled formula —
// and the subgroups' sums through workgroup memory, which works for any subgroup size.

const SG_WG: u32 = 64u;

// One entry per subgroup: at most SG_WG (subgroups of one lane).
var<workgroup> sg_partial: array<vec2<f32>, SG_WG>;

// The workgroup's sum of `v`, returned to every lane: subgroup sums, then one sum over them.
fn workgroup_sum(v: vec2<f32>, lane: u32, sg: u32, n_sg: u32) -> vec2<f32> {
    let s = subgroupAdd(v);
    if lane == 0u {
        sg_partial[sg] = s;
    }
    workgroupBarrier();
    var total = vec2<f32>(0.0);
    for (var k = 0u; k < n_sg; k++) {
        total += sg_partial[k];
    }
    // Every lane has read the partials before the next call overwrites them.
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(64)
fn gn_combine_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    let idx = wid.y * nwg.x + wid.x;
    if idx >= p.batch * p.groups {
        return;
    }
    let b = idx / p.groups;
    let g = idx % p.groups;
    let cpg = p.channels / p.groups;
    let items = p.num_chunks * cpg;
    var s = vec3<f32>(0.0); // this lane's (count, mean, M2)
    for (var i = li; i < items; i += SG_WG) {
        let chunk = i / cpg;
        let j = i - chunk * cpg;
        s = chan_merge(s, partials[(b * p.num_chunks + chunk) * p.channels + g * cpg + j]);
    }
    let n = s.x;
    let mean = s.y;
    let m2 = s.z;
    let sums = workgroup_sum(vec2<f32>(n, n * mean), lane, sg, n_sg);
    let total_n = sums.x;
    let group_mean = sums.y / total_n;
    let d = mean - group_mean;
    let total_m2 = workgroup_sum(vec2<f32>(m2 + n * d * d, 0.0), lane, sg, n_sg).x;
    let var_biased = max(total_m2 / total_n, 0.0);
    let rstd = 1.0 / sqrt(var_biased + p.eps);
    for (var j = li; j < cpg; j += SG_WG) {
        let ch = g * cpg + j;
        coef[b * p.channels + ch] = vec4<f32>(group_mean, rstd * gamma[ch], beta[ch], 0.0);
    }
}
