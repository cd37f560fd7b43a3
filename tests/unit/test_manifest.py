"""Manifests name exactly the files of a dataset (plain names, sizes, SHA-256s); nothing is used before it matches."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from fashion_mlops.data.manifest import ROLES, Manifest, load_manifest
from fashion_mlops.data.sample import FILE_NAMES, write_sample_dataset
from fashion_mlops.data.verify import dataset_digest, mismatch, verified_bytes, verify_file
from fashion_mlops.errors import DataError, ManifestError
from helpers import REPO_ROOT, VENV_BIN, tiny_params, write_params


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A directory with the four plain IDX files of a tiny sample dataset and its manifest.json."""
    write_sample_dataset(tmp_path, n_train=20, n_test=10, seed=2, gz=False)
    return tmp_path


def manifest_with(tmp_path: Path, role: str, **entry) -> Path:
    """A copy of a valid manifest whose `role` entry has `entry`'s keys replaced (a value of None drops the key)."""
    raw = json.loads((REPO_ROOT / "datasets" / "fashion-mnist.json").read_text())
    raw["files"][role].update(entry)
    raw["files"][role] = {key: value for key, value in raw["files"][role].items() if value is not None}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(raw))
    return path


# Loading ------------------------------------------------------------------------------------------------------------


def test_the_fashion_mnist_manifest_names_a_size_for_every_file():
    manifest = load_manifest(REPO_ROOT / "datasets" / "fashion-mnist.json")

    assert [f.size for f in manifest.files] == [47040016, 60008, 7840016, 10008]
    assert [f.name for f in manifest.files] == [FILE_NAMES[role] for role in ROLES]


def test_the_sample_writer_makes_a_manifest_that_loads(dataset):
    manifest = load_manifest(dataset / "manifest.json")

    for f in manifest.files:
        assert f.size == (dataset / f.name).stat().st_size


@pytest.mark.parametrize(
    "name",
    [
        "/../../../tmp/x/OUTSIDE",
        "../OUTSIDE",
        "sub/dir",
        "/etc/passwd",
        "sub\\dir",
        "..",
        ".",
        ".hidden",
        "",
        "nul\x00byte",
        "new\nline",
        "spaced name",
        "x" * 129,
        "ünïcode",
        7,
    ],
    ids=repr,
)
def test_a_file_name_that_is_not_a_plain_file_name_is_a_manifest_error(tmp_path, name):
    path = manifest_with(tmp_path, "test_labels", name=name)

    with pytest.raises(ManifestError) as error:
        load_manifest(path)

    message = str(error.value)
    assert "files.test_labels.name" in message and str(path) in message
    assert "\n" not in message


def test_plain_file_names_with_dots_dashes_and_underscores_are_allowed(tmp_path):
    path = manifest_with(tmp_path, "test_labels", name="t10k-labels_idx1.ubyte.v2")

    assert load_manifest(path).file("test_labels").name == "t10k-labels_idx1.ubyte.v2"


def test_two_roles_naming_the_same_file_is_a_manifest_error(tmp_path):
    path = manifest_with(tmp_path, "test_labels", name="t10k-images-idx3-ubyte")

    with pytest.raises(ManifestError, match=r"files\.test_labels\.name .*test_images"):
        load_manifest(path)


@pytest.mark.parametrize("size", [None, 0, -1, "10008", 10008.0, True], ids=repr)
def test_a_missing_or_non_positive_integer_size_is_a_manifest_error(tmp_path, size):
    path = manifest_with(tmp_path, "test_labels", size=size)

    with pytest.raises(ManifestError, match=r"files\.test_labels\.size .*positive") as error:
        load_manifest(path)
    assert "\n" not in str(error.value)


def test_validate_refuses_a_manifest_that_names_a_file_outside_the_data_dir(tmp_path, sample_dataset):
    raw = json.loads((sample_dataset / "manifest.json").read_text())
    raw["files"]["test_labels"]["name"] = "/../../../tmp/x/OUTSIDE"
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps(raw))
    params = write_params(tmp_path / "params.yaml", tiny_params(dataset, tmp_path))

    result = subprocess.run(
        [str(VENV_BIN / "fashion-mlops"), "--params", str(params), "validate"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "files.test_labels.name" in lines[0]


# Verifying ----------------------------------------------------------------------------------------------------------


def test_mismatch_names_the_size_before_the_checksum(dataset):
    expected = load_manifest(dataset / "manifest.json").file("train_labels")

    assert mismatch(expected, expected.sha256, expected.size) is None
    assert (
        mismatch(expected, expected.sha256, expected.size + 1)
        == f"size {expected.size + 1} bytes, expected {expected.size}"
    )
    assert "SHA-256" in mismatch(expected, "0" * 64, expected.size)


def test_verify_file_accepts_the_listed_bytes_and_says_what_is_wrong_otherwise(dataset):
    manifest = load_manifest(dataset / "manifest.json")
    expected = manifest.file("train_labels")
    path = dataset / expected.name

    assert verify_file(path, expected) is None
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert "SHA-256" in verify_file(path, expected)
    path.write_bytes(bytes(data[:-1]))
    assert "size" in verify_file(path, expected)
    path.unlink()
    assert verify_file(path, expected) == "missing"


def test_verified_bytes_returns_exactly_the_listed_bytes(dataset):
    expected = load_manifest(dataset / "manifest.json").file("test_images")

    data = verified_bytes(dataset / expected.name, expected)

    assert hashlib.sha256(data).hexdigest() == expected.sha256 and len(data) == expected.size


@pytest.mark.parametrize("damage", ["flip-a-byte", "truncate", "append", "remove"])
def test_verified_bytes_refuses_other_bytes_naming_the_file_and_the_fix(dataset, damage):
    expected = load_manifest(dataset / "manifest.json").file("test_images")
    path = dataset / expected.name
    data = bytearray(path.read_bytes())
    if damage == "flip-a-byte":
        data[100] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-1]))
    elif damage == "append":
        path.write_bytes(bytes(data) + b"\x00")
    else:
        path.unlink()

    with pytest.raises(DataError) as error:
        verified_bytes(path, expected)

    message = str(error.value)
    assert str(path) in message and "dvc repro download" in message and "fashion-mlops download" in message
    assert "\n" not in message


def test_dataset_digest_of_verified_files_equals_the_manifest_digest(dataset):
    manifest = load_manifest(dataset / "manifest.json")

    digest = dataset_digest(manifest, dataset)

    assert digest == manifest.digest()
    assert len(digest) == 16 and int(digest, 16) >= 0


def test_dataset_digest_refuses_a_file_that_fails_verification(dataset):
    manifest: Manifest = load_manifest(dataset / "manifest.json")
    path = dataset / manifest.file("train_images").name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other pixels
    path.write_bytes(bytes(data))

    with pytest.raises(DataError, match="dvc repro download") as error:
        dataset_digest(manifest, dataset)
    assert str(path) in str(error.value)


def test_dataset_digest_refuses_a_missing_file(dataset):
    manifest = load_manifest(dataset / "manifest.json")
    (dataset / manifest.file("test_labels").name).unlink()

    with pytest.raises(DataError, match="missing"):
        dataset_digest(manifest, dataset)


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_a_manifest_path_that_is_a_directory_or_not_text_is_a_manifest_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "manifest.json"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe{ not text")
    with pytest.raises(ManifestError, match=r"data\.manifest"):
        load_manifest(path)
