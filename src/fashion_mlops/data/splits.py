"""Verified IDX files -> in-memory uint8 tensors, with a seeded, stratified validation split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from fashion_mlops.data.idx import parse_idx
from fashion_mlops.data.manifest import Manifest
from fashion_mlops.data.verify import verified_bytes
from fashion_mlops.errors import DataError


@dataclass(frozen=True)
class Split:
    """Images as uint8 N x 1 x 28 x 28 and labels as int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split


def load_split(manifest: Manifest, data_dir: Path, part: str) -> Split:
    """Read the `train` or `test` images and labels of a dataset; DataError unless the bytes match the manifest."""
    images = _read_verified(manifest, data_dir, f"{part}_images")
    labels = _read_verified(manifest, data_dir, f"{part}_labels")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{part} split: images {images.shape} and labels {labels.shape} do not match (want N x H x W and N)"
        )
    if labels.max(initial=0) >= len(manifest.classes):
        raise DataError(
            f"{part} labels go up to {labels.max()}, but the manifest names {len(manifest.classes)} classes"
        )
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def _read_verified(manifest: Manifest, data_dir: Path, role: str) -> np.ndarray:
    expected = manifest.file(role)
    path = data_dir / expected.name
    return parse_idx(verified_bytes(path, expected), name=str(path))


def train_val_split(train: Split, val_size: int, seed: int, subset: int | None = None) -> Splits:
    """Hold out `val_size` images, stratified by class and seeded; optionally cap the pool at `subset` first."""
    indices = np.arange(len(train))
    labels = train.labels.numpy()
    if subset is not None and subset < len(indices):
        indices, _ = train_test_split(indices, train_size=subset, random_state=seed, stratify=_strata(labels, subset))
    if val_size >= len(indices):
        raise DataError(f"data.val_size = {val_size} must be smaller than the {len(indices)} training images")
    fit, val = train_test_split(
        indices, test_size=val_size, random_state=seed, stratify=_strata(labels[indices], val_size)
    )
    fit, val = np.sort(fit), np.sort(val)
    return Splits(Split(train.images[fit], train.labels[fit]), Split(train.images[val], train.labels[val]))


def _strata(labels: np.ndarray, smaller_part: int) -> np.ndarray | None:
    """Stratify when every class can appear on both sides (tiny smoke datasets may not allow it)."""
    classes, counts = np.unique(labels, return_counts=True)
    fits = counts.min() >= 2 and min(smaller_part, len(labels) - smaller_part) >= len(classes)
    return labels if fits else None
