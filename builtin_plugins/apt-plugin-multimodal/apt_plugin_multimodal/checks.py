"""What the model's Python API checks before it runs: a wrong argument is a ``ValueError`` naming it, not a
traceback from deep inside the decoder or a transformers tower (or, worse, a silent "" from a negative length)."""

from __future__ import annotations

import math
from typing import Any

import torch


def check_text(ids: Any, max_seq_len: int) -> None:
    """``text_input_ids``: token ids ``[batch, length]``, at least one row and one token, at most ``max_seq_len``."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        shape = list(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"text_input_ids must be token ids [batch, length], got {shape}")
    if ids.numel() == 0:
        raise ValueError(f"text_input_ids is empty ({list(ids.shape)}): give at least one token per row "
                         "(the tokenizer's <bos> at least)")
    if ids.shape[1] > max_seq_len:
        raise ValueError(f"text_input_ids has {ids.shape[1]} tokens, more than max_seq_len = {max_seq_len}")


def _rows(value: Any) -> int | None:
    if value is None:
        return None
    return value.shape[0] if isinstance(value, torch.Tensor) else len(value)


def check_media(rows: int, image: Any, audio: Any, image_present: Any, audio_mask: Any, image_index: Any,
                vision: Any) -> None:
    """Every argument that is per record has ``rows`` rows (``image`` has one per distinct image when
    ``image_index`` says whose is which), and pixel values have the size the vision tower takes."""
    if isinstance(image, torch.Tensor):
        size = vision.preprocessor.image_size if vision is not None else None
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image: pixel values must be [batch, 3, height, width], got {list(image.shape)} "
                             "(or pass PIL images or paths, which are resized)")
        if size is not None and tuple(image.shape[2:]) != (size, size):
            raise ValueError(f"image: pixel values are {image.shape[2]}x{image.shape[3]} but this model's vision "
                             f"tower takes {size}x{size} (pass PIL images or paths to have them resized)")
    per_record = {"image_present": image_present, "audio_mask": audio_mask, "image_index": image_index,
                  "audio": audio, "image": image if image_index is None else None}
    for name, value in per_record.items():
        if value is not None and _rows(value) != rows:
            raise ValueError(f"{name} has {_rows(value)} rows but the text has {rows}: give one per record")
    if image_index is not None and image is None:
        raise ValueError("image_index says which row of image each record reads, but no image was given")


def check_sampling(max_length: Any, do_sample: bool, temperature: Any, top_k: Any) -> None:
    """Generation's arguments: a positive number of new tokens, a positive finite temperature and a positive
    top_k (or None / 0: no limit), whether or not sampling is on: a value that cannot mean anything is refused
    rather than ignored."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive number of new tokens, got {max_length!r}")
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"temperature must be a positive number (1.0: the model's distribution), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be None, 0 (no limit) or a positive number of tokens, got {top_k!r}")
