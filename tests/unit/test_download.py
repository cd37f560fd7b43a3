"""The download stage: each file comes from the first source that yields verified bytes, or nothing is left behind."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import itertools
import os
import shutil
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fashion_mlops.data.download import DownloadError, download_dataset
from fashion_mlops.data.idx import encode_idx, read_idx
from fashion_mlops.data.manifest import Manifest, load_manifest
from fashion_mlops.data.sample import FILE_NAMES, write_sample_dataset

BROKEN_ROLE = "test_images"  # third of the four files: two good files are fetched before it
BROKEN = FILE_NAMES[BROKEN_ROLE]


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """Talk to 127.0.0.1 directly, whatever proxy the machine running the tests is configured with."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture(scope="module")
def gz_source(tmp_path_factory) -> Path:
    """A directory with the four gzip'd IDX files of a small sample dataset and its manifest.json."""
    directory = tmp_path_factory.mktemp("gz-source")
    write_sample_dataset(directory, n_train=60, n_test=20, seed=4, gz=True)
    return directory


@pytest.fixture(scope="module")
def plain_source(tmp_path_factory, gz_source) -> Path:
    """The same dataset as plain (uncompressed) IDX files."""
    directory = tmp_path_factory.mktemp("plain-source")
    write_sample_dataset(directory, n_train=60, n_test=20, seed=4, gz=False)
    assert (directory / "manifest.json").read_text() == (gz_source / "manifest.json").read_text()
    return directory


@pytest.fixture(scope="module")
def manifest(gz_source) -> Manifest:
    return load_manifest(gz_source / "manifest.json")


def source_with(directory: Path, good: Path, broken_bytes: bytes) -> Path:
    """A copy of the good gz source in which the BROKEN file's .gz holds `broken_bytes`."""
    shutil.copytree(good, directory)
    (directory / f"{BROKEN}.gz").write_bytes(broken_bytes)
    return directory


