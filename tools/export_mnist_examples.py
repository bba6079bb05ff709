"""Writes weights/mnist/examples/digit_<label>.png: one MNIST *test* image per digit, padded to
32x32 like the training data, for `ddim invert --report` (DDIM inversion / reconstruction error).

Run: /work/venv/bin/python tools/export_mnist_examples.py
"""
import os

import numpy as np
from PIL import Image

from mnist import load_split

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights", "mnist", "examples")


def main():
    images, labels = load_split("test")
    os.makedirs(OUT, exist_ok=True)
    for digit in range(10):
        index = int(np.flatnonzero(labels == digit)[0])  # the first test image of each digit
        padded = np.zeros((32, 32), dtype=np.uint8)
        padded[2:30, 2:30] = images[index]
        Image.fromarray(padded, mode="L").save(os.path.join(OUT, f"digit_{digit}.png"))
        print(f"digit {digit}: test index {index}")


if __name__ == "__main__":
    main()
