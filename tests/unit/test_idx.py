"""The IDX (MNIST) file format: exact round trips, precise errors, and loading a dataset split from disk."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from fashion_mlops.data.idx import IdxFormatError, encode_idx, parse_idx, read_idx
from fashion_mlops.data.manifest import load_manifest
from fashion_mlops.data.sample import write_sample_dataset
from fashion_mlops.data.splits import load_split


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)


def test_round_trip_of_a_1d_array_through_a_real_file(tmp_path):
    labels = np.array([9, 0, 0, 3, 255, 7], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(encode_idx(labels))

    decoded = read_idx(path)

    assert decoded.dtype == np.uint8
    assert decoded.shape == (6,)
    np.testing.assert_array_equal(decoded, labels)


def test_round_trip_of_a_3d_array_through_a_real_file(tmp_path, images):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(encode_idx(images))

    decoded = read_idx(path)

    assert decoded.dtype == np.uint8
    assert decoded.shape == (5, 28, 28)
    np.testing.assert_array_equal(decoded, images)


def test_encoding_writes_the_mnist_header(images):
    data = encode_idx(images)

    assert data[:4] == bytes([0, 0, 0x08, 3])
    assert struct.unpack(">3I", data[4:16]) == (5, 28, 28)
    assert len(data) == 16 + 5 * 28 * 28


def test_encoding_a_non_contiguous_view_keeps_logical_order(images):
    view = images[:, ::2, ::-1]
    np.testing.assert_array_equal(parse_idx(encode_idx(view)), view)


def test_encoding_rejects_non_uint8_arrays():
    with pytest.raises(TypeError, match="uint8"):
        encode_idx(np.zeros((2, 2), dtype=np.float32))


def test_parsed_array_is_read_only(images):
    decoded = parse_idx(encode_idx(images))
    with pytest.raises(ValueError):
        decoded[0, 0, 0] = 1


def test_empty_array_round_trips():
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    assert parse_idx(encode_idx(empty)).shape == (0, 28, 28)


def test_bad_magic_is_rejected(tmp_path, images):
    data = bytearray(encode_idx(images))
    data[0:2] = b"\x1f\x8b"  # e.g. a gzip file passed where a plain IDX file was expected
    path = tmp_path / "gzipped-by-mistake"
    path.write_bytes(bytes(data))

    with pytest.raises(IdxFormatError, match="magic") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_wrong_dtype_byte_is_rejected(images):
    data = bytearray(encode_idx(images))
    data[2] = 0x0D  # IDX float32
    with pytest.raises(IdxFormatError, match="unsigned-byte"):
        parse_idx(bytes(data))


@pytest.mark.parametrize("ndim", [0, 5])
def test_unsupported_number_of_dimensions_is_rejected(ndim):
    data = bytes([0, 0, 0x08, ndim]) + b"\x00\x00\x00\x01" * ndim
    with pytest.raises(IdxFormatError, match="dimensions"):
        parse_idx(data)


@pytest.mark.parametrize("length", [0, 3])
def test_data_shorter_than_the_magic_is_rejected(length, images):
    with pytest.raises(IdxFormatError, match="too short"):
        parse_idx(encode_idx(images)[:length])


def test_truncated_header_is_rejected(images):
    data = encode_idx(images)[:10]  # magic says 3 dimensions (16-byte header) but only 10 bytes follow
    with pytest.raises(IdxFormatError, match="truncated header"):
        parse_idx(data, name="t10k-images")


def test_truncated_data_is_rejected(tmp_path, images):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(encode_idx(images)[:-1])

    with pytest.raises(IdxFormatError, match=r"needs 3920 bytes of data, found 3919") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_extra_trailing_bytes_are_rejected(images):
    with pytest.raises(IdxFormatError, match=r"found 3921"):
        parse_idx(encode_idx(images) + b"\x00")


def test_idx_format_error_is_a_value_error():
    assert issubclass(IdxFormatError, ValueError)


def test_load_split_reads_a_generated_dataset_as_uint8_images_and_int64_labels(tmp_path):
    manifest = load_manifest(write_sample_dataset(tmp_path, n_train=40, n_test=20, seed=3, gz=False))

    train = load_split(manifest, tmp_path, "train")
    test = load_split(manifest, tmp_path, "test")

    assert train.images.dtype == torch.uint8
    assert train.images.shape == (40, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    assert train.labels.shape == (40,)
    assert len(train) == 40
    assert test.images.shape == (20, 1, 28, 28)
    assert len(test) == 20
    assert sorted(train.labels.tolist()) == sorted(i % 10 for i in range(40))
    expected = read_idx(tmp_path / manifest.file("train_images").name)
    np.testing.assert_array_equal(train.images[:, 0].numpy(), expected)


@pytest.mark.parametrize("dims", [(0xFFFFFFFF,) * 4, (1 << 16,) * 4], ids=["max-dims", "product-2**64"])
def test_dimensions_whose_product_overflows_64_bits_are_an_idx_format_error_with_the_exact_size(dims):
    data = bytes([0, 0, 0x08, 4]) + struct.pack(">4I", *dims)

    with pytest.raises(IdxFormatError) as error:
        parse_idx(data, name="huge")

    assert f"needs {math.prod(dims)} bytes of data, found 0" in str(error.value)
    assert str(error.value).startswith("huge: ")
