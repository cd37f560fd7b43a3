"""The download stage: each file comes from the first source that yields verified bytes, or nothing is left behind."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fashion_mlops.data.download import DownloadError, download_dataset
from fashion_mlops.data.idx import read_idx
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
