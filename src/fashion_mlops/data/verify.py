"""Checking files against the manifest: nothing downloads, trains or evaluates on bytes that do not match it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fashion_mlops.data.manifest import ExpectedFile, Manifest, content_digest
from fashion_mlops.errors import DataError

HOW_TO_FIX = "run `dvc repro download` (or `fashion-mlops download`) to fetch verified data"


def mismatch(expected: ExpectedFile, sha256: str, size: int) -> str | None:
    """None if (sha256, size) is what `expected` lists, else what differs, in a few words."""
    if size != expected.size:
        return f"size {size} bytes, expected {expected.size}"
    if sha256 != expected.sha256:
        return f"SHA-256 {sha256[:12]}…, expected {expected.sha256[:12]}…"
    return None


def verify_file(path: Path, expected: ExpectedFile) -> str | None:
    """None if the file on disk has the expected size and checksum, else what is wrong ('missing', a mismatch...)."""
    return _check(path, expected)[1]


def verified_bytes(path: Path, expected: ExpectedFile) -> bytes:
    """The file's bytes, checked as read (not before), so what is decoded is what was verified; else DataError."""
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            # a file of the wrong size is not read at all; one that grows while it is read shows as too long
            data = stream.read(expected.size + 1) if size == expected.size else None
    except FileNotFoundError:
        raise _data_error(path, "missing") from None
    except OSError as error:
        raise _data_error(path, f"unreadable ({error.strerror or error})") from None
    if data is None:
        problem = mismatch(expected, "", size)
    else:
        problem = mismatch(expected, hashlib.sha256(data).hexdigest(), len(data))
    if problem:
        raise _data_error(path, problem)
    return data


def dataset_digest(manifest: Manifest, data_dir: Path) -> str:
    """The digest of the dataset in `data_dir`, from the SHA-256s measured on disk; DataError if a file differs.

    For verified files it equals `manifest.digest()`; measuring means a run is tagged with the data it really had.
    """
    measured = []
    for expected in manifest.files:
        path = data_dir / expected.name
        sha256, problem = _check(path, expected)
        if problem:
            raise _data_error(path, problem)
        measured.append(sha256)
    return content_digest(measured)


def _check(path: Path, expected: ExpectedFile) -> tuple[str, str | None]:
    """(SHA-256 measured, or '' where there was nothing to hash; what is wrong, or None)."""
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size != expected.size:  # no need to hash gigabytes of the wrong file
                return "", mismatch(expected, "", size)
            sha256 = hashlib.file_digest(stream, "sha256").hexdigest()
    except FileNotFoundError:
        return "", "missing"
    except OSError as error:
        return "", f"unreadable ({error.strerror or error})"
    return sha256, mismatch(expected, sha256, size)


def _data_error(path: Path, problem: str) -> DataError:
    if problem == "missing":
        return DataError(f"{path} is missing; {HOW_TO_FIX}")
    return DataError(f"{path} does not match the manifest ({problem}); {HOW_TO_FIX}")
