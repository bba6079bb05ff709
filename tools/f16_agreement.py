#!/usr/bin/env python3
"""Class agreement of two sample sets of the same seeds (issue 12: f16 against f32).

Reads two seed folders written by `ddim sample --seeds A-B --out-dir DIR` (one DIR/<seed>.png
each, zero-padded), classifies every image with the project's MNIST classifier (weights/classifier) and
prints the share of seeds whose predicted class is the same in both, the confident share of
each, and the mean and largest absolute pixel difference on [0, 1] (from the 8-bit PNGs, so
differences below 1/255 round to 0 or 1/255).

    ddim sample --seeds 0-499 --out-dir /tmp/f32 --precision f32 --backend vulkan
    ddim sample --seeds 0-499 --out-dir /tmp/f16 --precision f16 --backend vulkan
    /work/venv/bin/python tools/f16_agreement.py /tmp/f32 /tmp/f16 --json tools/runs/f16.json
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_samples  # noqa: E402


def load_dir(d):
    names = sorted((int(f[:-4]), f) for f in os.listdir(d) if f.endswith(".png") and f[:-4].isdigit())
    imgs = [np.asarray(Image.open(os.path.join(d, f)).convert("L"), dtype=np.float64) / 255.0 for _, f in names]
    return [s for s, _ in names], np.stack(imgs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", help="seed folder of the reference run (f32)")
    p.add_argument("other", help="seed folder of the run to compare (f16)")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    seeds_a, a = load_dir(args.reference)
    seeds_b, b = load_dir(args.other)
    if seeds_a != seeds_b or not seeds_a:
        sys.exit(f"the folders hold different seeds ({len(seeds_a)} vs {len(seeds_b)} images)")
    classifier = eval_samples.load_classifier()
    to_model = lambda x: torch.from_numpy(x * 2.0 - 1.0).float().unsqueeze(1)  # noqa: E731
    pa, _ = eval_samples.classify(classifier, to_model(a))
    pb, _ = eval_samples.classify(classifier, to_model(b))
    ca, cb = pa.argmax(1), pb.argmax(1)
    diff = np.abs(a - b)
    res = {
        "seeds": len(seeds_a),
        "first_seed": seeds_a[0],
        "last_seed": seeds_a[-1],
        "same_class": float((ca == cb).mean()),
        "differing_seeds": [s for s, x, y in zip(seeds_a, ca, cb) if x != y],
        "confident_reference": float((pa.max(1) >= eval_samples.CONFIDENCE).mean()),
        "confident_other": float((pb.max(1) >= eval_samples.CONFIDENCE).mean()),
        "mean_abs_pixel_diff": float(diff.mean()),
        "max_abs_pixel_diff": float(diff.max()),
        "identical_images": float((diff.reshape(len(diff), -1).max(1) == 0).mean()),
    }
    print(
        f"{res['seeds']} seeds: same class for {100 * res['same_class']:.1f} % "
        f"(differ: {res['differing_seeds']}); confident {100 * res['confident_reference']:.1f} % vs "
        f"{100 * res['confident_other']:.1f} %; mean abs pixel diff {res['mean_abs_pixel_diff']:.2e} "
        f"(max {res['max_abs_pixel_diff']:.3f}); identical images {100 * res['identical_images']:.1f} %"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
