"""The multimodal model's encoders, used through the kernel's ``Encoder`` protocol (``apt_sdk.Encoder``) and
nothing else, so any encoder plugin stands in for ``clip`` or ``whisper``: the checks an encoder given to the
model passes, the towers the model builds itself when it is given none (CLIP's and Whisper's presets), and one
modality's media (raw, or as its preprocessor made them) to features and their mask."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from apt_sdk import Encoder, UserError

from .checks import MediaError
from .config import SLOTS

MEMBERS = (*Encoder.__annotations__, *(name for name, value in vars(Encoder).items() if not name.startswith("_")
                                       and (callable(value) or isinstance(value, classmethod))))


def checked(encoder: Any, slot: str) -> Any:
    """``encoder`` for the model's ``slot`` (``vision``, ``audio``), or a ``ValueError`` naming the argument."""
    argument, modality = f"{slot}_encoder", SLOTS[slot]
    missing = [name for name in MEMBERS if not hasattr(encoder, name)]
    if missing:
        raise ValueError(f"{argument}: {type(encoder).__name__} lacks {', '.join(missing)} of the Encoder protocol "
                         f"(apt_sdk.Encoder: {', '.join(MEMBERS)})")
    if encoder.modality != modality:
        raise ValueError(f"{argument}: {type(encoder).__name__} encodes {encoder.modality!r}, not {modality!r}")
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{argument}: {type(encoder).__name__} is not a torch.nn.Module: the model holds its encoders "
                         "as submodules, whose weights train, move and are saved with the model's")
    return encoder


def built(slot: str, fields: dict | None, freeze: bool) -> nn.Module:
    """The tower the model builds when it is given none: CLIP's (``VisionEncoder()``'s ViT-B/32 without fields)
    or Whisper's (the ``tiny`` preset and a 1 s window without fields), from a preset and fields over it."""
    if slot == "vision":
        from apt_plugin_vision import VisionEncoder

        fields = dict(fields or {})
        size, stem = fields.pop("size", "base"), fields.pop("stem", None)
        return VisionEncoder(size=size, config=fields or None, freeze_encoder=freeze, stem=stem)
    from apt_plugin_audio import AudioEncoder

    fields = dict(fields or {"size": "tiny"})
    size, seconds = fields.pop("size", "tiny"), fields.pop("max_seconds", 1.0)
    return AudioEncoder(size=size, config=fields or None, max_seconds=seconds, freeze_encoder=freeze)


def encode(encoder: Any, media: Any, mask: torch.Tensor | None, argument: str,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(features [M, N, D], mask [M, N] or None)`` of ``media``: raw items (paths, PIL images, waveforms) go
    through the encoder's preprocessor first; a tensor is what the preprocessor made, with its ``mask``."""
    if not isinstance(media, torch.Tensor):
        prepared = encoder.preprocessor(media)
        media, mask = prepared if isinstance(prepared, tuple) else (prepared, None)
    try:
        features, mask = encoder.encode(media.to(device), None if mask is None else mask.to(device))
    except (ValueError, UserError) as exc:  # an input it cannot take, named by the argument
        raise MediaError(f"{argument}: {exc}") from None
    rows = media.shape[0]
    if features.ndim != 3 or features.shape[0] != rows or features.shape[2] != encoder.output_dim or (
            mask is not None and tuple(mask.shape) != tuple(features.shape[:2])):
        raise TypeError(f"{type(encoder).__name__}.encode gave features {list(features.shape)} and a mask "
                        f"{None if mask is None else list(mask.shape)} for {rows} rows; the Encoder contract is "
                        f"[rows, N, output_dim = {encoder.output_dim}] and [rows, N] or None")
    return features, None if mask is None else mask.bool()
