"""IDX files (the MNIST format): decode and encode unsigned-byte tensors."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from fashion_mlops.errors import IdxFormatError

UBYTE = 0x08


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes into a read-only uint8 array of the declared shape."""
    if len(data) < 4:
        raise IdxFormatError(f"{name}: {len(data)} bytes is too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != UBYTE:
        raise IdxFormatError(f"{name}: magic {data[:4].hex()} is not an unsigned-byte IDX file (0x0000 08 nn)")
    if not 1 <= ndim <= 4:
        raise IdxFormatError(f"{name}: {ndim} dimensions; allowed: 1 to 4")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{name}: truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(shape)  # exact: numpy's int64 product of four 32-bit sizes can wrap, even to 0
    if len(data) - header != expected:
        raise IdxFormatError(f"{name}: shape {shape} needs {expected} bytes of data, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Read and decode one uncompressed IDX file."""
    return parse_idx(Path(path).read_bytes(), name=str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX bytes (used to make sample datasets and test fixtures)."""
    if array.dtype != np.uint8:
        raise TypeError(f"IDX encoding needs uint8, got {array.dtype}")
    header = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()
