"""Image decoding shared by ingest and predict, so both see exactly the same pixels."""

from __future__ import annotations

import re
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError

#: File name endings treated as images when walking folders.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: The only formats PIL may open, whatever a file is named: no EPS (Ghostscript), no other plugin.
FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
#: The most pixels an image may have (width x height), checked from its header before decoding:
#: above a 45 Mpx camera's frames and every dermatoscope's; 150 MB as RGB. A decompression bomb
#: (a small file of huge dimensions) is refused here, PIL's own limits never reached.
MAX_PIXELS = 50_000_000
#: PIL warns (from Image.open) of images over its own limit through the global warnings filters:
#: the switch to errors is made under this lock, so threads decoding side by side do not race.
_OPEN_LOCK = threading.Lock()
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, ZeroDivisionError, MemoryError)


class ImageDecodeError(PipelineError):
    """One image file cannot be read or decoded."""


def load_square_image(path: str | Path, size: int, jpeg_draft: bool = True) -> np.ndarray:
    """Decode ``path`` to an RGB ``(size, size, 3)`` uint8 array.

    The largest centred square is cropped (lesions are centred in dermoscopy, so this keeps the
    lesion and avoids squashing its shape), then resized. Grayscale, palette, CMYK and
    alpha images are converted to RGB. With ``jpeg_draft`` a JPEG is decoded at the smallest
    power-of-two reduction that still covers ``size`` pixels on its short side, which makes
    decoding several times faster for large originals without changing the output size.
    """
    return centre_crop_resize(_decode_rgb(Path(path), size, jpeg_draft), size)


def load_frame(path: str | Path, size: int, jpeg_draft: bool = True) -> np.ndarray:
    """Decode ``path`` to the whole RGB frame with its short side resized to ``size``: the scale
    of :func:`load_square_image`'s square, with what lies beside it kept."""
    image = _decode_rgb(Path(path), size, jpeg_draft)
    width, height = image.size
    short = min(width, height)
    target = (round(width * size / short), round(height * size / short))
    if target != image.size:
        image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)


def _decode_rgb(path: Path, size: int, jpeg_draft: bool) -> Image.Image:
    """The decoded RGB image (JPEGs drafted to a short side of at least ``size``), or one
    :class:`ImageDecodeError`."""
    try:
        with _open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(_too_big(path, width * height))
            if jpeg_draft and image.format == "JPEG":
                width, height = image.size
                short = min(width, height)
                # draft() keeps both sides >= the requested size, so the short side stays >= size.
                image.draft("RGB", (width * size // short + 1, height * size // short + 1))
            image.load()  # decode everything now so truncated files fail here
            return _to_rgb(image)
    except FileNotFoundError as error:
        raise ImageDecodeError(f"{path}: file not found") from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError(f"{path}: not an image file ({', '.join(FORMATS[:-1])} or {FORMATS[-1]})") from error
    except _DECODE_ERRORS as error:  # what PIL's decoders raise on malformed data
        raise ImageDecodeError(f"{path}: cannot decode image ({_first_line(error)})") from error


def _open(path: Path) -> Image.Image:
    """``Image.open`` with :data:`FORMATS` only; PIL's decompression-bomb warning (made an error
    under the lock: only the header is read there, so it is held briefly) and its error become one
    :class:`ImageDecodeError` that says how many pixels."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path, formats=FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        counted = re.search(r"\((\d+) pixels\)", str(error))
        raise ImageDecodeError(_too_big(path, int(counted.group(1)) if counted else None)) from None


def _too_big(path: Path, pixels: int | None) -> str:
    count = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    return f"{path}: {count}, over the limit of {MAX_PIXELS:,} (a decompression bomb?)"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def centre_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """Crop the largest centred square of ``image`` and resize it to ``size`` x ``size``."""
    width, height = image.size
    short = min(width, height)
    left, top = (width - short) // 2, (height - short) // 2
    square = image.crop((left, top, left + short, top + short))
    if short != size:
        square = square.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.asarray(square, dtype=np.uint8)
    if array.shape != (size, size, 3):  # defensive: PIL modes we did not anticipate
        raise ImageDecodeError(f"unexpected decoded shape {array.shape}")
    return array


def find_image_files(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (walked recursively) into a sorted list of image paths."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            found.append(path)  # explicit files are kept even when unreadable: reported later
    return found
