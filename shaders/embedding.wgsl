// Class embeddings added to the per-step time-embedding table, once per plan (the labels are
// fixed for a sampling run): emb[s, b, :] += rows[labels[b], :] for every step s. `rows` is
// `class_embedding.weight` [K, T] gathered by label, or the `timestep`-type class MLP's [B, T]
// output with labels[b] = b. diffusers adds the class embedding after the time MLP and before
// the resnets' SiLU + projection, which read this table.

struct Params {
    rows: u32,       // steps · B rows of emb
    batch: u32,      // B: row r belongs to image r % B
    width: u32,      // T
    row_groups: u32, // workgroups per grid row (2-D grid)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read> rows: array<f32>;
@group(0) @binding(3) var<storage, read_write> emb: array<f32>;

@compute @workgroup_size(64)
fn add_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row_groups * 64u + gid.x;
    if (i >= p.rows * p.width) {
        return;
    }
    let r = i / p.width;
    let c = i % p.width;
    emb[i] += rows[labels[r % p.batch] * p.width + c];
}
