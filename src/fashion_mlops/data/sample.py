"""Small, seeded, synthetic datasets in MNIST format: for smoke runs, tests and the reproducibility check.

Each class is a distinct shape (bars, blocks, rings, ...) drawn with random position jitter and noise, so
a CNN can learn it in a few epochs; the files are real gzip'd IDX files with a manifest of their checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from fashion_mlops.data.idx import encode_idx
from fashion_mlops.data.manifest import ROLES

SIDE = 28
FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _prototype(label: int) -> np.ndarray:
    """A 28x28 float pattern in [0, 1] that identifies one of ten classes."""
    y, x = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1)
    patterns = [
        (np.abs(x - 0.5) < 0.12),  # vertical bar
        (np.abs(y - 0.5) < 0.12),  # horizontal bar
        (np.abs(x - y) < 0.1),  # diagonal
        (np.abs(x + y - 1) < 0.1),  # anti-diagonal
        (np.abs(np.hypot(x - 0.5, y - 0.5) - 0.3) < 0.07),  # ring
        (np.hypot(x - 0.5, y - 0.5) < 0.2),  # disc
        (x < 0.5) & (y < 0.5),  # top-left block
        (x > 0.5) & (y > 0.5),  # bottom-right block
        ((np.floor(x * 4) + np.floor(y * 4)) % 2 == 0),  # checkerboard
        (np.abs(x - 0.5) < 0.1) | (np.abs(y - 0.5) < 0.1),  # cross
    ]
    return patterns[label % len(patterns)].astype(np.float32)


def synthetic_images(labels: np.ndarray, rng: np.random.Generator, noise: float = 0.25) -> np.ndarray:
    """uint8 N x 28 x 28 images of the labelled classes, jittered by up to 2 pixels, with noise."""
    images = np.empty((len(labels), SIDE, SIDE), dtype=np.uint8)
    for i, label in enumerate(labels):
        shifted = np.roll(_prototype(int(label)), tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        pixels = 0.8 * shifted + noise * rng.random((SIDE, SIDE), dtype=np.float32)
        images[i] = np.clip(pixels * 255, 0, 255).astype(np.uint8)
    return images


def write_sample_dataset(
    dest: Path, n_train: int = 600, n_test: int = 200, seed: int = 0, classes: int = 10, gz: bool = True
) -> Path:
    """Write four IDX files (gzip'd with a fixed mtime, so bytes are reproducible) and `manifest.json`."""
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % classes).astype(np.uint8)
        rng.shuffle(labels)
        arrays[f"{part}_images"] = synthetic_images(labels, rng)
        arrays[f"{part}_labels"] = labels
    files = {}
    for role in ROLES:
        raw = encode_idx(arrays[role])
        name = FILE_NAMES[role]
        if gz:
            (dest / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
        else:
            (dest / name).write_bytes(raw)
        files[role] = {"name": name, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    manifest = {
        "name": f"synthetic-{classes}-classes",
        "classes": [f"shape-{i}" for i in range(classes)],
        "files": files,
    }
    path = dest / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
