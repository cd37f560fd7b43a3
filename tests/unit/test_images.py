"""Images to classify: IDX files, PNG and JPEG pictures and folders of them, each read or reported in one line."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PilImage
from PIL import ImageDraw

from fashion_mlops.data.idx import encode_idx
from fashion_mlops.inference import images as images_module
from fashion_mlops.inference.images import Image, NotAnImage, Unreadable, convert_picture, read_images


def encoded(picture: PilImage.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=format)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def noise(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def read(*paths: Path) -> list[Image | Unreadable]:
    return list(read_images(list(paths)))


def only_unreadable(path: Path) -> Unreadable:
    [result] = read(path)
    assert isinstance(result, Unreadable), result
    assert result.file == str(path)
    return result


def garment_on(background: int | tuple[int, ...], garment: int | tuple[int, ...], mode: str = "RGB") -> PilImage.Image:
    """A 200 x 150 picture with a 100 wide, 60 tall rectangle (the garment) off its centre."""
    picture = PilImage.new(mode, (200, 150), background)
    ImageDraw.Draw(picture).rectangle((30, 20, 129, 79), fill=garment)
    return picture


def lit(pixels: np.ndarray, axis: int) -> list[int]:
    """The rows (axis=1) or columns (axis=0) where the image has a light pixel."""
    return np.flatnonzero((pixels > 127).any(axis=axis)).tolist()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` grayscale pixels but holds only a few bytes of image data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")


# IDX files


def test_an_uncompressed_idx_file_gives_each_image_with_its_index_and_exact_pixels(tmp_path):
    pixels = noise(3, 28, 28)
    path = write(tmp_path / "t10k-images-idx3-ubyte", encode_idx(pixels))

    results = read(path)

    assert [(r.file, r.index) for r in results] == [(str(path), 0), (str(path), 1), (str(path), 2)]
    for result, expected in zip(results, pixels, strict=True):
        assert isinstance(result, Image)
        assert result.pixels.dtype == np.uint8
        np.testing.assert_array_equal(result.pixels, expected)


def test_a_gzipped_idx_file_gives_the_same_images_as_the_uncompressed_one(tmp_path):
    pixels = noise(4, 28, 28, seed=1)
    path = write(tmp_path / "t10k-images-idx3-ubyte.gz", gzip.compress(encode_idx(pixels)))

    results = read(path)

    assert all(isinstance(r, Image) for r in results)
    assert [r.index for r in results] == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.stack([r.pixels for r in results]), pixels)


def test_a_single_28_by_28_idx_array_is_one_image(tmp_path):
    pixels = noise(28, 28, seed=2)
    path = write(tmp_path / "one.idx", encode_idx(pixels))

    [result] = read(path)

    assert isinstance(result, Image)
    assert result.index == 0
    np.testing.assert_array_equal(result.pixels, pixels)


@pytest.mark.parametrize(
    ("shape", "named"),
    [((3, 27, 27), "(3, 27, 27)"), ((6,), "(6,)"), ((2, 28, 28, 1), "(2, 28, 28, 1)"), ((2, 784), "784")],
    ids=["27x27-images", "labels", "4-dims", "flat-rows"],
)
def test_an_idx_file_of_another_shape_is_unreadable_naming_its_shape(tmp_path, shape, named):
    path = write(tmp_path / "other-ubyte", encode_idx(noise(*shape)))

    result = only_unreadable(path)

    assert named in result.reason
    assert "28 x 28" in result.reason


def test_a_two_dimensional_idx_file_of_another_shape_is_reported_with_the_shape_it_has(tmp_path):
    path = write(tmp_path / "small-ubyte", encode_idx(noise(27, 27)))

    assert "(27, 27)" in only_unreadable(path).reason


def test_a_truncated_idx_file_is_unreadable_with_the_size_it_lacks_and_no_repeated_file_name(tmp_path):
    path = write(tmp_path / "cut-idx3-ubyte", encode_idx(noise(2, 28, 28))[:-1])

    result = only_unreadable(path)

    assert "needs 1568 bytes of data, found 1567" in result.reason
    assert str(path) not in result.reason


# pictures taken as they are


def test_a_28_by_28_grayscale_png_is_taken_pixel_exact(tmp_path):
    pixels = noise(28, 28, seed=3)
    pixels[0, 0] = 255  # a light corner would make a converted picture negated
    path = write(tmp_path / "digit.png", encoded(PilImage.fromarray(pixels, mode="L")))

    [result] = read(path)

    assert isinstance(result, Image)
    assert (result.file, result.index) == (str(path), 0)
    assert result.pixels.dtype == np.uint8
    np.testing.assert_array_equal(result.pixels, pixels)


def test_a_28_by_28_grayscale_jpeg_is_taken_without_conversion(tmp_path):
    pixels = np.full((28, 28), 255, dtype=np.uint8)
    pixels[10:18, 10:18] = 0  # a dark square on white: converting would negate and enlarge it
    path = write(tmp_path / "square.jpg", encoded(PilImage.fromarray(pixels, mode="L"), "JPEG"))

    [result] = read(path)

    assert isinstance(result, Image)
    assert result.pixels[0, 0] > 240
    assert result.pixels[14, 14] < 15


def test_a_16_bit_grayscale_28_by_28_png_keeps_its_grey_levels(tmp_path):
    pixels = noise(28, 28, seed=4)
    wide = PilImage.fromarray(pixels.astype(np.uint16) * 257)  # the same grey levels on a 16-bit scale
    assert wide.mode == "I;16"
    path = write(tmp_path / "deep.png", encoded(wide))

    [result] = read(path)

    assert isinstance(result, Image)
    np.testing.assert_array_equal(result.pixels, pixels)


# pictures converted the way Fashion-MNIST was made


@pytest.mark.parametrize("garment", [(40, 60, 80), (200, 30, 30)], ids=["dark-blue", "red"])
def test_an_rgb_product_photo_on_white_becomes_a_light_garment_on_black_filling_the_width_centred(garment):
    pixels = convert_picture(encoded(garment_on((255, 255, 255), garment)))

    assert pixels.shape == (28, 28)
    assert pixels.dtype == np.uint8
    assert [pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]] == [0, 0, 0, 0]
    # 100 x 60 is scaled to 28 x 17 and extended to 28 rows around the centre: 5 black rows above, 6 below
    assert lit(pixels, axis=1) == list(range(5, 22))
    assert lit(pixels, axis=0) == list(range(28))
    assert (pixels[:5] == 0).all()
    assert (pixels[22:] == 0).all()
    assert pixels[5:22].min() > 127


def test_a_jpeg_product_photo_is_converted_too():
    pixels = convert_picture(encoded(garment_on((255, 255, 255), (40, 60, 80)), "JPEG"))

    assert pixels.shape == (28, 28)
    assert pixels[0, 0] < 10
    assert pixels[14, 14] > 127


def test_an_rgba_picture_is_flattened_onto_white_so_its_transparent_background_turns_black():
    picture = PilImage.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black: dark if the alpha were dropped
    ImageDraw.Draw(picture).ellipse((8, 8, 55, 55), fill=(30, 30, 30, 255))

    pixels = convert_picture(encoded(picture))

    assert [pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]] == [0, 0, 0, 0]
    assert pixels[14, 14] > 200
    assert lit(pixels, axis=1) == list(range(28))


def test_a_palette_picture_with_a_transparent_colour_is_flattened_onto_white():
    picture = PilImage.new("P", (64, 64), 0)
    picture.putpalette([0, 0, 0, 30, 30, 30] + [0, 0, 0] * 254)  # index 0 black (transparent), 1 dark grey
    ImageDraw.Draw(picture).rectangle((16, 8, 47, 55), fill=1)
    picture.info["transparency"] = 0

    pixels = convert_picture(encoded(picture))

    assert pixels[0, 0] == 0
    assert pixels[14, 14] > 200


def test_a_picture_on_a_dark_background_is_not_negated():
    picture = PilImage.new("L", (100, 100), 0)
    ImageDraw.Draw(picture).rectangle((20, 30, 79, 59), fill=200)  # 60 wide, 30 tall

    pixels = convert_picture(encoded(picture))

    assert [pixels[0, 0], pixels[-1, -1]] == [0, 0]
    assert lit(pixels, axis=1) == list(range(7, 21))  # 28 x 14 around the centre
    assert abs(int(pixels[14, 14]) - 200) <= 10


def test_a_tall_garment_fills_all_28_rows_and_is_centred_horizontally():
    picture = PilImage.new("L", (100, 100), 255)
    ImageDraw.Draw(picture).rectangle((70, 10, 79, 89), fill=0)  # 10 wide, 80 tall, right of the centre

    pixels = convert_picture(encoded(picture))

    assert lit(pixels, axis=1) == list(range(28))
    assert lit(pixels, axis=0) == list(range(12, 16))  # 4 wide, 12 black columns either side
    assert (pixels[:, :12] == 0).all()
    assert (pixels[:, 16:] == 0).all()


@pytest.mark.parametrize(
    "picture",
    [
        PilImage.new("RGB", (50, 40), (120, 30, 200)),
        PilImage.new("L", (28, 30), 255),
        PilImage.fromarray(noise(40, 40, seed=5) // 32 + 100, mode="L"),  # within the background tolerance
    ],
    ids=["purple", "white", "faint-noise"],
)
def test_a_blank_picture_is_not_an_image(picture):
    with pytest.raises(NotAnImage, match="blank"):
        convert_picture(encoded(picture))


def test_a_blank_picture_file_is_unreadable(tmp_path):
    path = write(tmp_path / "blank.png", encoded(PilImage.new("RGB", (60, 60), (250, 250, 250))))

    assert "blank" in only_unreadable(path).reason


# files that cannot be read


def truncated_png() -> bytes:
    data = encoded(PilImage.fromarray(noise(64, 64, 3, seed=6), mode="RGB"))
    return data[: len(data) // 2]


BAD_FILES = {
    "garbage.png": lambda: b"this is not an image at all\n" * 10,
    "truncated.png": truncated_png,
    "header-only.png": lambda: truncated_png()[:40],
    "disguised.png": lambda: encoded(garment_on(255, 0, mode="L"), "GIF"),
    "picture.bmp": lambda: encoded(garment_on((255, 255, 255), (0, 0, 0)), "BMP"),
    "picture.webp": lambda: encoded(garment_on((255, 255, 255), (0, 0, 0)), "WEBP"),
    "empty.png": lambda: b"",
    "corrupt-ubyte.gz": lambda: b"\x1f\x8b" + b"\x00" * 30,
    "truncated-ubyte.gz": lambda: gzip.compress(encode_idx(noise(2, 28, 28)))[:-20],
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_an_unreadable_file_is_reported_in_one_line_and_the_files_around_it_are_still_read(tmp_path, name):
    before = write(tmp_path / "before.png", encoded(PilImage.fromarray(noise(28, 28, seed=7), mode="L")))
    bad = write(tmp_path / name, BAD_FILES[name]())
    after = write(tmp_path / "after-idx3-ubyte", encode_idx(noise(2, 28, 28, seed=8)))

    results = read(before, bad, after)

    assert [type(r) for r in results] == [Image, Unreadable, Image, Image]
    assert [r.file for r in results] == [str(before), str(bad), str(after), str(after)]
    reason = results[1].reason
    assert reason
    assert "\n" not in reason
    assert "\r" not in reason


def test_a_file_of_another_format_is_refused_by_its_content_whatever_its_name(tmp_path):
    path = write(tmp_path / "shirt.png", encoded(garment_on(255, 0, mode="L"), "GIF"))

    assert only_unreadable(path).reason == "not a PNG, JPEG or IDX file of images"


def test_a_truncated_png_is_reported_as_damaged(tmp_path):
    path = write(tmp_path / "cut.png", truncated_png())

    assert only_unreadable(path).reason.startswith("a damaged image (")


def test_a_gzip_file_that_decompresses_beyond_the_limit_is_unreadable(tmp_path, monkeypatch):
    data = encode_idx(noise(5, 28, 28))
    path = write(tmp_path / "bomb-idx3-ubyte.gz", gzip.compress(data))
    monkeypatch.setattr(images_module, "MAX_IDX_BYTES", len(data) - 1)

    result = only_unreadable(path)

    assert result.reason == f"decompresses to more than {len(data) - 1} bytes"


def test_a_gzip_file_that_decompresses_to_exactly_the_limit_is_read(tmp_path, monkeypatch):
    data = encode_idx(noise(5, 28, 28))
    path = write(tmp_path / "full-idx3-ubyte.gz", gzip.compress(data))
    monkeypatch.setattr(images_module, "MAX_IDX_BYTES", len(data))

    assert [type(r) for r in read(path)] == [Image] * 5


def test_a_file_over_the_size_limit_is_unreadable_without_being_parsed(tmp_path, monkeypatch):
    data = encode_idx(noise(2, 28, 28))
    path = write(tmp_path / "big-idx3-ubyte", data)
    monkeypatch.setattr(images_module, "MAX_FILE_BYTES", len(data) - 1)

    result = only_unreadable(path)

    assert result.reason == f"{len(data)} bytes, more than {len(data) - 1}"


def test_a_file_at_the_size_limit_is_read(tmp_path, monkeypatch):
    data = encode_idx(noise(2, 28, 28))
    path = write(tmp_path / "fits-idx3-ubyte", data)
    monkeypatch.setattr(images_module, "MAX_FILE_BYTES", len(data))

    assert [type(r) for r in read(path)] == [Image, Image]


def test_a_picture_over_the_pixel_limit_is_unreadable_and_one_at_it_is_read(tmp_path, monkeypatch):
    path = write(tmp_path / "photo.png", encoded(garment_on((255, 255, 255), (0, 0, 0))))  # 200 x 150
    monkeypatch.setattr(images_module, "MAX_PIXELS", 200 * 150 - 1)

    assert "200 x 150 pixels, more than 29999" in only_unreadable(path).reason

    monkeypatch.setattr(images_module, "MAX_PIXELS", 200 * 150)
    assert [type(r) for r in read(path)] == [Image]


def test_a_png_declaring_more_pixels_than_the_limit_is_refused_from_its_header_without_decoding(tmp_path):
    # 7000 x 7000 is over MAX_PIXELS but under Pillow's own bomb check; the data would not decode (it is cut short)
    path = write(tmp_path / "huge.png", png_header_only(7000, 7000))

    result = only_unreadable(path)

    assert f"7000 x 7000 pixels, more than {images_module.MAX_PIXELS}" in result.reason


def test_a_png_declaring_more_pixels_than_pillow_allows_is_unreadable(tmp_path):
    path = write(tmp_path / "bomb.png", png_header_only(100_000, 100_000))

    result = only_unreadable(path)

    assert result.reason
    assert "\n" not in result.reason


def test_a_picture_over_the_pixel_limit_is_not_called_damaged(tmp_path):
    path = write(tmp_path / "huge.png", png_header_only(7000, 7000))

    assert not only_unreadable(path).reason.startswith("a damaged image")


# folders and paths


def test_a_folder_gives_its_pictures_and_idx_files_in_sorted_order_recursing_and_ignoring_other_files(tmp_path):
    folder = tmp_path / "inbox"
    picture = encoded(garment_on((255, 255, 255), (0, 0, 0)))
    idx = encode_idx(noise(2, 28, 28))
    for name, data in {
        "sub/h.jpeg": encoded(garment_on((255, 255, 255), (0, 0, 0)), "JPEG"),
        "g.JPG": encoded(garment_on((255, 255, 255), (0, 0, 0)), "JPEG"),
        "f-ubyte.gz": gzip.compress(idx),
        "e.idx.gz": gzip.compress(idx),
        "d.idx": idx,
        "c-ubyte": idx,
        "b.png": picture,
        "a.jpg": encoded(garment_on((255, 255, 255), (0, 0, 0)), "JPEG"),
        "README.txt": b"not an image\n",
        "notes.gif": encoded(garment_on(255, 0, mode="L"), "GIF"),
        "labels.npy": b"\x93NUMPY",
        "sub/deeper/manifest.json": b"{}",
    }.items():
        write(folder / name, data)
    (folder / "empty-dir.png").mkdir()

    results = read(folder)

    assert all(isinstance(r, Image) for r in results), results
    assert [(Path(r.file).relative_to(folder).as_posix(), r.index) for r in results] == [
        ("a.jpg", 0),
        ("b.png", 0),
        ("c-ubyte", 0),
        ("c-ubyte", 1),
        ("d.idx", 0),
        ("d.idx", 1),
        ("e.idx.gz", 0),
        ("e.idx.gz", 1),
        ("f-ubyte.gz", 0),
        ("f-ubyte.gz", 1),
        ("g.JPG", 0),
        ("sub/h.jpeg", 0),
    ]


def test_a_folder_reports_its_unreadable_files_in_place(tmp_path):
    folder = tmp_path / "inbox"
    write(folder / "a.png", encoded(garment_on((255, 255, 255), (0, 0, 0))))
    write(folder / "b.png", b"garbage")
    write(folder / "c.png", encoded(garment_on((255, 255, 255), (0, 0, 0))))

    results = read(folder)

    assert [(type(r), Path(r.file).name) for r in results] == [
        (Image, "a.png"),
        (Unreadable, "b.png"),
        (Image, "c.png"),
    ]


@pytest.mark.parametrize("contents", [[], ["README.txt", "sub/notes.gif"]], ids=["empty", "no-images"])
def test_a_folder_without_images_is_one_unreadable_naming_it(tmp_path, contents):
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name in contents:
        write(folder / name, b"x")

    [result] = read(folder)

    assert isinstance(result, Unreadable)
    assert result.file == str(folder)
    assert result.reason == "holds no .png, .jpg, .jpeg or IDX files"


def test_a_missing_path_is_unreadable_and_the_next_path_is_still_read(tmp_path):
    missing = tmp_path / "nowhere.png"
    present = write(tmp_path / "here.png", encoded(PilImage.fromarray(noise(28, 28), mode="L")))

    results = read(missing, present)

    assert [type(r) for r in results] == [Unreadable, Image]
    assert results[0].file == str(missing)
    assert results[0].reason == "No such file or directory"


def test_a_file_named_directly_is_read_whatever_its_suffix(tmp_path):
    path = write(tmp_path / "images.bin", encode_idx(noise(2, 28, 28)))

    assert [type(r) for r in read(path)] == [Image, Image]


def test_every_reason_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "MAX_IDX_BYTES", 1000)
    paths = [write(tmp_path / name, make()) for name, make in sorted(BAD_FILES.items())]
    paths += [
        tmp_path / "missing.png",
        write(tmp_path / "bomb-ubyte.gz", gzip.compress(encode_idx(noise(5, 28, 28)))),
        write(tmp_path / "labels-ubyte", encode_idx(noise(6))),
        write(tmp_path / "blank.png", encoded(PilImage.new("RGB", (60, 60), (9, 9, 9)))),
        write(tmp_path / "huge.png", png_header_only(7000, 7000)),
        write(tmp_path / "empty" / ".keep", b""),
    ]
    paths[-1] = paths[-1].parent

    results = read(*paths)

    assert len(results) == len(paths)
    assert all(isinstance(r, Unreadable) for r in results)
    for result in results:
        assert result.reason
        assert len(result.reason.splitlines()) == 1, result
