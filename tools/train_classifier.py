"""Train the small MNIST CNN used to score diffusion samples (issue 6).

Inputs are what the diffusion model produces: 1x32x32 in [-1, 1] (MNIST padded
by 2 pixels). Training uses random shifts of up to 2 pixels so that slightly
off-centre samples are still judged fairly. The penultimate layer (128 features)
is the feature space of the Fréchet distance in tools/eval_samples.py.

    /work/venv/bin/python tools/train_classifier.py          # ~3 epochs on 1 CPU thread
Writes weights/classifier/mnist_classifier.safetensors and
weights/classifier/metrics.json (test accuracy).
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "weights", "classifier")
WEIGHTS_NAME = "mnist_classifier.safetensors"
FEATURE_DIM = 128


class MnistClassifier(nn.Module):
    """Three conv stages (32 -> 16 -> 8 -> 4 pixels), then a 128-wide feature layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.fc1 = nn.Linear(128 * 4 * 4, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.fc2(self.dropout(self.features(x)))


def load_classifier(directory=DEFAULT_OUT):
    model = MnistClassifier()
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: run tools/train_classifier.py first")
    model.load_state_dict(load_file(path))
    return model.eval()


def random_shift(x, generator, max_shift=2):
    """Shift each image by up to max_shift pixels, filling with background (-1)."""
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


@torch.no_grad()
def accuracy(model, images, labels, batch=1000):
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        correct += (model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
    return correct / len(images)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=DEFAULT_OUT)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train_x, train_y = mnist.load_split("train")
    test_x, test_y = mnist.load_split("test")
    train_x = torch.from_numpy(mnist.to_model_range(train_x))
    test_x = torch.from_numpy(mnist.to_model_range(test_x))
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)

    model = MnistClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(train_x) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch
    )
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train_x), generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size : (s + 1) * args.batch_size]
            x = random_shift(train_x[idx], gen)
            loss = F.cross_entropy(model(x), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if s % 100 == 0:
                print(f"epoch {epoch} step {s}/{steps_per_epoch} loss {loss.item():.4f}", flush=True)
        acc = accuracy(model, test_x, test_y)
        print(f"epoch {epoch} test accuracy {acc:.4%} ({time.time() - start:.0f}s)", flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(args.out_dir, WEIGHTS_NAME))
    with open(os.path.join(args.out_dir, "metrics.json"), "w") as f:
        json.dump(
            {"test_accuracy": acc, "epochs": args.epochs, "train_seconds": round(time.time() - start, 1), "seed": args.seed},
            f,
            indent=2,
        )
    print(f"saved {args.out_dir}/{WEIGHTS_NAME}, test accuracy {acc:.4%}")


if __name__ == "__main__":
    main()
