"""Quality of DDIM (eta 0) against DPM-Solver++(2M) and UniPC(2) at equal model evaluations,
measured with our own sampler on the bundled MNIST model and scored by the project's classifier
(tools/eval_samples.py: confident share >= 0.9 and FD against the MNIST test set).

Each row runs `ddim sample --sampler S --steps K -n N --seed SEED --rng torch --save-tensor`; all
rows use the same seed, hence the same x_T. Rows are appended to the JSON file as they finish, so
an interrupted run keeps what it has (rows already in the file are skipped when run again).

    python tools/solver_quality.py --num 500 --evals 5 10 20 50 --json weights/mnist/solvers.json

Needs a release build of the binary (`cargo build --release`).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_samples as ev  # noqa: E402
from train_classifier import DEFAULT_OUT as CLASSIFIER_DIR  # noqa: E402
from train_classifier import load_classifier  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLERS = ["ddim", "dpm-solver++", "unipc"]


def sample(binary, model, sampler, evals, num, seed, device, out):
    cmd = [
        binary, "sample", "--model", model, "--sampler", sampler, "--steps", str(evals),
        "-n", str(num), "--seed", str(seed), "--rng", "torch", "--device", device, "--quiet",
        "--out", out + ".png", "--save-tensor", out,
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return load_file(out)["sample"]


def load_rows(path):
    if path and os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    return []


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--evals", nargs="+", type=int, default=[5, 10, 20, 50])
    p.add_argument("--samplers", nargs="+", default=SAMPLERS, choices=SAMPLERS)
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=os.path.join(ROOT, "weights", "mnist"))
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "ddim"))
    p.add_argument("--device", default="auto", help="passed to `ddim sample --device`")
    p.add_argument("--classifier", default=CLASSIFIER_DIR)
    p.add_argument("--json", help="rows are kept in (and appended to) this JSON list")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    classifier = load_classifier(args.classifier)
    ref = ev.reference_stats(classifier)
    rows = load_rows(args.json)
    print("| evaluations | sampler | N | confident | FD | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for evals in args.evals:
            for sampler in args.samplers:
                done = [r for r in rows if (r["sampler"], r["evals"], r["n"], r["seed"]) ==
                        (sampler, evals, args.num, args.seed)]
                if done:
                    r = done[0]
                else:
                    t0 = time.time()
                    x = sample(args.binary, args.model, sampler, evals, args.num, args.seed,
                               args.device, os.path.join(tmp, "x.safetensors"))
                    s = ev.score(classifier, x, ref)
                    r = {"sampler": sampler, "evals": evals, "n": args.num, "seed": args.seed,
                         "confident": s["confident"], "fd": s["fd"], "histogram": s["histogram"],
                         "seconds": round(time.time() - t0, 1), "device": args.device,
                         "date": time.strftime("%Y-%m-%d")}
                    rows.append(r)
                    if args.json:
                        with open(args.json, "w") as fh:
                            json.dump(rows, fh, indent=1)
                print(f"| {evals} | {sampler} | {r['n']} | {r['confident']:.3f} | {r['fd']:.2f} "
                      f"| {r['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
