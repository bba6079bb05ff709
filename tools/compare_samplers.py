"""Score our Rust sampler against diffusers' pipelines on the same rows of the Table-1 grid (issue 6).

For each row (sampler, steps, eta) both samplers draw the same N images from the same seed:
`ddim sample --rng torch --seed S -n N` replays `DDIMPipeline(batch_size=N,
generator=torch.manual_seed(S))` (and DDPMPipeline for `ddpm`), so the two sample sets should be
the same images up to float rounding. Both are scored by tools/eval_samples.py's classifier
(confident >= 0.9, digit histogram, FD against the MNIST test set), and the images are also
compared one by one (max abs difference on [0, 1], share of samples classified alike).

    python tools/compare_samplers.py --num 100 --rows ddim:10:0 ddim:10:1 ddim:50:0 \
        --json tools/runs/compare.json

Needs a release build of the binary (`cargo build --release`); `--device` is passed to it.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_samples as ev  # noqa: E402
from train_classifier import DEFAULT_OUT as CLASSIFIER_DIR  # noqa: E402
from train_classifier import load_classifier  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_row(text):
    """`ddim:STEPS:ETA` or `ddpm` (1000 steps)."""
    parts = text.split(":")
    if parts[0] == "ddpm" and len(parts) == 1:
        return ("ddpm", 1000, 1.0)
    if parts[0] == "ddim" and len(parts) == 3:
        return ("ddim", int(parts[1]), float(parts[2]))
    raise argparse.ArgumentTypeError(f"row {text!r}: expected ddim:STEPS:ETA or ddpm")


def row_name(row):
    sampler, steps, eta = row
    return f"ddim S={steps} eta={eta:g}" if sampler == "ddim" else "ddpm 1000"


def ours(binary, model, row, num, seed, device, out):
    sampler, steps, eta = row
    cmd = [
        binary, "sample", "--model", model, "--sampler", sampler, "--steps", str(steps),
        "--eta", str(eta), "-n", str(num), "--seed", str(seed), "--rng", "torch",
        "--device", device, "--quiet", "--out", out + ".png", "--save-tensor", out,
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return load_file(out)["sample"]


def theirs(model, row, num, seed):
    sampler, steps, eta = row
    pipe = ev.load_pipeline(model, sampler)
    # One batch of `num`, generator seeded with `seed`: what `ddim sample -n num --seed seed` replays.
    return ev.generate(pipe, sampler, num, num, seed, steps, eta)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", type=parse_row, required=True)
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=os.path.join(ROOT, "weights", "mnist"))
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "ddim"))
    p.add_argument("--device", default="auto", help="passed to `ddim sample --device`")
    p.add_argument("--classifier", default=CLASSIFIER_DIR)
    p.add_argument("--json", help="append the results to this JSON file")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    classifier = load_classifier(args.classifier)
    ref = ev.reference_stats(classifier)
    results = []
    print("| row | N | confident (ours / diffusers) | FD (ours / diffusers) | max abs diff on [0, 1] | same class |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            t0 = time.time()
            a = ours(args.binary, args.model, row, args.num, args.seed, args.device, os.path.join(tmp, "x.safetensors"))
            t_ours = time.time() - t0
            t0 = time.time()
            b = theirs(args.model, row, args.num, args.seed)
            t_theirs = time.time() - t0
            sa, sb = ev.score(classifier, a, ref), ev.score(classifier, b, ref)
            # Pipelines output clamp(x/2 + 0.5, 0, 1); compare on that scale.
            ua, ub = (a.float() / 2 + 0.5).clamp(0, 1), (b.float() / 2 + 0.5).clamp(0, 1)
            max_abs = float((ua - ub).abs().max())
            pa, _ = ev.classify(classifier, a.float().clamp(-1, 1))
            pb, _ = ev.classify(classifier, b.float().clamp(-1, 1))
            same = float(np.mean(pa.argmax(1) == pb.argmax(1)))
            res = {
                "name": row_name(row),
                "n": args.num,
                "seed": args.seed,
                "ours": sa,
                "diffusers": sb,
                "max_abs_diff_01": max_abs,
                "same_class": same,
                "seconds_ours": round(t_ours, 1),
                "seconds_diffusers": round(t_theirs, 1),
                "device": args.device,
            }
            results.append(res)
            print(
                f"| {res['name']} | {args.num} | {sa['confident']:.3f} / {sb['confident']:.3f} "
                f"| {sa['fd']:.2f} / {sb['fd']:.2f} | {max_abs:.1e} | {same:.3f} |",
                flush=True,
            )
    if args.json:
        ev.append_json(args.json, results)


if __name__ == "__main__":
    main()
