"""The download stage: fetch each dataset file from the first source that yields verified bytes."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import io
import itertools
import os
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

from tqdm import tqdm

from fashion_mlops.data.manifest import ExpectedFile, Manifest
from fashion_mlops.data.verify import mismatch, verify_file
from fashion_mlops.errors import DownloadError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
HOW_TO_GET_DATA = (
    "install Debian's dataset-fashion-mnist package (sudo apt-get install dataset-fashion-mnist, "
    "files land in /usr/share/datasets/fashion-mnist) or put the four IDX files (.gz or plain) in a "
    "directory and list it first in data.sources"
)
# What a source can do wrong: refuse, reset, time out, fail TLS (OSError, URLError among them); answer something that
# is not HTTP or break its chunking (HTTPException, IncompleteRead among them); send numbers that do not parse
# (ValueError). Each fails that source only.
SOURCE_ERRORS = (OSError, http.client.HTTPException, ValueError)


class FetchFailed(Exception):
    """One source could not provide one verified file."""


def download_dataset(
    manifest: Manifest, sources: list[str], dest: Path, timeout_s: float = 30.0, deadline_s: float = 600.0
) -> list[str]:
    """Make `dest` hold every file of `manifest`, verified; returns one line per file saying where it came from.

    `timeout_s` bounds each wait on the network; `deadline_s` bounds each try of one file from one source, in all.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(".*.part"):
        stale.unlink()
    report = []
    for expected in manifest.files:
        target = dest / expected.name
        removed = ""
        if os.path.lexists(target):
            problem = verify_file(target, expected)
            if problem is None:
                report.append(f"{expected.name}: already present and verified")
                continue
            # before any source is tried, so that a failed download leaves nothing unverified where the stages read
            _remove_unverified(target, problem)
            removed = f" The copy at {target} failed verification ({problem}) and was removed."
        tried = []
        for source in sources:
            try:
                _fetch_one(source, expected, target, timeout_s, deadline_s)
            except FetchFailed as error:
                tried.append(f"{source} ({error})")
                continue
            report.append(f"{expected.name}: verified from {source}")
            break
        else:
            raise DownloadError(
                f"could not get {expected.name} from any of data.sources: {'; '.join(tried)}.{removed} "
                f"To get the data, {HOW_TO_GET_DATA}."
            )
    return report


def _remove_unverified(target: Path, problem: str) -> None:
    try:
        target.unlink()
    except OSError as error:  # e.g. a directory where the file belongs
        raise DownloadError(
            f"{target} fails verification ({problem}) and cannot be removed ({error.strerror or error}); "
            "remove it and run `fashion-mlops download` again"
        ) from None


def _fetch_one(source: str, expected: ExpectedFile, target: Path, timeout_s: float, deadline_s: float) -> None:
    """Stream one file from one source into a temp file beside `target`, verify, then rename into place."""
    with _Deadline(deadline_s) as deadline:
        try:
            with _open_source(source, expected.name, timeout_s, deadline) as (stream, total):
                fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{expected.name}.", suffix=".part")
                tmp = Path(tmp_name)
                try:
                    with os.fdopen(fd, "wb") as out:
                        digest, size = _copy_decompressing(stream, out, total, expected, deadline)
                        out.flush()
                        os.fsync(out.fileno())
                    problem = mismatch(expected, digest, size)
                    if problem:
                        raise FetchFailed(problem)
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
        except FetchFailed:
            deadline.check()  # a read the deadline cut short fails for that reason, whatever it looked like
            raise


