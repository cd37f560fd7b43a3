"""Images to classify, read from IDX files, PNG or JPEG files, or folders of them, as 28 x 28 uint8 arrays.

A 28 x 28 grayscale image is taken as it is. Any other picture (a product photo, say) is converted the way Zalando
made Fashion-MNIST from its product photos (Xiao et al., 2017, section 2): flatten onto white, convert to grayscale,
trim the edges that have the corner's colour, resize the longest edge to 28, sharpen, extend the shortest edge to 28
around the centre, and negate, so the garment is light on black. A picture whose background is already dark is not
negated. A file that cannot be read is reported in one line and the others go on.
"""

from __future__ import annotations

import gzip
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashion_mlops.data.idx import parse_idx
from fashion_mlops.errors import IdxFormatError

SIDE = 28
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IDX_SUFFIXES = ("-ubyte", "-ubyte.gz", ".idx", ".idx.gz")
MAX_FILE_BYTES = 64 << 20
MAX_IDX_BYTES = 512 << 20  # decompressed; the 60k training images take 47 MB
MAX_PIXELS = 40_000_000  # Pillow's own bomb check allows 89M before it warns
BACKGROUND_TOLERANCE = 16  # grey levels from the corner colour that still count as background when trimming
GRAYSCALE_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "1")
GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE_MAGIC = b"\x00\x00\x08"


class NotAnImage(ValueError):
    """The file holds no image we can classify; the message says why."""


@dataclass(frozen=True)
class Image:
    file: str
    index: int  # the image's place in an IDX file; 0 for a picture file
    pixels: np.ndarray  # 28 x 28 uint8, light garment on black


@dataclass(frozen=True)
class Unreadable:
    file: str
    reason: str


def read_images(paths: list[Path]) -> Iterator[Image | Unreadable]:
    """Every image in `paths`, in order; folders give their PNG, JPEG and IDX files in sorted order."""
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _looks_readable(p))
            if not found:
                yield Unreadable(str(path), f"holds no {', '.join(IMAGE_SUFFIXES)} or IDX files")
            for file in found:
                yield from _read_file(file)
        else:
            yield from _read_file(path)


def _looks_readable(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(IMAGE_SUFFIXES) or name.endswith(IDX_SUFFIXES)


def _read_file(path: Path) -> Iterator[Image | Unreadable]:
    try:
        if path.exists() and not path.is_file():  # a device or a pipe would be read without end
            raise NotAnImage("not a regular file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise NotAnImage(f"{size} bytes, more than {MAX_FILE_BYTES}")
        data = path.read_bytes()
        if data.startswith(GZIP_MAGIC):
            data = _gunzip(data)
        images = _idx_images(data, str(path)) if data.startswith(IDX_UBYTE_MAGIC) else [convert_picture(data)]
    except NotAnImage as refused:
        yield Unreadable(str(path), str(refused))
        return
    except OSError as error:
        yield Unreadable(str(path), error.strerror or type(error).__name__)
        return
    for index, pixels in enumerate(images):
        yield Image(str(path), index, pixels)


def _gunzip(data: bytes) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, gzip.BadGzipFile):
        raise NotAnImage("not a readable gzip file") from None
    if len(out) > MAX_IDX_BYTES:
        raise NotAnImage(f"decompresses to more than {MAX_IDX_BYTES} bytes")
    return out


def _idx_images(data: bytes, name: str) -> np.ndarray:
    try:
        array = parse_idx(data, name)
    except IdxFormatError as error:
        raise NotAnImage(str(error).removeprefix(f"{name}: ")) from None
    if array.shape[-2:] != (SIDE, SIDE) or array.ndim not in (2, 3):
        raise NotAnImage(f"an IDX file of shape {array.shape}; allowed: N x 28 x 28 images")
    if array.size == 0:
        raise NotAnImage("an IDX file of no images")
    return array.reshape(-1, SIDE, SIDE)


def convert_picture(data: bytes) -> np.ndarray:
    """A PNG or JPEG as a 28 x 28 uint8 image in Fashion-MNIST's style (see the module's docstring)."""
    from PIL import Image as PilImage
    from PIL import ImageFilter, ImageOps, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", PilImage.DecompressionBombWarning)
        try:
            picture = PilImage.open(io.BytesIO(data), formats=["PNG", "JPEG"])  # reads the header only
        except (UnidentifiedImageError, PilImage.DecompressionBombWarning, PilImage.DecompressionBombError):
            raise NotAnImage("not a PNG, JPEG or IDX file of images") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise NotAnImage(f"a damaged image ({error})") from None
        if picture.width * picture.height > MAX_PIXELS:
            raise NotAnImage(f"{picture.width} x {picture.height} pixels, more than {MAX_PIXELS}")
        try:
            picture.load()
        except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
            raise NotAnImage(f"a damaged image ({error})") from None
    if picture.size == (SIDE, SIDE) and picture.mode in GRAYSCALE_MODES:
        return np.asarray(_grayscale(picture), dtype=np.uint8).copy()
    picture = ImageOps.exif_transpose(picture)  # a phone photo stored sideways, upright as it was taken
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        white = PilImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = PilImage.alpha_composite(white, rgba)
    gray = _grayscale(picture)
    background = gray.getpixel((0, 0))
    difference = np.abs(np.asarray(gray, dtype=np.int16) - background) > BACKGROUND_TOLERANCE
    if not difference.any():
        raise NotAnImage("the picture is blank (one colour throughout)")
    rows, cols = np.flatnonzero(difference.any(axis=1)), np.flatnonzero(difference.any(axis=0))
    gray = gray.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    scale = SIDE / max(gray.size)
    size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    gray = gray.resize(size, PilImage.Resampling.LANCZOS).filter(ImageFilter.UnsharpMask(radius=1, percent=100))
    canvas = PilImage.new("L", (SIDE, SIDE), background)
    canvas.paste(gray, ((SIDE - gray.width) // 2, (SIDE - gray.height) // 2))
    if background > 127:
        canvas = ImageOps.invert(canvas)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _grayscale(picture):
    """8-bit grayscale; 16-bit grey levels are scaled down (Pillow's own conversion clips them at 255)."""
    from PIL import Image as PilImage

    if picture.mode.startswith("I"):
        levels = np.asarray(picture, dtype=np.float64) / 257.0
        return PilImage.fromarray(np.clip(np.round(levels), 0, 255).astype(np.uint8), mode="L")
    return picture.convert("L")
