"""`fashion-mlops predict`: class probabilities for image files, as CSV (a header, then one row per image)."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from fashion_mlops.config import Params
from fashion_mlops.data.manifest import Manifest
from fashion_mlops.inference.images import Image, Unreadable, read_images
from fashion_mlops.inference.loading import load_runtime
from fashion_mlops.inference.runtimes import Outputs, Runtime
from fashion_mlops.reports import write_text


@dataclass(frozen=True)
class Outcome:
    rows: int
    unreadable: list[Unreadable]
    model: str


def header(classes: tuple[str, ...]) -> list[str]:
    return ["file", "index", "label", *classes]


def predict_rows(
    runtime: Runtime, images: Iterator[Image | Unreadable], classes: tuple[str, ...], batch_size: int, tta_flip: bool
) -> Iterator[list[str] | Unreadable]:
    """One CSV row per image (file, index, predicted class, a probability per class), batch by batch; an
    unreadable file passes through as it comes."""
    batch: list[Image] = []

    def flush() -> Iterator[list[str]]:
        pixels = np.stack([image.pixels for image in batch])[:, None]
        probs = Outputs.of(runtime, pixels, batch_size, tta_flip).predicted()
        for image, p in zip(batch, probs, strict=True):
            yield [image.file, str(image.index), classes[int(p.argmax())], *(f"{v:.6f}" for v in p)]
        batch.clear()

    for item in images:
        if isinstance(item, Unreadable):
            yield item
            continue
        batch.append(item)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def run_predict(
    params: Params, manifest: Manifest, paths: list[Path], runtime_name: str, model: str | None, out: Path | None
) -> Outcome:
    """Write the predictions for `paths` to `out` (atomically) or to standard output; report unreadable files on
    standard error, one line each, and go on."""
    runtime, source = load_runtime(runtime_name, model, params)
    settings = params.evaluate
    rows = predict_rows(runtime, read_images(paths), manifest.classes, settings.batch_size, settings.tta_flip)
    buffer = io.StringIO() if out else None
    stream: TextIO = buffer if buffer is not None else sys.stdout
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header(manifest.classes))
    written, unreadable = 0, []
    for row in rows:
        if isinstance(row, Unreadable):
            unreadable.append(row)
            print(f"skipped {row.file}: {row.reason}", file=sys.stderr)
            continue
        writer.writerow(row)
        written += 1
    if out is not None and buffer is not None:
        write_text(out, buffer.getvalue())
    return Outcome(written, unreadable, source)
