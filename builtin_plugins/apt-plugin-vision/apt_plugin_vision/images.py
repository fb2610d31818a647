"""Opening images safely and turning any PIL mode into RGB.

Every failure is a ``UserError`` that names the file (and, when the caller passes one, the record), so a
bad image in a dataset of thousands is found from the message alone.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from apt_sdk import UserError

ImageSource = Image.Image | str | os.PathLike | bytes


def describe(source: Any, where: str | None) -> str:
    """How an error names an image: its file (or what it is) and, from a dataset, the record."""
    what = f"image {str(source)!r}" if isinstance(source, str | os.PathLike) else "image"
    return f"{what} ({where})" if where else what


def load_image(source: ImageSource, where: str | None = None) -> Image.Image:
    """An RGB PIL image from a path, encoded bytes or a PIL image, fully decoded and checked.

    :param where: where the image came from, for messages (``"record 17 of train.jsonl"``).
    :raises UserError: the file is missing, not an image, corrupt or truncated, larger than PIL's
        decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``), or has no pixels.
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
                image.load()  # decode now: a truncated file fails here, named, not inside a collate
                image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{label}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise UserError(f"{label}: cannot be read as an image (corrupt, or not an image file)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{label}: corrupt or truncated image ({exc})") from None
    return to_rgb(image, label)


def to_rgb(image: Image.Image, label: str = "image") -> Image.Image:
    """RGB from any mode: transparency is composited on white, 16-bit and float images are scaled to 8 bits."""
    if image.width == 0 or image.height == 0:
        raise UserError(f"{label}: has zero size ({image.width}x{image.height})")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        image = Image.fromarray(_to_uint8(np.asarray(image)), mode="L")
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


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """High-bit-depth greyscale to 0..255: integers above 255 as 16-bit, floats in 0..1 or 0..255 as they are."""
    floating = np.issubdtype(values.dtype, np.floating)
    values = np.nan_to_num(values.astype(np.float64))
    peak = values.max() if values.size else 0.0
    if floating and peak <= 1.0:
        values = values * 255.0
    elif peak > 255:
        values = values / 257.0  # 65535 -> 255
    return np.clip(values, 0, 255).round().astype(np.uint8)