class _Deadline:
    """The time one try may take. Reads check it between chunks; when it runs out, a timer shuts the try's sockets,
    so that no single wait (a connect, headers sent a byte at a time) outlasts it either."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.disarm()

    def check(self) -> None:
        if self._expired or time.monotonic() >= self.end:
            raise FetchFailed(f"not done within the {self.seconds:g} s deadline (data.deadline_s)")

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self._expired:
                _shut(sock)

    def disarm(self) -> None:
        """Stop the timer, before the sockets close (so it never touches a descriptor reused by then)."""
        with self._lock:
            self._timer.cancel()
            self._sockets.clear()

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Wake whoever is blocked reading `sock`: they see the end of the stream."""
    with contextlib.suppress(OSError):  # already closed
        # the plain socket's shutdown: SSLSocket's own would drop the TLS state under the reading thread
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@contextmanager
def _open_source(
    source: str, name: str, timeout_s: float, deadline: _Deadline
) -> Iterator[tuple[io.BufferedIOBase, int | None]]:
    """Yield (stream, size or None) for `name` (or `name.gz`) at a directory or URL."""
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        url = f"{source.rstrip('/')}/{name}.gz"
        try:
            response = _opener(deadline).open(url, timeout=timeout_s)
        except SOURCE_ERRORS as error:
            raise FetchFailed(f"cannot fetch {url}: {_describe(error)}") from None
        with response:
            try:
                yield response, response.length  # http.client's reading of Content-Length: None if absent or nonsense
            finally:
                deadline.disarm()
        return
    directory = Path(parsed.path if parsed.scheme == "file" else source)
    if not directory.is_dir():
        raise FetchFailed("no such directory")
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            try:
                stream = candidate.open("rb")
            except OSError as error:
                raise FetchFailed(f"cannot read {candidate}: {_describe(error)}") from None
            with stream:
                yield stream, os.fstat(stream.fileno()).st_size
            return
    raise FetchFailed(f"neither {name}.gz nor {name} is there")


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib's opener for http(s) only (proxies and redirects included), each connection watched by `deadline`."""

    def watched(connection_class: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Watched(connection_class):
            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return Watched

    plain, tls = watched(http.client.HTTPConnection), watched(http.client.HTTPSConnection)

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(plain, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(tls, req, context=_tls_context())

    opener = urllib.request.OpenerDirector()
    # build_opener's defaults less FTP, file: and data:, so that a redirect cannot leave http(s)
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        HttpHandler(),
        HttpsHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _copy_decompressing(
    stream: io.BufferedIOBase, out: io.BufferedIOBase, total: int | None, expected: ExpectedFile, deadline: _Deadline
) -> tuple[str, int]:
    """Copy `stream` to `out`, gunzipping if it is gzip; return (sha256, size) of what was written.

    Output stops at `expected.size`: a longer file (or a gzip bomb) fails the source before writing another byte.
    """
    digest = hashlib.sha256()
    size = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=expected.name, leave=False, disable=None) as bar:
        chunks = _chunks(stream, deadline, bar)
        head = b""
        for chunk in chunks:  # enough bytes to recognise gzip: a slow server may send them one at a time
            head += chunk
            if len(head) >= len(GZIP_MAGIC):
                break
        data = itertools.chain([head], chunks)
        for piece in _gunzip(data, expected.size) if head.startswith(GZIP_MAGIC) else data:
            if size + len(piece) > expected.size:
                raise FetchFailed(f"more than the expected {expected.size} bytes")
            out.write(piece)
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size


def _chunks(stream: io.BufferedIOBase, deadline: _Deadline, bar: tqdm) -> Iterator[bytes]:
    """The stream's bytes as they arrive (read1, not read: a read waits for all it asked for), within the deadline."""
    while True:
        try:
            chunk = stream.read1(CHUNK)
        except SOURCE_ERRORS as error:
            raise FetchFailed(f"read failed ({_describe(error)})") from None
        deadline.check()
        if not chunk:
            return
        bar.update(len(chunk))
        yield chunk


def _gunzip(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """Decompress a gzip stream piece by piece, never asking zlib for more than `limit` + 1 bytes in all.

    The + 1 is how the caller sees the stream is too long; a bomb's gigabytes are never in memory or on disk.
    """
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    produced = 0
    for chunk in chunks:
        data = chunk
        while True:
            allowed = min(CHUNK, limit + 1 - produced)
            try:
                piece = decompressor.decompress(data, allowed)
            except zlib.error as error:
                raise FetchFailed(f"corrupt gzip data ({error})") from None
            produced += len(piece)
            yield piece
            if decompressor.eof:
                return  # whatever follows the gzip stream is not read
            data = decompressor.unconsumed_tail
            if not data and len(piece) < allowed:  # this chunk is spent and zlib holds nothing back
                break
    raise FetchFailed("truncated gzip stream")


def _describe(error: BaseException) -> str:
    """An exception in a few words on one line: what a broken server sends can be long, binary or multi-line."""
    if isinstance(error, urllib.error.HTTPError):
        text = f"HTTP {error.code} {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        text = str(error.reason)
    else:
        text = f"{type(error).__name__}: {error}"
    text = " ".join(text.encode("ascii", "backslashreplace").decode().split())
    return text if len(text) <= 120 else text[:119] + "…"
