"""Regenerates the row kernels (conv_rows8, conv_rows16) inside shaders/conv2d.wgsl.

The kernels are fully unrolled (one variable per pixel accumulator and input column): indexed
private arrays stayed in memory on lavapipe and ran 2x slower. Run from anywhere:
    python3 tools/gen_conv2d_rows.py
It replaces the text between the "register-tiled rows" marker and the workgroup-tiled section.
"""
import sys
def gen(TP, header):
    L=[]
    if header:
        L.append("// ---- register-tiled rows: 3×3, stride 1 ---------------------------------------------")
        L.append("// Each invocation computes TP consecutive pixels of one output row × 4 channels (the")
        L.append("// workgroup's vec4 column, a uniform weight address). Neighbouring pixels share input")
        L.append("// columns, so each (ky, ci) reads TP + 2 input values instead of 3·TP. TP = 16 for rows of")
        L.append("// 16 pixels or more, 8 below (lavapipe, 128→128 at 32×32: TP 6 / 8 / 16 / 32 gave 5.7 / 7.2 /")
        L.append("// 8.5 / 9.2 GFLOP per CPU-second; the 4×8 general kernel 5.4). Generated code: the unrolled")
        L.append("// names keep everything in registers (indexed private arrays were 2× slower).\n")
        L.append("const ROW_WG: u32 = 64u;\n")
    L.append("@compute @workgroup_size(64, 1, 1)")
    L.append(f"fn conv_rows{TP}(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {{")
    L.append("    let nv = wid.x;")
    L.append("    let col = min(nv, p.cout_v - 1u);")
    L.append(f"    let segs = (p.out_w + {TP}u - 1u) / {TP}u;")
    L.append("    let seg_total = p.batch * p.out_h * segs;")
    L.append("    let sidx = m_group(wid) * ROW_WG + lid.x;")
    L.append("    let valid = sidx < seg_total;")
    L.append("    // No barriers here, so idle invocations may leave at once (on a CPU adapter a SIMD")
    L.append("    // batch of idle lanes then costs nothing: small layers leave many idle).")
    L.append("    if (!valid) {")
    L.append("        return;")
    L.append("    }")
    L.append("    let s = select(0u, sidx, valid);")
    L.append(f"    let ox0 = (s % segs) * {TP}u;")
    L.append("    let row = s / segs; // b * out_h + oy")
    L.append("    let oy = row % p.out_h;")
    L.append("    let b = row / p.out_h;")
    L.append("    let cin = p.c1 + p.c2;")
    for i in range(TP):
        L.append(f"    var acc{i} = vec4<f32>(0.0);")
    L.append("    for (var ky = 0u; ky < 3u; ky++) {")
    L.append("        let iy = i32(oy + ky) - i32(p.pad_top);")
    for c in range(TP+2):
        L.append(f"        let s{c} = src_pixel(b, iy, i32(ox0 + {c}u) - i32(p.pad_left));")
        L.append(f"        let in{c} = valid && s{c} >= 0;")
        L.append(f"        let o{c} = select(0u, u32(s{c}), in{c});")
    for (buf,cnt,koff) in [("x_a","p.c1","0u"),("x_b","p.c2","p.c1")]:
        L.append(f"        for (var ci = 0u; ci < {cnt}; ci++) {{")
        L.append(f"            let k0 = (ky * 3u * cin + {koff} + ci) * p.cout_v + col;")
        L.append("            let w0 = w[k0];")
        L.append("            let w1 = w[k0 + cin * p.cout_v];")
        L.append("            let w2 = w[k0 + 2u * cin * p.cout_v];")
        for c in range(TP+2):
            L.append(f"            let v{c} = select(0.0, {buf}[o{c} * {cnt} + ci], in{c});")
        for i in range(TP):
            L.append(f"            acc{i} += v{i} * w0 + v{i+1} * w1 + v{i+2} * w2;")
        L.append("        }")
    L.append("    }")
    L.append("    let m0 = row * p.out_w + ox0;")
    L.append("    var px = pixel(m0);")
    for i in range(TP):
        L.append(f"    px = pixel(m0 + {i}u);")
        L.append(f"    px.valid = valid && ox0 + {i}u < p.out_w;")
        L.append(f"    epilogue(m0 + {i}u, px, nv, acc{i});")
    L.append("}\n")
    return "\n".join(L)
import os
p=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shaders', 'conv2d.wgsl')
s=open(p).read()
marker="// ---- register-tiled rows"
if marker in s:
    a=s.index(marker); e=s.index("// ---- workgroup-memory tiled variant")
    s=s[:a]+gen(8, True)+gen(16, False)+"\n"+s[e:]
else:
    e=s.index("// ---- workgroup-memory tiled variant")
    s=s[:e]+gen(8, True)+gen(16, False)+"\n"+s[e:]
open(p,'w').write(s)
