"""The reports/ directory: the one list of report files the stages write (DVC metrics and plots), written atomically.

dvc.yaml names the same paths under each stage's outs, metrics and plots; a test checks that the two agree.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("reports")


@dataclass(frozen=True)
class Reports:
    """Where each report lives under one reports directory."""

    root: Path = DEFAULT_DIR

    @property
    def store(self) -> Path:
        """Which tracking store the reports describe: check_store's output, train_sweep's input (so it runs first)."""
        return self.root / "store.json"

    @property
    def sweep_csv(self) -> Path:
        """One row per run and epoch: the tutorial's results table (DVC plots)."""
        return self.root / "sweep.csv"

    @property
    def sweep_json(self) -> Path:
        """The sweep's summary and every run's final metrics (DVC metrics)."""
        return self.root / "sweep.json"

    @property
    def best_run(self) -> Path:
        """The run chosen on validation data: train_sweep's output, evaluate's input."""
        return self.root / "best_run.json"

    @property
    def evaluation(self) -> Path:
        """Test metrics and the registry outcome (DVC metrics)."""
        return self.root / "evaluation.json"

    @property
    def champion(self) -> Path:
        """The registry version holding the alias after evaluate: evaluate's output, export's input (a new
        champion reruns export; an unchanged one leaves the file byte-identical)."""
        return self.root / "champion.json"

    @property
    def export(self) -> Path:
        """Parity, accuracy and speed of the exported champion in each runtime (DVC metrics)."""
        return self.root / "export.json"

    @property
    def confusion_csv(self) -> Path:
        return self.root / "confusion_matrix.csv"

    @property
    def confusion_png(self) -> Path:
        return self.root / "confusion_matrix.png"

    def sweep_outputs(self) -> tuple[Path, ...]:
        return self.sweep_csv, self.sweep_json, self.best_run

    def evaluate_outputs(self) -> tuple[Path, ...]:
        return self.evaluation, self.champion, self.confusion_csv, self.confusion_png


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, then rename over `path`: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode())
