#!/usr/bin/env python3
"""The `ddim bench` measurement through diffusers' DDIMPipeline on PyTorch, for a side-by-side
comparison: same model, batch, steps (eta 0), warm-up and repetitions, and the same JSON fields
(schema ddim-bench/1: adapter, settings, model, forward_gflops, run.{run_ms, images_per_s,
step_ms, forward_ms, forward_gflops, cpu_s_per_run, gflop_per_cpu_s}).

The FLOP count follows the Rust crate's convention (src/model/unet.rs): 2 x multiply-adds of
convolutions, linear layers and the attention matmuls (q k^T and p v); norms, activations and
additions are not counted. It is measured here with forward hooks, so it cross-checks
`ddim info`.

    /work/venv/bin/python tools/bench_torch.py                      # bundled MNIST model
    /work/venv/bin/python tools/bench_torch.py --arch cifar10 --batch 8 --steps 10 --json
    /work/venv/bin/python tools/bench_torch.py --model DIR --device cuda

On a shared, busy machine pass --threads 1: PyTorch's worker threads spin-wait and lose badly
to oversubscription (measured here at load ~5 on 2 cores: 2 threads 1100 ms per MNIST step at
batch 8, 1 thread 93 ms).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import time

import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# google/ddpm-cifar10-32's UNet2DModel config (matches UNet2DConfig::cifar10() in Rust).
CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    flip_sin_to_cos=False,
    freq_shift=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    downsample_padding=0,
    attention_head_dim=None,
    norm_eps=1e-6,
)


def summary(values):
    s = sorted(values)
    n = len(s)

    def q(p):
        pos = p * (n - 1)
        lo, hi = int(pos // 1), int(-(-pos // 1))
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return dict(median=q(0.5), min=s[0], max=s[-1], q1=q(0.25), q3=q(0.75), n=n)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def count_flops(unet, x, t):
    """FLOPs of one forward at x's batch, by the crate's convention."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total += 2 * out.numel() * k

    def linear_hook(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    def attn_hook(m, inp, out):
        nonlocal total
        h = inp[0]
        b = h.shape[0]
        tokens = h.shape[2] * h.shape[3] if h.dim() == 4 else h.shape[1]
        inner = m.inner_dim
        total += 2 * 2 * b * tokens * tokens * inner  # q k^T and p v, over all heads

    handles = []
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, Attention):
            handles.append(m.register_forward_hook(attn_hook))
    with torch.no_grad():
        unet(x, t)
    for h in handles:
        h.remove()
    return total


