"""Opening images safely and turning any PIL mode into RGB.

Every failure is a ``UserError`` that names the file (and, when the caller passes one, the record), so a
bad image in a dataset of thousands is found from the message alone.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from apt_sdk import UserError

ImageSource = Image.Image | str | os.PathLike | bytes
REDUCIBLE = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F")  # Image.reduce's modes


def describe(source: Any, where: str | None) -> str:
    """How an error names an image: its file (or what it is) and, from a dataset, the record."""
    what = f"image {str(source)!r}" if isinstance(source, str | os.PathLike) else "image"
    return f"{what} ({where})" if where else what


def load_image(source: ImageSource, where: str | None = None, size: int | None = None) -> Image.Image:
    """An RGB PIL image from a path, encoded bytes or a PIL image, fully decoded and checked.

    :param where: where the image came from, for messages (``"record 17 of train.jsonl"``).
    :param size: the short side the image will be resized to. A file whose short side is at least four
        times that is decoded smaller (a JPEG by its decoder's draft mode, anything else reduced by whole
        blocks of pixels right after decoding), but never below twice ``size``: a 9400x9400 photo for a
        64-pixel model is not carried through the conversions at 88 megapixels. Smaller files are decoded
        as they are.
    :raises UserError: the file is missing, not an image, corrupt or truncated, larger than Pillow's limit
        (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 megapixels unless changed), or has no pixels.
    """
    label = describe(source, where)
    if isinstance(source, Image.Image):
        return to_rgb(source, label)
    if isinstance(source, bytes):
        stream: Any = io.BytesIO(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{label}: no such file" if not path.exists() else f"{label}: not a file")
        stream = path
    else:
        raise UserError(f"{label}: expected a PIL image, a path or bytes, got {type(source).__name__}")
    try:
        # a bomb is refused at the limit itself, not only at PIL's hard 2x limit
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                if size and image.format == "JPEG":  # the decoder scales by 1/2, 1/4 or 1/8 as it decodes
                    image.draft(image.mode, (2 * size, 2 * size))
                image.load()  # decode now: a truncated file fails here, named, not inside a collate
                factor = min(image.size) // (2 * size) if size else 0
                if factor >= 2 and image.mode in REDUCIBLE:  # before any copy of it is made
                    image = image.reduce(factor)
                image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{label}: {_too_big(exc)}") from None
    except UnidentifiedImageError:
        raise UserError(f"{label}: cannot be read as an image (corrupt, or not an image file)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{label}: corrupt or truncated image ({exc})") from None
    return to_rgb(image, label)


def to_rgb(image: Image.Image, label: str = "image") -> Image.Image:
    """RGB from any mode: transparency is composited on white, 16-bit and float images are scaled to 8 bits by their
    format's range."""
    if image.width == 0 or image.height == 0:
        raise UserError(f"{label}: has zero size ({image.width}x{image.height})")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        image = Image.fromarray(_to_uint8(np.asarray(image), mode), mode="L")
    elif mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise UserError(f"{label}: cannot convert mode {mode} to RGB ({exc})") from None


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth greyscale to 0..255 by the format's range, the same level to the same grey in every image:
    16-bit (``I;16``, and ``I``, as Pillow opens 16-bit PNG and TIFF) 0..65535; float (``F``) 0..255, as Pillow's
    own ``convert("L")`` takes it."""
    values = np.nan_to_num(values.astype(np.float64))
    if mode != "F":
        values = values / 257.0  # 65535 -> 255
    return np.clip(values, 0, 255).round().astype(np.uint8)


def _too_big(exc: Exception) -> str:
    """Pillow's decompression-bomb refusal, said as what it is: an image over its size limit."""
    limit = Image.MAX_IMAGE_PIXELS or 0
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found[1]):,} pixels ({int(found[1]) / 1e6:.3g} megapixels)" if found else "its size"
    return (f"{size} is more than Pillow's limit of {limit:,} ({limit / 1e6:.3g} megapixels, PIL.Image."
            f"MAX_IMAGE_PIXELS, its guard against decompression bombs): scale the image down")
