"""Score diffusion samples with the MNIST classifier (issue 6).

Metrics for a set of samples x in [-1, 1], shape [N, 1, 32, 32]:
  * confident: fraction whose top class probability is >= 0.9;
  * histogram: fraction of samples per predicted digit (all samples);
  * fd: Fréchet distance between Gaussian fits of the classifier's 128-d
    penultimate features of the samples and of the 10,000 MNIST test images.
    FD is biased upwards for small N; compare numbers only at equal N.

Sources of samples:
    # a tensor written by our Rust sampler (`ddim sample --save-tensor FILE`):
    python tools/eval_samples.py --tensor samples.safetensors
    # diffusers' DDIM pipeline on our weights:
    python tools/eval_samples.py --sampler ddim --steps 50 --eta 0 --num 1000
    # diffusers' DDPM pipeline, 1000 steps:
    python tools/eval_samples.py --sampler ddpm --num 200
    # the FD floor: real training images scored the same way, at the same N:
    python tools/eval_samples.py --real-baseline --num 200
    # the grid of Table 1 of the DDIM paper (S = 10, 20, 50, 100; eta 0 and 1; DDPM 1000):
    python tools/eval_samples.py --table --num 200 --ddpm-num 100 --json tools/runs/table.json

Sampling noise is seeded with torch.Generator().manual_seed(seed + batch_index).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from diffusers import DDIMPipeline, DDPMPipeline
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist  # noqa: E402
from train_classifier import DEFAULT_OUT as CLASSIFIER_DIR  # noqa: E402
from train_classifier import load_classifier  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "weights", "mnist")
CONFIDENCE = 0.9
TABLE_STEPS = (10, 20, 50, 100)
TABLE_ETAS = (0.0, 1.0)


@torch.no_grad()
def classify(classifier, x, batch=500):
    """Return (probabilities [N,10], features [N,128]) as float64 numpy arrays."""
    probs, feats = [], []
    for i in range(0, len(x), batch):
        f = classifier.features(x[i : i + batch])
        probs.append(torch.softmax(classifier.fc2(f), dim=1).double())
        feats.append(f.double())
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()


def _sqrtm_psd(a):
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2):
    """||mu1-mu2||^2 + Tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), stable for PSD matrices."""
    s1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(s1 @ cov2 @ s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(cross))


def gaussian_fit(features):
    return features.mean(axis=0), np.cov(features, rowvar=False)


def reference_stats(classifier):
    images, _ = mnist.load_split("test")
    _, feats = classify(classifier, torch.from_numpy(mnist.to_model_range(images)))
    return gaussian_fit(feats)


def score(classifier, x, ref):
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 32, 32):
        raise ValueError(f"samples must be [N,1,32,32], got {tuple(x.shape)}")
    probs, feats = classify(classifier, x.float().clamp(-1, 1))
    pred = probs.argmax(1)
    hist = np.bincount(pred, minlength=10) / len(pred)
    mu, cov = gaussian_fit(feats)
    return {
        "n": int(len(x)),
        "confident": float((probs.max(1) >= CONFIDENCE).mean()),
        "histogram": [round(float(h), 4) for h in hist],
        "fd": frechet_distance(mu, cov, *ref),
    }


def load_pipeline(model_dir, sampler):
    cls = DDIMPipeline if sampler == "ddim" else DDPMPipeline
    pipe = cls.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, sampler, num, batch, seed, steps=50, eta=0.0):
    """Samples in [-1, 1] (the pipelines return [0, 1] images, clipped)."""
    out = []
    for b, start in enumerate(range(0, num, batch)):
        n = min(batch, num - start)
        gen = torch.Generator().manual_seed(seed + b)
        if sampler == "ddim":
            res = pipe(batch_size=n, generator=gen, num_inference_steps=steps, eta=eta, output_type="np")
        else:
            res = pipe(batch_size=n, generator=gen, num_inference_steps=1000, output_type="np")
        imgs = torch.from_numpy(np.asarray(res.images)).permute(0, 3, 1, 2)
        out.append(imgs * 2.0 - 1.0)
    return torch.cat(out)


def save_grid(x, path, cols=10):
    from PIL import Image

    n = min(len(x), cols * cols)
    rows = (n + cols - 1) // cols
    u8 = ((x[:n, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    grid = np.zeros((rows * 32, cols * 32), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] = u8[i]
    Image.fromarray(grid).resize((cols * 64, rows * 64), Image.NEAREST).save(path)


def append_json(path, results):
    """Appends `results` to the JSON list in `path` (created if missing)."""
    previous = []
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    with open(path, "w") as f:
        json.dump(previous + results, f, indent=2)


def describe(name, res, seconds=None):
    hist = " ".join(f"{d}:{h:.3f}" for d, h in enumerate(res["histogram"]))
    t = f" ({seconds:.0f}s)" if seconds is not None else ""
    return f"{name}: n={res['n']} confident>={CONFIDENCE}: {res['confident']:.3f} FD={res['fd']:.3f}{t}\n  digits {hist}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--classifier", default=CLASSIFIER_DIR)
    p.add_argument("--tensor", help="safetensors file with a tensor named 'sample' in [-1,1], NCHW")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--ddpm-num", type=int, default=None, help="sample count for the DDPM row of --table")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true")
    p.add_argument(
        "--real-baseline",
        action="store_true",
        help="score the first --num MNIST training images: the FD floor for that sample count",
    )
    p.add_argument("--grid", help="write a 10x10 PNG grid of the first samples")
    p.add_argument("--save-samples", help="write the generated samples as safetensors ('sample')")
    p.add_argument("--json", help="append the results to this JSON file")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    classifier = load_classifier(args.classifier)
    ref = reference_stats(classifier)
    results = []

    def run(name, fn):
        t0 = time.time()
        x = fn()
        res = score(classifier, x, ref)
        res.update(name=name, seconds=round(time.time() - t0, 1))
        print(describe(name, res, res["seconds"]), flush=True)
        results.append(res)
        return x

    if args.tensor:
        tensors = load_file(args.tensor)
        if "sample" not in tensors:
            raise KeyError(f"{args.tensor}: no tensor named 'sample' (found {sorted(tensors)})")
        x = run(os.path.basename(args.tensor), lambda: tensors["sample"])
    elif args.real_baseline:
        images, _ = mnist.load_split("train")
        x = run(f"mnist train[:{args.num}]", lambda: torch.from_numpy(mnist.to_model_range(images[: args.num])))
    elif args.table:
        ddim = load_pipeline(args.model, "ddim")
        for eta in TABLE_ETAS:
            for s in TABLE_STEPS:
                run(
                    f"ddim S={s} eta={eta:g}",
                    lambda: generate(ddim, "ddim", args.num, args.batch, args.seed, s, eta),
                )
        ddpm = load_pipeline(args.model, "ddpm")
        n = args.ddpm_num or args.num
        x = run("ddpm 1000", lambda: generate(ddpm, "ddpm", n, args.batch, args.seed))
    else:
        pipe = load_pipeline(args.model, args.sampler)
        name = f"ddim S={args.steps} eta={args.eta:g}" if args.sampler == "ddim" else "ddpm 1000"
        x = run(name, lambda: generate(pipe, args.sampler, args.num, args.batch, args.seed, args.steps, args.eta))

    if args.grid:
        save_grid(x, args.grid)
    if args.save_samples:
        from safetensors.torch import save_file

        save_file({"sample": x.contiguous()}, args.save_samples)
    if args.json:
        append_json(args.json, results)


if __name__ == "__main__":
    main()