def truncated(good: Path) -> bytes:
    data = (good / f"{BROKEN}.gz").read_bytes()
    return data[: len(data) // 2]


def bit_flipped(good: Path) -> bytes:
    data = bytearray((good / f"{BROKEN}.gz").read_bytes())
    data[len(data) // 2] ^= 0x10
    return bytes(data)


def wrong_content(good: Path) -> bytes:
    return gzip.compress(b"\x00\x00\x08\x03" + b"definitely not the expected images" * 100, mtime=0)


CORRUPTIONS = {"truncated-gzip": truncated, "bit-flipped-gzip": bit_flipped, "valid-gzip-of-other-bytes": wrong_content}


def assert_dataset_verified(dest: Path, manifest: Manifest) -> None:
    for expected in manifest.files:
        path = dest / expected.name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected.sha256, expected.name
        assert read_idx(path).size > 0
    assert not [name for name in os.listdir(dest) if name.endswith(".part")]


def assert_no_trace_of(dest: Path, name: str) -> None:
    assert not (dest / name).exists()
    leftovers = [entry for entry in os.listdir(dest) if entry.endswith(".part") or name in entry]
    assert leftovers == [], leftovers


# Local directories --------------------------------------------------------------------------------------------------


def test_download_from_a_directory_of_gz_files(tmp_path, gz_source, manifest):
    dest = tmp_path / "data" / "raw"

    report = download_dataset(manifest, [str(gz_source)], dest)

    assert report == [f"{f.name}: verified from {gz_source}" for f in manifest.files]
    assert sorted(os.listdir(dest)) == sorted(f.name for f in manifest.files)
    assert_dataset_verified(dest, manifest)


def test_download_from_a_directory_of_plain_files(tmp_path, plain_source, manifest):
    dest = tmp_path / "raw"

    report = download_dataset(manifest, [str(plain_source)], dest)

    assert report == [f"{f.name}: verified from {plain_source}" for f in manifest.files]
    assert_dataset_verified(dest, manifest)


def test_download_from_a_file_url(tmp_path, gz_source, manifest):
    dest = tmp_path / "raw"

    download_dataset(manifest, [gz_source.as_uri()], dest)

    assert_dataset_verified(dest, manifest)


def test_download_keeps_verified_files_and_says_so(tmp_path, gz_source, manifest):
    dest = tmp_path / "raw"
    download_dataset(manifest, [str(gz_source)], dest)
    before = {f.name: (dest / f.name).stat().st_mtime_ns for f in manifest.files}

    report = download_dataset(manifest, ["/no/such/source"], dest)

    assert report == [f"{f.name}: already present and verified" for f in manifest.files]
    assert {f.name: (dest / f.name).stat().st_mtime_ns for f in manifest.files} == before


def test_download_replaces_a_corrupted_file_at_the_destination(tmp_path, gz_source, manifest):
    dest = tmp_path / "raw"
    download_dataset(manifest, [str(gz_source)], dest)
    (dest / BROKEN).write_bytes(b"garbage")

    report = download_dataset(manifest, [str(gz_source)], dest)

    assert f"{BROKEN}: verified from {gz_source}" in report
    assert_dataset_verified(dest, manifest)


def test_download_removes_stale_part_files_from_an_interrupted_run(tmp_path, gz_source, manifest):
    dest = tmp_path / "raw"
    dest.mkdir()
    stale = dest / f".{BROKEN}.abc123.part"
    stale.write_bytes(b"half a file")

    download_dataset(manifest, [str(gz_source)], dest)

    assert not stale.exists()
    assert_dataset_verified(dest, manifest)


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_download_falls_back_to_next_source_when_first_is_corrupt(tmp_path, gz_source, manifest, corrupt):
    bad = source_with(tmp_path / "bad", gz_source, corrupt(gz_source))
    dest = tmp_path / "raw"

    report = download_dataset(manifest, [str(bad), str(gz_source)], dest)

    assert f"{BROKEN}: verified from {gz_source}" in report
    assert f"{FILE_NAMES['train_images']}: verified from {bad}" in report  # intact files still come from the first
    assert_dataset_verified(dest, manifest)


def test_download_falls_back_past_a_missing_directory_and_a_directory_without_the_files(tmp_path, gz_source, manifest):
    empty = tmp_path / "empty"
    empty.mkdir()
    dest = tmp_path / "raw"

    report = download_dataset(manifest, [str(tmp_path / "missing"), str(empty), str(gz_source)], dest)

    assert all(line.endswith(f"verified from {gz_source}") for line in report)
    assert_dataset_verified(dest, manifest)


def test_download_error_names_every_source_tried_and_how_to_get_the_data(tmp_path, gz_source, manifest):
    sources = [
        str(source_with(tmp_path / "truncated", gz_source, truncated(gz_source))),
        str(source_with(tmp_path / "flipped", gz_source, bit_flipped(gz_source))),
        str(source_with(tmp_path / "other", gz_source, wrong_content(gz_source))),
        str(tmp_path / "missing"),
    ]
    dest = tmp_path / "raw"

    with pytest.raises(DownloadError) as error:
        download_dataset(manifest, sources, dest)

    message = str(error.value)
    assert BROKEN in message
    for source in sources:
        assert source in message
    assert "dataset-fashion-mnist" in message
    assert "truncated gzip stream" in message and "corrupt gzip data" in message and "size" in message
    assert "\n" not in message
    assert_no_trace_of(dest, BROKEN)
    assert sorted(os.listdir(dest)) == sorted([FILE_NAMES["train_images"], FILE_NAMES["train_labels"]])


def test_rerun_after_fixing_the_source_succeeds(tmp_path, gz_source, manifest):
    source = source_with(tmp_path / "source", gz_source, truncated(gz_source))
    dest = tmp_path / "raw"
    with pytest.raises(DownloadError):
        download_dataset(manifest, [str(source)], dest)
    assert_no_trace_of(dest, BROKEN)

    shutil.copyfile(gz_source / f"{BROKEN}.gz", source / f"{BROKEN}.gz")
    report = download_dataset(manifest, [str(source)], dest)

    assert report[:2] == [
        f"{FILE_NAMES['train_images']}: already present and verified",
        f"{FILE_NAMES['train_labels']}: already present and verified",
    ]
    assert report[2:] == [f"{BROKEN}: verified from {source}", f"{FILE_NAMES['test_labels']}: verified from {source}"]
    assert_dataset_verified(dest, manifest)


# HTTP ---------------------------------------------------------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class DroppingHandler(QuietHandler):
    """Promises the whole file, sends half of it, then closes the connection."""

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def serve() -> Iterator:
    """serve(directory, handler=QuietHandler) -> base URL of a real HTTP server on 127.0.0.1."""
    servers = []

    def start(directory: Path, handler=QuietHandler) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_over_http(tmp_path, gz_source, manifest, serve):
    url = serve(gz_source)
    dest = tmp_path / "raw"

    report = download_dataset(manifest, [url], dest, timeout_s=10)

    assert report == [f"{f.name}: verified from {url}" for f in manifest.files]
    assert_dataset_verified(dest, manifest)


def test_download_over_http_with_a_trailing_slash_in_the_url(tmp_path, gz_source, manifest, serve):
    url = serve(gz_source) + "/"
    dest = tmp_path / "raw"

    download_dataset(manifest, [url], dest, timeout_s=10)

    assert_dataset_verified(dest, manifest)


def test_unreachable_http_source_fails_fast_and_falls_through(tmp_path, gz_source, manifest):
    url = f"http://127.0.0.1:{closed_port()}"
    dest = tmp_path / "raw"

    started = time.monotonic()
    report = download_dataset(manifest, [url, str(gz_source)], dest, timeout_s=20)

    assert time.monotonic() - started < 5
    assert all(line.endswith(f"verified from {gz_source}") for line in report)
    assert_dataset_verified(dest, manifest)


def test_http_404_falls_through_to_the_next_source(tmp_path, gz_source, manifest, serve):
    empty = tmp_path / "empty"
    empty.mkdir()
    url = serve(empty)
    dest = tmp_path / "raw"

    report = download_dataset(manifest, [url, str(gz_source)], dest, timeout_s=10)

    assert all(line.endswith(f"verified from {gz_source}") for line in report)


def test_corrupt_file_over_http_falls_through_to_the_next_source(tmp_path, gz_source, manifest, serve):
    url = serve(source_with(tmp_path / "bad", gz_source, bit_flipped(gz_source)))
    dest = tmp_path / "raw"

    report = download_dataset(manifest, [url, str(gz_source)], dest, timeout_s=10)

    assert f"{BROKEN}: verified from {gz_source}" in report
    assert f"{FILE_NAMES['train_images']}: verified from {url}" in report
    assert_dataset_verified(dest, manifest)


def test_connection_dropped_mid_file_falls_through_to_the_next_source(tmp_path, gz_source, manifest, serve):
    url = serve(gz_source, handler=DroppingHandler)
    dest = tmp_path / "raw"

    report = download_dataset(manifest, [url, str(gz_source)], dest, timeout_s=10)

    assert all(line.endswith(f"verified from {gz_source}") for line in report)
    assert_dataset_verified(dest, manifest)


def test_server_that_never_answers_times_out_and_falls_through(tmp_path, gz_source, manifest):
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        dest = tmp_path / "raw"

        started = time.monotonic()
        report = download_dataset(manifest, [url, str(gz_source)], dest, timeout_s=0.3)

    assert time.monotonic() - started < 10
    assert all(line.endswith(f"verified from {gz_source}") for line in report)


def test_all_http_sources_failing_is_a_download_error_naming_them(tmp_path, manifest, serve):
    empty = tmp_path / "empty"
    empty.mkdir()
    sources = [serve(empty), f"http://127.0.0.1:{closed_port()}"]
    dest = tmp_path / "raw"

    with pytest.raises(DownloadError) as error:
        download_dataset(manifest, sources, dest, timeout_s=5)

    for source in sources:
        assert source in str(error.value)
    assert "dataset-fashion-mnist" in str(error.value)
    assert os.listdir(dest) == []


# Hostile or broken sources ------------------------------------------------------------------------------------------


def zeros_gzip(size: int) -> bytes:
    """A gzip of `size` zero bytes, made piecewise (a 256 MiB source compresses to about 255 KB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join([*parts, compressor.flush()])


def test_a_gzip_bomb_is_cut_off_at_the_expected_size_and_the_next_source_is_used(tmp_path, gz_source, manifest):
    bomb = zeros_gzip(256 << 20)
    assert len(bomb) < 300_000
    bad = source_with(tmp_path / "bomb", gz_source, bomb)
    dest = tmp_path / "raw"

    tracemalloc.start()
    try:
        report = download_dataset(manifest, [str(bad), str(gz_source)], dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert f"{BROKEN}: verified from {gz_source}" in report
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB while inflating a bomb"
    assert_dataset_verified(dest, manifest)


def test_a_gzip_bomb_alone_is_a_download_error_saying_it_was_too_big(tmp_path, gz_source, manifest):
    bad = source_with(tmp_path / "bomb", gz_source, zeros_gzip(64 << 20))
    dest = tmp_path / "raw"

    with pytest.raises(DownloadError, match=rf"more than the expected {manifest.file(BROKEN_ROLE).size} bytes"):
        download_dataset(manifest, [str(bad)], dest)
    assert_no_trace_of(dest, BROKEN)


def test_a_plain_file_longer_than_the_manifest_says_is_cut_off(tmp_path, plain_source, manifest):
    bad = tmp_path / "long"
    shutil.copytree(plain_source, bad)
    with (bad / BROKEN).open("ab") as stream:
        stream.write(bytes(8 << 20))
    dest = tmp_path / "raw"

    with pytest.raises(DownloadError, match="more than the expected"):
        download_dataset(manifest, [str(bad)], dest)
    assert_no_trace_of(dest, BROKEN)


def test_an_unverified_file_at_the_target_is_removed_even_when_every_source_fails(tmp_path, gz_source, manifest):
    dest = tmp_path / "raw"
    download_dataset(manifest, [str(gz_source)], dest)
    stale = dest / BROKEN
    shape = read_idx(stale).shape
    pixels = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    stale.write_bytes(encode_idx(pixels))  # the real header and size, other pixels
    assert stale.stat().st_size == manifest.file(BROKEN_ROLE).size

    with pytest.raises(DownloadError, match="removed") as error:
        download_dataset(manifest, [str(tmp_path / "missing")], dest)

    assert str(stale) in str(error.value)
    assert_no_trace_of(dest, BROKEN)


def test_a_directory_where_a_file_belongs_is_a_download_error(tmp_path, gz_source, manifest):
    dest = tmp_path / "raw"
    (dest / BROKEN).mkdir(parents=True)

    with pytest.raises(DownloadError, match="remove it"):
        download_dataset(manifest, [str(gz_source)], dest)


# Raw servers: what a real HTTP server would never send --------------------------------------------------------------


def http_head(status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{key.replace('_', '-')}: {value}" for key, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def reset(conn: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN: what a crashed server or a middlebox does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def garbage(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6 not a web server\r\n\r\n")


def http_0_9(conn: socket.socket, body: bytes) -> None:
    conn.sendall(body)  # no status line, no headers


def broken_chunked(conn: socket.socket, body: bytes) -> None:
    conn.sendall(http_head(Transfer_Encoding="chunked") + b"zz-not-hex\r\n" + body[:10] + b"\r\n")


def chunked_cut_short(conn: socket.socket, body: bytes) -> None:
    conn.sendall(http_head(Transfer_Encoding="chunked") + f"{len(body):x}\r\n".encode() + body[: len(body) // 2])


def non_numeric_length(conn: socket.socket, body: bytes) -> None:
    conn.sendall(http_head(Content_Length="lots") + body[: len(body) // 2])


def negative_length(conn: socket.socket, body: bytes) -> None:
    conn.sendall(http_head(Content_Length="-5") + body[: len(body) // 2])


def two_lengths(conn: socket.socket, body: bytes) -> None:
    conn.sendall(http_head(Content_Length=f"{len(body)}, {len(body) + 1}") + body[: len(body) // 2])


def bad_status_code(conn: socket.socket, body: bytes) -> None:
    conn.sendall(http_head(status="2OO OK", Content_Length=str(len(body))) + body)


def endless_header(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 70_000 + b"\r\n\r\n")


def reset_mid_body(conn: socket.socket, body: bytes) -> None:
    conn.sendall(http_head(Content_Length=str(len(body))) + body[: len(body) // 2])
    time.sleep(0.05)
    reset(conn)


def reset_before_answering(conn: socket.socket, body: bytes) -> None:
    reset(conn)


MALFORMED = {
    f.__name__: f
    for f in (
        garbage,
        http_0_9,
        broken_chunked,
        chunked_cut_short,
        non_numeric_length,
        negative_length,
        two_lengths,
        bad_status_code,
        endless_header,
        reset_mid_body,
        reset_before_answering,
    )
}


@pytest.fixture
def raw_server() -> Iterator:
    """raw_server(answer, directory) -> URL of a TCP server on 127.0.0.1 that reads one request per connection and
    calls answer(conn, the requested file's .gz bytes from `directory`), then closes the connection."""
    stop = threading.Event()
    listeners = []

    def start(answer, directory: Path) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.1)
        listeners.append(listener)

        def handle(conn: socket.socket) -> None:
            with conn:
                request = b""
                while b"\r\n\r\n" not in request and (data := conn.recv(4096)):
                    request += data
                name = request.split(b" ")[1].decode().strip("/") if request.count(b" ") >= 2 else ""
                path = directory / name
                with contextlib.suppress(OSError):  # the client gave up first
                    answer(conn, path.read_bytes() if name and path.is_file() else b"")

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    stop.set()
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize("answer", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_http_answer_fails_that_source_and_the_next_is_used(
    tmp_path, gz_source, manifest, raw_server, answer
):
    url = raw_server(answer, gz_source)
    dest = tmp_path / "raw"

    report = download_dataset(manifest, [url, str(gz_source)], dest, timeout_s=5)

    assert report == [f"{f.name}: verified from {gz_source}" for f in manifest.files]
    assert_dataset_verified(dest, manifest)


def test_a_nonsense_content_length_does_not_matter_when_the_bytes_verify(tmp_path, gz_source, manifest, raw_server):
    def answer(conn: socket.socket, body: bytes) -> None:
        conn.sendall(http_head(Content_Length="lots") + body)

    url = raw_server(answer, gz_source)
    dest = tmp_path / "raw"

    report = download_dataset(manifest, [url], dest, timeout_s=5)

    assert report == [f"{f.name}: verified from {url}" for f in manifest.files]
    assert_dataset_verified(dest, manifest)


def test_a_malformed_http_answer_alone_is_a_one_line_download_error_naming_the_source(
    tmp_path, manifest, gz_source, raw_server
):
    url = raw_server(garbage, gz_source)
    dest = tmp_path / "raw"

    with pytest.raises(DownloadError) as error:
        download_dataset(manifest, [url], dest, timeout_s=5)

    assert url in str(error.value) and "\n" not in str(error.value)
    assert os.listdir(dest) == []


def trickle_body(conn: socket.socket, body: bytes) -> None:
    """Promise the whole file, then send it one byte every 0.1 s."""
    conn.sendall(http_head(Content_Length=str(len(body))))
    for i in range(len(body)):
        conn.sendall(body[i : i + 1])
        time.sleep(0.1)


def trickle_headers(conn: socket.socket, body: bytes) -> None:
    """Send headers that never end, one byte every 0.1 s."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for byte in itertools.cycle(b"X-Slow: a\r\n"):
        conn.sendall(bytes([byte]))
        time.sleep(0.1)


@pytest.mark.parametrize("trickle", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_a_trickling_server_fails_that_source_at_the_deadline_and_the_next_is_used(
    tmp_path, gz_source, manifest, raw_server, trickle
):
    def answer(conn: socket.socket, body: bytes) -> None:
        if body:
            trickle(conn, body)
        else:
            conn.sendall(http_head("404 Not Found", Content_Length="0"))

    only_broken = tmp_path / "only-broken"
    only_broken.mkdir()
    shutil.copyfile(gz_source / f"{BROKEN}.gz", only_broken / f"{BROKEN}.gz")
    url = raw_server(answer, only_broken)
    dest = tmp_path / "raw"

    started = time.monotonic()
    report = download_dataset(manifest, [url, str(gz_source)], dest, timeout_s=5, deadline_s=1.0)
    took = time.monotonic() - started

    assert 1.0 <= took < 3.5, took
    assert report == [f"{f.name}: verified from {gz_source}" for f in manifest.files]
    assert_dataset_verified(dest, manifest)


def test_a_trickling_server_alone_is_a_download_error_naming_the_deadline(tmp_path, gz_source, manifest, raw_server):
    url = raw_server(trickle_body, gz_source)
    dest = tmp_path / "raw"

    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"deadline") as error:
        download_dataset(manifest, [url], dest, timeout_s=5, deadline_s=0.5)

    assert time.monotonic() - started < 2.5
    assert FILE_NAMES["train_images"] in str(error.value)  # the first file already fails
    assert os.listdir(dest) == []
