"""The download stage: fetch each dataset file from the first source that yields verified bytes."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from tqdm import tqdm

from fashion_mlops.data.manifest import ExpectedFile, Manifest
from fashion_mlops.errors import DownloadError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
HOW_TO_GET_DATA = (
    "install Debian's dataset-fashion-mnist package (sudo apt-get install dataset-fashion-mnist, "
    "files land in /usr/share/datasets/fashion-mnist) or put the four IDX files (.gz or plain) in a "
    "directory and list it first in data.sources"
)


class FetchFailed(Exception):
    """One source could not provide one verified file."""


def download_dataset(manifest: Manifest, sources: list[str], dest: Path, timeout_s: float = 30.0) -> list[str]:
    """Make `dest` hold every file of `manifest`, verified; returns one line per file saying where it came from."""
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(".*.part"):
        stale.unlink()
    report = []
    for expected in manifest.files:
        target = dest / expected.name
        if target.exists() and _verify_file(target, expected) is None:
            report.append(f"{expected.name}: already present and verified")
            continue
        tried = []
        for source in sources:
            try:
                _fetch_one(source, expected, target, timeout_s)
            except FetchFailed as error:
                tried.append(f"{source} ({error})")
                continue
            report.append(f"{expected.name}: verified from {source}")
            break
        else:
            raise DownloadError(
                f"could not get {expected.name} from any of data.sources: {'; '.join(tried)}. "
                f"To get the data, {HOW_TO_GET_DATA}."
            )
    return report


def _fetch_one(source: str, expected: ExpectedFile, target: Path, timeout_s: float) -> None:
    """Stream one file from one source into a temp file beside `target`, verify, then rename into place."""
    with _open_source(source, expected.name, timeout_s) as (stream, total):
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{expected.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = _copy_decompressing(stream, out, total, expected.name)
                out.flush()
                os.fsync(out.fileno())
            problem = _mismatch(expected, digest, size)
            if problem:
                raise FetchFailed(problem)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def _open_source(source: str, name: str, timeout_s: float) -> Iterator[tuple[BinaryIO, int | None]]:
    """Yield (stream, size or None) for `name` (or `name.gz`) at a directory or URL."""
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        url = f"{source.rstrip('/')}/{name}.gz"
        try:
            response = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310 - scheme checked above
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise FetchFailed(f"cannot fetch {url}: {getattr(error, 'reason', error)}") from None
        with response:
            length = response.headers.get("Content-Length")
            yield response, int(length) if length else None
        return
    directory = Path(parsed.path if parsed.scheme == "file" else source)
    if not directory.is_dir():
        raise FetchFailed("no such directory")
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            with candidate.open("rb") as stream:
                yield stream, candidate.stat().st_size
            return
    raise FetchFailed(f"neither {name}.gz nor {name} is there")


def _copy_decompressing(stream: BinaryIO, out: BinaryIO, total: int | None, name: str) -> tuple[str, int]:
    """Copy `stream` to `out`, gunzipping if it is gzip; return (sha256, size) of what was written."""
    digest = hashlib.sha256()
    size = 0
    decompressor = None
    with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False, disable=None) as bar:
        while chunk := _read(stream):
            bar.update(len(chunk))
            if decompressor is None and size == 0 and chunk.startswith(GZIP_MAGIC):
                decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                data = decompressor.decompress(chunk) if decompressor else chunk
            except zlib.error as error:
                raise FetchFailed(f"corrupt gzip data ({error})") from None
            out.write(data)
            digest.update(data)
            size += len(data)
    if decompressor is not None and not decompressor.eof:
        raise FetchFailed("truncated gzip stream")
    return digest.hexdigest(), size


def _read(stream: BinaryIO) -> bytes:
    try:
        return stream.read(CHUNK)
    except (OSError, urllib.error.URLError) as error:
        raise FetchFailed(f"read failed ({error})") from None


def _mismatch(expected: ExpectedFile, sha256: str, size: int) -> str | None:
    if expected.size is not None and size != expected.size:
        return f"size {size} bytes, expected {expected.size}"
    if sha256 != expected.sha256:
        return f"SHA-256 {sha256[:12]}…, expected {expected.sha256[:12]}…"
    return None


def _verify_file(path: Path, expected: ExpectedFile) -> str | None:
    """None if the file on disk has the expected size and checksum, else what is wrong."""
    with path.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    return _mismatch(expected, digest, path.stat().st_size)
