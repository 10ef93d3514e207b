"""Images are untrusted input: only JPEG, PNG, BMP and TIFF are opened, an image over the pixel
limit (a decompression bomb included) is one error line before it is decoded, one such file in
a `predict` batch leaves the rest predicted, and image ids match whatever the Unicode
normalisation of their file names; an id found twice is refused naming both files."""

from __future__ import annotations

import struct
import unicodedata
import warnings
import zlib

import pandas as pd
import pytest
from PIL import EpsImagePlugin, Image

from pipeline.data.images import ImageDecodeError, load_square_image
from pipeline.data.ingest import locate_images
from pipeline.errors import DataValidationError
from pipeline.serving.predict import decoded_batches

MAX_PIXELS = 50_000_000  # pipeline.data.images.MAX_PIXELS (not importable before the fix)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_big_png(path, width: int, height: int) -> None:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: tens of KB on disk, however many pixels."""
    row = b"\x00" * (1 + (width + 7) // 8)
    pixels = zlib.compress(row * height, 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


def test_eps_content_named_jpg_is_refused_without_opening_it_as_eps(tmp_path, monkeypatch):
    opened = []
    original = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or original(self))
    path = tmp_path / "lesion.jpg"
    path.write_bytes(EPS)
    with pytest.raises(ImageDecodeError) as raised:
        load_square_image(path, 32)
    assert opened == [], "the EPS reader (which runs Ghostscript) must never see the file"
    assert str(raised.value) == f"{path}: not an image file (JPEG, PNG, BMP or TIFF)"


@pytest.mark.parametrize(
    "width, height",
    [(8_000, 8_000), (10_000, 9_200), (20_000, 10_000)],
    ids=["over_the_limit", "over_pils_warning", "decompression_bomb"],
)
def test_an_image_over_the_pixel_limit_is_one_error_before_it_is_decoded(tmp_path, width, height):
    path = tmp_path / "huge.png"
    write_big_png(path, width, height)
    assert path.stat().st_size < 100_000 and width * height > MAX_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as raised:
            load_square_image(path, 32)
    assert (
        str(raised.value)
        == f"{path}: {width * height:,} pixels, over the limit of {MAX_PIXELS:,} (a decompression bomb?)"
    )
    assert [str(w.message) for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []


def test_an_image_at_a_cameras_size_is_still_read(tmp_path):
    path = tmp_path / "camera.png"
    write_big_png(path, 6_000, 4_000)  # 24 Mpx
    assert load_square_image(path, 16).shape == (16, 16, 3)


def test_a_bomb_an_over_limit_image_and_eps_in_a_batch_leave_the_rest_decoded(tmp_path):
    good = []
    for number in range(3):
        good.append(tmp_path / f"good{number}.png")
        Image.new("RGB", (40, 30), (10 * number, 80, 60)).save(good[-1])
    write_big_png(tmp_path / "bomb.png", 20_000, 10_000)
    write_big_png(tmp_path / "huge.png", 8_000, 8_000)
    (tmp_path / "eps.jpg").write_bytes(EPS)
    paths = [good[0], tmp_path / "bomb.png", good[1], tmp_path / "huge.png", tmp_path / "eps.jpg", good[2]]
    batches = list(decoded_batches(paths, 32, batch_size=4))
    decoded = [path for batch_paths, _, _ in batches for path in batch_paths]
    errors = [error for _, _, batch_errors in batches for error in batch_errors]
    assert decoded == good
    assert sum(len(images) for _, images, _ in batches) == 3
    assert len(errors) == 3 and all("\n" not in error for error in errors)
    assert [error.split(":")[0] for error in errors] == [
        str(tmp_path / name) for name in ("bomb.png", "huge.png", "eps.jpg")
    ]


def _jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 80, 60)).save(path, "JPEG")


@pytest.mark.parametrize("metadata_form, file_form", [("NFC", "NFD"), ("NFD", "NFC")])
def test_an_image_id_matches_its_file_in_either_unicode_normalisation(tmp_path, metadata_form, file_form):
    name = "ISIC_caf\u00e9_0001"
    _jpeg(tmp_path / "images" / f"{unicodedata.normalize(file_form, name)}.jpg")
    image_id = unicodedata.normalize(metadata_form, name)
    found, missing, unlisted = locate_images(tmp_path, pd.Series([image_id]))
    assert (list(found), missing, unlisted) == ([image_id], [], 0)


def test_an_image_id_found_in_two_folders_is_refused_naming_both(tmp_path):
    first = tmp_path / "HAM10000_images_part_1" / "ISIC_0000001.jpg"
    second = tmp_path / "HAM10000_images_part_2" / "ISIC_0000001.jpg"
    _jpeg(first)
    _jpeg(second)
    _jpeg(tmp_path / "images" / "ISIC_0000002.jpg")
    with pytest.raises(DataValidationError) as raised:
        locate_images(tmp_path, pd.Series(["ISIC_0000001", "ISIC_0000002"]))
    assert raised.value.problems == [f"image_id 'ISIC_0000001' has two files: {first} and {second}"]


def test_two_spellings_of_one_name_in_one_folder_are_two_files_for_one_id(tmp_path):
    name = "ISIC_caf\u00e9"
    nfc = tmp_path / "images" / f"{unicodedata.normalize('NFC', name)}.jpg"
    nfd = tmp_path / "images" / f"{unicodedata.normalize('NFD', name)}.png"
    _jpeg(nfc)
    _jpeg(nfd)
    with pytest.raises(DataValidationError, match="has two files"):
        locate_images(tmp_path, pd.Series([name]))


def test_metadata_ids_that_differ_only_in_normalisation_are_duplicates(tmp_path):
    from pipeline.config import HAM10000_CLASSES
    from pipeline.data.ingest import METADATA_FILE, read_metadata

    name = "ISIC_caf\u00e9"
    rows = [f"L{number},{unicodedata.normalize(form, name)},nv" for number, form in enumerate(("NFC", "NFD"))]
    (tmp_path / METADATA_FILE).write_text("lesion_id,image_id,dx\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError) as raised:
        read_metadata(tmp_path, HAM10000_CLASSES)
    assert raised.value.problems == [f"line 3: duplicate image_id '{unicodedata.normalize('NFC', name)}'"]
