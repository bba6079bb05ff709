#!/usr/bin/env python3
"""Our conv and GEMM kernels beside burn's (wgpu, WGSL, on the same adapter) and PyTorch's (CPU),
on the same shapes, measured one after the other in one invocation, printed as ratios.

The shapes are those `ddim bench --kernels --gemm` times: the burn-comparison conv (3x3,
128->128, 32x32, batch 8; our best variant), every distinct conv of the model (the variant the
plan uses; the decoder's 2x upsample, which our kernel folds into its loader, is given to the
peers as a conv on the upsampled input) and the GEMM sizes (our best GEMM kernel). burn runs in
its own process (tools/bench_peers/, built here with cargo; its first call of each shape is its
autotune, not timed); PyTorch in this one, NCHW, on `--torch-threads` threads.

    /work/venv/bin/python tools/bench_peers.py                  # bundled model, batch 8, Vulkan
    /work/venv/bin/python tools/bench_peers.py --backend gl --json peers.json
    /work/venv/bin/python tools/bench_peers.py --no-model-convs --iters 9

Not part of CI: it needs burn (built from crates.io, several minutes the first time) and torch.
Timings on a CPU adapter are noisy; read the ratios, which come from one run.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BURN_DIR = os.path.join(REPO, "tools", "bench_peers")
BURN_BIN = os.path.join(BURN_DIR, "target", "release", "burn-peer")
DDIM_BIN = os.path.join(REPO, "target", "release", "ddim")

# "conv 3x3 64+32->64 16x16 up2 s2 x1 (layer, variant)" as `ddim bench --kernels` names it.
CONV_NAME = re.compile(
    r"conv (\d+)x(\d+) (\d+)(?:\+(\d+))?->(\d+) (\d+)x(\d+)( up2)?( s2)? x(\d+) \((\S+), (\w+)\)"
)
BURN_CONV = re.compile(r"burn-comparison conv3x3 128->128 32x32 B8 \((\w+)\)")


def conv_shape(batch, cin, h, w, cout, k, stride):
    """[B, Cin, H, W, Cout, K, stride, pad] with diffusers' padding (k // 2)."""
    return [batch, cin, h, w, cout, k, stride, k // 2]


def conv_flops(s):
    b, cin, h, w, cout, k, stride, pad = s
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    return 2 * b * oh * ow * cout * cin * k * k


def our_cases(report):
    """(label, kind, shape, our GFLOP/s, our kernel) from a `ddim bench --json` report."""
    batch = report["settings"]["batch"]
    cases = []
    burn_rates = {}
    for row in report.get("kernels", []):
        m = BURN_CONV.fullmatch(row["name"])
        if m:
            burn_rates[m.group(1)] = row["gflops"]
            continue
        if not row["name"].startswith("conv "):
            continue  # norms, attention, the DDIM update
        m = CONV_NAME.fullmatch(row["name"])
        if not m:
            sys.exit(f"cannot read the conv shape from {row['name']!r}: has `ddim bench`'s naming changed?")
        kh, _, c1, c2, cout, h, w, up, s2, count, layer, variant = m.groups()
        f = 2 if up else 1
        shape = conv_shape(batch, int(c1) + int(c2 or 0), int(h) * f, int(w) * f, int(cout), int(kh), 2 if s2 else 1)
        label = f"conv {kh}x{kh} {c1}{'+' + c2 if c2 else ''}->{cout} {h}x{w}{up or ''}{s2 or ''} x{count}"
        cases.append((label, "conv", shape, row["gflops"], variant))
    if burn_rates:
        best = max(burn_rates, key=burn_rates.get)
        cases.insert(0, ("burn-comparison conv3x3 128->128 32x32 B8", "conv", conv_shape(8, 128, 32, 32, 128, 3, 1),
                         burn_rates[best], best.lower()))
    best_gemm = {}
    for row in report.get("gemm", {}).get("table", []):
        key = (row["m"], row["n"], row["k"])
        if key not in best_gemm or row["gflops"] > best_gemm[key][0]:
            best_gemm[key] = (row["gflops"], row["kernel"])
    for (m, n, k), (rate, kernel) in best_gemm.items():
        cases.append((f"gemm {m}x{n}x{k}", "gemm", [m, n, k], rate, kernel))
    return cases


def run_ours(args):
    cmd = [DDIM_BIN, "bench", "--kernels", "--gemm", "--json", "--steps", "1", "--iters", "1",
           "--warmup", str(args.warmup), "--kernel-iters", str(args.iters), "--batch", str(args.batch)]
    cmd += ["--backend", args.backend] if args.backend else []
    cmd += ["--model", args.model] if args.model else []
    for g in args.gemm_size:
        cmd += ["--gemm-size", g]
    print("==", " ".join(cmd), file=sys.stderr)
    return json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout)


