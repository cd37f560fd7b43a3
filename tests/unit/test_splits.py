"""The validation split: seeded, stratified, disjoint and covering; `subset` caps the pool; bad sizes are errors.
Loading a split decodes only bytes that match the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fashion_mlops.data.idx import encode_idx
from fashion_mlops.data.manifest import Manifest, load_manifest
from fashion_mlops.data.sample import write_sample_dataset
from fashion_mlops.data.splits import Split, load_split, train_val_split
from fashion_mlops.errors import DataError


def balanced_pool(per_class: int = 30, classes: int = 10, seed: int = 0) -> Split:
    """A shuffled pool with `per_class` images of each class; pixels (0, 0) and (0, 1) encode each image's id."""
    n = per_class * classes
    labels = np.arange(n) % classes
    np.random.default_rng(seed).shuffle(labels)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    ids = torch.arange(n)
    images[:, 0, 0, 0] = (ids // 256).to(torch.uint8)
    images[:, 0, 0, 1] = (ids % 256).to(torch.uint8)
    return Split(images, torch.from_numpy(labels.astype(np.int64)))


def ids_of(split: Split) -> list[int]:
    return (split.images[:, 0, 0, 0].long() * 256 + split.images[:, 0, 0, 1].long()).tolist()


def test_same_seed_gives_the_same_split():
    pool = balanced_pool()

    first = train_val_split(pool, val_size=50, seed=42)
    second = train_val_split(pool, val_size=50, seed=42)

    assert ids_of(first.val) == ids_of(second.val)
    assert ids_of(first.train) == ids_of(second.train)
    assert torch.equal(first.val.labels, second.val.labels)


def test_different_seed_gives_a_different_split():
    pool = balanced_pool()

    first = train_val_split(pool, val_size=50, seed=1)
    second = train_val_split(pool, val_size=50, seed=2)

    assert ids_of(first.val) != ids_of(second.val)


def test_validation_set_is_stratified_on_a_balanced_pool():
    pool = balanced_pool(per_class=30)

    for seed in (0, 1, 2):
        splits = train_val_split(pool, val_size=50, seed=seed)
        val_counts = np.bincount(splits.val.labels.numpy(), minlength=10)
        train_counts = np.bincount(splits.train.labels.numpy(), minlength=10)
        assert val_counts.tolist() == [5] * 10
        assert train_counts.tolist() == [25] * 10


def test_train_and_validation_are_disjoint_and_cover_the_pool():
    pool = balanced_pool()

    splits = train_val_split(pool, val_size=70, seed=3)

    train_ids, val_ids = set(ids_of(splits.train)), set(ids_of(splits.val))
    assert len(splits.val) == 70
    assert len(splits.train) == 300 - 70
    assert train_ids.isdisjoint(val_ids)
    assert train_ids | val_ids == set(range(300))


def test_images_keep_their_labels_after_splitting():
    pool = balanced_pool()
    label_of = dict(zip(ids_of(pool), pool.labels.tolist(), strict=True))

    splits = train_val_split(pool, val_size=40, seed=9)

    for part in (splits.train, splits.val):
        assert [label_of[i] for i in ids_of(part)] == part.labels.tolist()
        assert part.images.dtype == torch.uint8
        assert part.labels.dtype == torch.int64


def test_subset_caps_the_pool_before_holding_out_validation():
    pool = balanced_pool(per_class=30)

    splits = train_val_split(pool, val_size=20, seed=0, subset=100)

    assert len(splits.train) + len(splits.val) == 100
    assert len(splits.val) == 20
    assert set(ids_of(splits.train)).isdisjoint(ids_of(splits.val))
    assert np.bincount(splits.val.labels.numpy(), minlength=10).tolist() == [2] * 10


def test_subset_larger_than_the_pool_uses_the_whole_pool():
    pool = balanced_pool(per_class=10)

    splits = train_val_split(pool, val_size=20, seed=0, subset=10_000)

    assert len(splits.train) + len(splits.val) == 100


def test_subset_is_seeded():
    pool = balanced_pool()

    first = train_val_split(pool, val_size=20, seed=5, subset=100)
    second = train_val_split(pool, val_size=20, seed=5, subset=100)

    assert ids_of(first.train) == ids_of(second.train)
    assert ids_of(first.val) == ids_of(second.val)


@pytest.mark.parametrize("val_size", [300, 301, 10_000])
def test_validation_size_not_smaller_than_the_pool_is_a_data_error(val_size):
    with pytest.raises(DataError, match=r"val_size"):
        train_val_split(balanced_pool(), val_size=val_size, seed=0)


def test_validation_size_not_smaller_than_the_subset_is_a_data_error():
    with pytest.raises(DataError, match=r"data\.val_size = 50 .* 50 training images"):
        train_val_split(balanced_pool(), val_size=50, seed=0, subset=50)


def test_tiny_unbalanced_pools_still_split_without_stratification():
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2], dtype=torch.int64)  # classes 1 and 2 appear once
    pool = Split(torch.zeros(8, 1, 28, 28, dtype=torch.uint8), labels)

    splits = train_val_split(pool, val_size=3, seed=0)

    assert len(splits.val) == 3
    assert len(splits.train) == 5


# Loading a split: only verified bytes are decoded ---------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path) -> tuple[Manifest, Path]:
    """A tiny plain-IDX dataset on disk, as `fashion-mlops download` leaves it."""
    return load_manifest(write_sample_dataset(tmp_path, n_train=30, n_test=10, seed=5, gz=False)), tmp_path


def test_load_split_reads_verified_files(dataset):
    manifest, directory = dataset

    train = load_split(manifest, directory, "train")

    assert train.images.shape == (30, 1, 28, 28)
    assert train.labels.dtype == torch.int64


def test_load_split_refuses_other_pixels_under_the_right_header_and_size(dataset):
    manifest, directory = dataset
    path = directory / manifest.file("train_images").name
    pixels = np.random.default_rng(0).integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    path.write_bytes(encode_idx(pixels))
    assert path.stat().st_size == manifest.file("train_images").size

    with pytest.raises(DataError) as error:
        load_split(manifest, directory, "train")

    message = str(error.value)
    assert str(path) in message and "SHA-256" in message
    assert "dvc repro download" in message and "fashion-mlops download" in message
    assert "\n" not in message


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_load_split_refuses_a_truncated_or_missing_file(dataset, damage):
    manifest, directory = dataset
    path = directory / manifest.file("test_labels").name
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-1])
    else:
        path.unlink()

    with pytest.raises(DataError, match="dvc repro download") as error:
        load_split(manifest, directory, "test")
    assert str(path) in str(error.value)
