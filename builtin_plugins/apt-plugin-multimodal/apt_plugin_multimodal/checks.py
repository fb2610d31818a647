"""What the model's Python API checks before it runs: a wrong argument is a ``ValueError`` naming it, not a
traceback from deep inside the decoder or an encoder (or, worse, a silent "" from a negative length). What media an
encoder takes is the encoder's to check; the model names the argument (``MediaError``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from apt_sdk import UserError


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


class MediaError(UserError, ValueError):
    """Media the model's encoder cannot take: a ``ValueError`` naming the argument to a Python caller, one line (exit
    2) on the command line."""


def rows_of(value: Any) -> int | None:
    if value is None:
        return None
    return value.shape[0] if isinstance(value, torch.Tensor) else len(value)


def check_rows(rows: int, **per_record: Any) -> None:
    """Every argument that is per record (``image_present``, ``audio_mask``, the media as lists or as encoded) has
    ``rows`` rows."""
    for name, value in per_record.items():
        if value is not None and rows_of(value) != rows:
            raise ValueError(f"{name} has {rows_of(value)} rows but the text has {rows}: give one per record")


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