def run_burn(args, cases):
    if not os.path.exists(BURN_BIN):
        print(f"== building burn's probe in {BURN_DIR} (cargo build --release)", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release"], cwd=BURN_DIR, check=True)
    cmd = [BURN_BIN, "--warmup", str(max(args.warmup, 1)), "--iters", str(args.iters)]
    for _, kind, shape, _, _ in cases:
        cmd += [f"--{kind}", ",".join(map(str, shape))]
    print("== burn-peer with", len(cases), "shapes", file=sys.stderr)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {(r["kind"], tuple(r["shape"])): r for r in rows}


def run_torch(args, cases):
    import torch

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    rows = {}
    for _, kind, shape, _, _ in cases:
        if kind == "conv":
            b, cin, h, w, cout, k, stride, pad = shape
            x = torch.randn(b, cin, h, w)
            wt = torch.randn(cout, cin, k, k)
            bias = torch.randn(cout)
            fn = lambda: torch.nn.functional.conv2d(x, wt, bias, stride=stride, padding=pad)  # noqa: E731
            flops = conv_flops(shape)
        else:
            m, n, k = shape
            a, bm = torch.randn(m, k), torch.randn(k, n)
            fn = lambda: a @ bm  # noqa: E731
            flops = 2 * m * n * k
        with torch.inference_mode():
            for _ in range(max(args.warmup, 1)):
                fn()
            times = []
            for _ in range(args.iters):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        ms = statistics.median(times)
        rows[(kind, tuple(shape))] = {"ms": ms, "gflops": flops / ms / 1e6}
    return rows, torch.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="vulkan",
                    help="our wgpu backend (default vulkan, the API burn's wgpu backend picks on Linux)")
    ap.add_argument("--model", help="model directory (default: the bundled model)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5, help="timed repetitions per shape (median)")
    ap.add_argument("--gemm-size", action="append", default=[], help="MxNxK (repeatable; default 1024x1024x1024)")
    ap.add_argument("--no-model-convs", action="store_true", help="only the burn-comparison conv and the GEMMs")
    ap.add_argument("--torch-threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--ours", help="read our report from this `ddim bench --kernels --gemm --json` file instead")
    ap.add_argument("--json", help="write every measurement and ratio here")
    ap.add_argument("--chart", help="a PNG of each shape's GFLOP/s per peer, drawn by `ddim bench --compare`")
    args = ap.parse_args()
    args.gemm_size = args.gemm_size or ["1024x1024x1024"]

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report = json.load(open(args.ours)) if args.ours else run_ours(args)
    cases = our_cases(report)
    if args.no_model_convs:
        cases = [c for c in cases if c[0].startswith(("burn-", "gemm"))]
    if not cases:
        sys.exit("our report has no kernel or GEMM rows: run ddim bench with --kernels --gemm")
    burn = run_burn(args, cases)
    torch_rows, torch_version = ({}, None) if args.no_torch else run_torch(args, cases)

    out_rows = []
    print(f"\n{'shape':44} {'ours':>8} {'burn':>8} {'torch':>8} {'ours/burn':>10} {'ours/torch':>10}  (GFLOP/s; our kernel)")
    for label, kind, shape, ours, kernel in cases:
        b = burn.get((kind, tuple(shape)), {}).get("gflops")
        t = torch_rows.get((kind, tuple(shape)), {}).get("gflops")
        fmt = lambda v: f"{v:8.2f}" if v else f"{'-':>8}"  # noqa: E731
        ratio = lambda v: f"{ours / v:10.2f}" if v else f"{'-':>10}"  # noqa: E731
        print(f"{label:44} {fmt(ours)} {fmt(b)} {fmt(t)} {ratio(b)} {ratio(t)}  {kernel}")
        out_rows.append({"label": label, "kind": kind, "shape": shape, "ours_gflops": ours, "ours_kernel": kernel,
                         "burn_gflops": b, "burn_first_call_s": burn.get((kind, tuple(shape)), {}).get("first_call_s"),
                         "torch_gflops": t, "ours_vs_burn": ours / b if b else None,
                         "ours_vs_torch": ours / t if t else None})
    if args.json:
        doc = {"schema": "ddim-peers/1", "started": started, "adapter": report.get("adapter"),
               "host": report.get("host"), "settings": {**vars(args), "torch_version": torch_version},
               "rows": out_rows}
        write_json(args.json, doc)
    if args.chart:
        chart(args, report, out_rows)


def write_json(path, doc):
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)


def chart(args, report, rows):
    """One ddim-bench/1-shaped report per peer (each shape a kernel row), beside --json (else
    beside the chart), then `ddim bench --compare` draws them: the chart code stays in one place."""
    folder = os.path.dirname(os.path.abspath(args.json or args.chart))
    adapter = report.get("adapter", {})
    peers = [("ours", f"ddim on {adapter.get('name', '?')}", adapter.get("backend", "?")),
             ("burn", "burn 0.22 (wgpu, WGSL)", "vulkan"), ("torch", "PyTorch CPU", "torch-cpu")]
    files = []
    for key, name, backend in peers:
        kernels = [{"name": r["label"], "gflops": r[f"{key}_gflops"], "share": 0.0}
                   for r in rows if r[f"{key}_gflops"]]
        if not kernels:
            continue
        doc = {"adapter": {"name": name, "backend": backend},
               "model": {"source": (report.get("model") or {}).get("source", "?")},
               "settings": {"batch": args.batch, "precision": "f32"}, "run": {"kernels": kernels}}
        path = os.path.join(folder, f"peers-{key}.json")
        write_json(path, doc)
        files.append(path)
    subprocess.run([DDIM_BIN, "bench", "--compare", *files, "--chart", args.chart], check=True)


if __name__ == "__main__":
    main()