def load(args):
    if args.arch == "cifar10":
        torch.manual_seed(args.seed)
        unet = UNet2DModel(**CIFAR10)
        return unet, DDIMScheduler(), f"arch:cifar10 (random weights, torch seed {args.seed})"
    path = args.model or os.path.join(REPO, "weights", "mnist")
    if os.path.isdir(os.path.join(path, "unet")):
        unet = UNet2DModel.from_pretrained(path, subfolder="unet", low_cpu_mem_usage=False)
        sched = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
    else:
        unet = UNet2DModel.from_pretrained(path, low_cpu_mem_usage=False)
        cfg = os.path.join(path, "scheduler_config.json")
        sched = DDIMScheduler.from_pretrained(path) if os.path.exists(cfg) else DDIMScheduler()
    label = "bundled (weights/mnist)" if args.model is None else path
    return unet, sched, label


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="diffusers model directory (default: weights/mnist)")
    p.add_argument("--arch", choices=["cifar10"], help="cifar10: google/ddpm-cifar10-32, random weights")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    unet, sched, label = load(args)
    unet = unet.to(dev).eval()
    pipe = DDIMPipeline(unet=unet, scheduler=sched).to(dev)
    pipe.set_progress_bar_config(disable=True)
    c, h, w = unet.config.in_channels, unet.config.sample_size, unet.config.sample_size
    x = torch.randn(args.batch, c, h, w, device=dev)
    t = torch.full((args.batch,), 999, device=dev, dtype=torch.long)
    flops = count_flops(unet, x, t)
    params = sum(q.numel() for q in unet.parameters())

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elif dev.type == "mps":
            torch.mps.synchronize()

    def timed(fn):
        for _ in range(args.warmup):
            fn()
        sync()
        cpu0 = cpu_seconds()
        ns = []
        for _ in range(max(1, args.iters)):
            t0 = time.perf_counter_ns()
            fn()
            sync()
            ns.append(time.perf_counter_ns() - t0)
        return ns, (cpu_seconds() - cpu0) / max(1, args.iters)

    def run():
        g = torch.Generator(device="cpu").manual_seed(args.seed)
        with torch.no_grad():
            pipe(batch_size=args.batch, generator=g, num_inference_steps=args.steps, eta=0.0,
                 output_type="np")

    def forward():
        with torch.no_grad():
            unet(x, t)

    run_ns, cpu_run = timed(run)
    fwd_ns, _ = timed(forward)
    run_s = summary(run_ns)
    fwd_s = summary(fwd_ns)
    ms = lambda s: {k: (v / 1e6 if k != "n" else v) for k, v in s.items()}
    forward_gflops = flops / fwd_s["median"]
    threads = torch.get_num_threads()
    doc = dict(
        schema="ddim-bench/1",
        build=dict(crate_name="diffusers", version=__import__("diffusers").__version__,
                   torch=torch.__version__, profile="release"),
        host=dict(os=platform.system().lower(), arch=platform.machine(), cpus=os.cpu_count(),
                  load_avg_1m=os.getloadavg()[0]),
        adapter=dict(name=f"PyTorch {dev.type} ({threads} threads)" if dev.type == "cpu"
                     else f"PyTorch {dev.type}: " + (torch.cuda.get_device_name() if dev.type == "cuda" else dev.type),
                     backend=f"torch-{dev.type}", driver=torch.__version__, driver_info="",
                     device_type="cpu" if dev.type == "cpu" else "gpu", vendor_id=0, device_id=0,
                     timestamp_query=False),
        settings=dict(device=args.device, batch=args.batch, steps=args.steps, sampler="ddim", eta=0.0,
                      warmup=args.warmup, iters=args.iters, kernel_iters=0),
        model=dict(source=label, image=[c, h, w], params=params, weights_bytes=4 * params,
                   gflop_per_image=flops / args.batch / 1e9, gflop_per_forward=flops / 1e9),
        forward_gflops=forward_gflops,
        run=dict(
            run_ms=ms(run_s),
            images_per_s=args.batch / (run_s["median"] * 1e-9),
            step_ms=run_s["median"] / 1e6 / args.steps,
            forward_ms=ms(fwd_s),
            forward_gflops=forward_gflops,
            cpu_s_per_run=cpu_run,
            gflop_per_cpu_s=(flops * args.steps / 1e9 / cpu_run) if cpu_run > 0 else None,
            kernels=[],
            dispatches=[],
        ),
    )
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        r = doc["run"]
        print(f"adapter: {doc['adapter']['name']}; load average {doc['host']['load_avg_1m']:.2f}")
        print(f"model: {label} — {params / 1e6:.2f} M params, {flops / args.batch / 1e9:.3f} GFLOP per image")
        print(f"run ({args.steps} DDIM steps, batch {args.batch}): {r['run_ms']['median']:.1f} ms "
              f"({r['run_ms']['min']:.1f}–{r['run_ms']['max']:.1f}), {r['images_per_s']:.3f} images/s, "
              f"{r['step_ms']:.2f} ms/step")
        print(f"forward: {r['forward_ms']['median']:.2f} ms → forward_gflops {forward_gflops:.2f}")
        if r["gflop_per_cpu_s"]:
            print(f"work per CPU-second: {r['gflop_per_cpu_s']:.2f} GFLOP/s")


if __name__ == "__main__":
    main()
