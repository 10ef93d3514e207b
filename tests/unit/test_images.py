"""Image decoding: any size, aspect ratio or colour mode gives the same kind of array."""

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import ImageDecodeError, find_image_files, load_square_image


def _save(path, mode, size, colour, fmt="JPEG"):
    Image.new(mode, size, colour).save(path, fmt)
    return path


def test_centre_crop_keeps_the_middle_of_a_wide_image(tmp_path):
    # Left third red, middle third green, right third blue: the centred square is all green.
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, :100, 0] = 255
    array[:, 100:200, 1] = 255
    array[:, 200:, 2] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(array).save(path)
    square = load_square_image(path, 20)
    assert square.shape == (20, 20, 3)
    assert square[:, :, 1].min() > 200 and square[:, :, 0].max() < 60 and square[:, :, 2].max() < 60


@pytest.mark.parametrize("size", [(600, 450), (450, 600), (37, 211), (16, 16), (1024, 1024)])
def test_odd_sizes_and_aspect_ratios(tmp_path, size):
    path = _save(tmp_path / "odd.jpg", "RGB", size, (120, 80, 50))
    image = load_square_image(path, 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - [120, 80, 50]).max() <= 6


@pytest.mark.parametrize(
    ("mode", "colour", "fmt", "expected"),
    [
        ("L", 128, "JPEG", (128, 128, 128)),
        ("CMYK", (0, 255, 255, 0), "JPEG", (255, 0, 0)),
        ("RGBA", (0, 0, 255, 0), "PNG", (255, 255, 255)),  # transparent pixels become white
        ("RGBA", (0, 0, 255, 255), "PNG", (0, 0, 255)),
        ("P", 3, "PNG", None),
    ],
)
def test_colour_modes_become_rgb(tmp_path, mode, colour, fmt, expected):
    path = _save(tmp_path / f"image.{fmt.lower()}", mode, (50, 40), colour, fmt)
    image = load_square_image(path, 24)
    assert image.shape == (24, 24, 3)
    if expected is not None:
        assert np.abs(image.astype(int) - expected).max() <= 8


def test_jpeg_draft_mode_matches_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((75, 75, 1))).astype(np.uint8)  # 450 x 600, 75 px tiles
    path = tmp_path / "large.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    drafted = load_square_image(path, 64, jpeg_draft=True).astype(int)
    full = load_square_image(path, 64, jpeg_draft=False).astype(int)
    assert drafted.shape == full.shape == (64, 64, 3)
    assert np.abs(drafted - full).mean() < 4


def test_corrupt_truncated_missing_and_non_image_files_raise(tmp_path):
    good = _save(tmp_path / "good.jpg", "RGB", (64, 48), (10, 20, 30))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path, message in (
        (truncated, "cannot decode"),
        (corrupt, "cannot decode|not an image"),
        (text, "not an image"),
        (tmp_path / "absent.jpg", "file not found"),
    ):
        with pytest.raises(ImageDecodeError, match=message):
            load_square_image(path, 16)


def test_find_image_files_walks_folders_and_keeps_explicit_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    first = _save(tmp_path / "a" / "one.jpg", "RGB", (8, 8), (0, 0, 0))
    second = _save(tmp_path / "a" / "b" / "two.PNG", "RGB", (8, 8), (0, 0, 0), "PNG")
    (tmp_path / "a" / "readme.txt").write_text("x")
    explicit = tmp_path / "explicit.dat"
    assert find_image_files([tmp_path / "a", explicit]) == [second, first, explicit]
