"""Draw the training-loss curve from the checkpoint's loss log as a PNG (PIL only).

    /work/venv/bin/python tools/plot_loss.py [--checkpoint ...] [--out weights/mnist/loss.png]
"""

import argparse
import math
import os

import torch
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smooth(values, half_width):
    """Centred moving average (the window shrinks at the ends, so the start is not lagged)."""
    out = []
    for i in range(len(values)):
        k = min(half_width, i, len(values) - 1 - i)
        window = values[i - k : i + k + 1]
        out.append(sum(window) / len(window))
    return out


def draw(steps, losses, path, width=800, height=450, margin=60):
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    ys = [math.log10(v) for v in losses]
    y_lo, y_hi = math.floor(min(ys) * 10) / 10, math.ceil(max(ys) * 10) / 10
    x_hi = max(steps)

    def px(step, y):
        x = margin + (width - 2 * margin) * step / x_hi
        yy = height - margin - (height - 2 * margin) * (y - y_lo) / max(y_hi - y_lo, 1e-9)
        return x, yy

    d.rectangle([margin, margin, width - margin, height - margin], outline="black")
    # y grid at decades and 2x/5x marks
    for e in range(math.floor(y_lo), math.ceil(y_hi) + 1):
        for m in (1, 2, 5):
            y = math.log10(m) + e
            if y_lo <= y <= y_hi:
                _, yy = px(0, y)
                d.line([margin, yy, width - margin, yy], fill=(220, 220, 220))
                d.text((5, yy - 6), f"{m * 10.0**e:g}", fill="black")
    for i in range(6):
        s = x_hi * i / 5
        x, _ = px(s, y_lo)
        d.text((x - 15, height - margin + 8), f"{int(s)}", fill="black")
    d.text((width // 2 - 20, height - 25), "step", fill="black")
    d.text((margin, 20), "training loss (MSE on epsilon), log scale; grey: per 50 steps, blue: smoothed", fill="black")
    pts = [px(s, y) for s, y in zip(steps, ys)]
    d.line(pts, fill=(180, 180, 180), width=1)
    sm = [px(s, y) for s, y in zip(steps, smooth(ys, 4))]
    d.line(sm, fill=(30, 80, 200), width=2)
    img.save(path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "weights", "mnist", "checkpoint", "train_state.pt"))
    p.add_argument("--out", default=os.path.join(ROOT, "weights", "mnist", "loss.png"))
    args = p.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    log = state["loss_log"]
    if len(log) < 2:
        raise SystemExit(f"{args.checkpoint}: only {len(log)} loss entries, nothing to plot")
    draw([r[0] for r in log], [r[1] for r in log], args.out)
    print(f"wrote {args.out} ({len(log)} points, last step {log[-1][0]}, loss {log[-1][1]:.5f})")


if __name__ == "__main__":
    main()
