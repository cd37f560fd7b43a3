"""Shared fixtures (a small real-format IDX dataset) and the `gpu` marker, which skips where CUDA is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fashion_mlops.data.sample import write_sample_dataset

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with four gzip'd IDX files (300 train, 100 test images) and their manifest.json."""
    directory = tmp_path_factory.mktemp("sample-idx")
    write_sample_dataset(directory, n_train=300, n_test=100, seed=1)
    return directory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_tests:
            item.add_marker(skip)
