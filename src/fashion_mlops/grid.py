"""Grid expansion: a mapping of parameter -> values becomes every combination, in a stable order."""

from __future__ import annotations

import itertools
from typing import Any


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of `grid`; keys vary slowest-first in the order given (an empty grid is one run)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def cell_name(index: int, combo: dict[str, Any]) -> str:
    """A readable, stable run name such as `run-03-lr=0.01-batch_size=100`."""
    parts = [f"{key}={value}" for key, value in combo.items()]
    return "-".join([f"run-{index:02d}", *parts])
