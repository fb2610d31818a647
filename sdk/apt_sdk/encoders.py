"""Writing an ``apt_sdk.Encoder`` as a torch module, and saving and rebuilding one inside a model.

- ``EncoderModule``: a ``torch.nn.Module`` base with the protocol's freezing (``freeze``, ``frozen``, eval mode
  kept under a parent's ``train()``, ``frozen_grad()`` for ``encode``); subclass it, set ``modality``,
  ``output_dim``, ``preprocessor`` and ``config``, and write ``encode`` and ``from_config``.
- ``EncoderConfig``: a dict of JSON values with the ``to_dict()`` the protocol's ``config`` has.
- ``encoder_record(encoder)`` / ``rebuild_encoder(record, frozen, where)``: what a model saves of an encoder it holds
  (its class's import path, its distribution, its config) and the encoder rebuilt from that.

Needs torch, which an encoder declares (importing ``apt_sdk`` itself does not import this module).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import json
from typing import Any

import torch
from torch import nn

from apt_kernel.errors import UserError


class EncoderConfig(dict):
    """An encoder's ``config``: a dict, with ``to_dict()``: a copy as plain JSON values (an enum a library keeps
    in its settings becomes its value)."""

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self))


class EncoderModule(nn.Module):
    """The freezing of ``apt_sdk.Encoder`` for an encoder that is a torch module.

    ``freeze()``: no parameter requires a gradient and every submodule is in eval mode, whatever ``train()`` a
    parent model calls; ``freeze(False)`` gives back gradients to the parameters that had them when the encoder
    was first frozen (fixed position tables stay fixed) and lets the submodules follow ``train()``/``eval()``.
    Run the network under ``with self.frozen_grad():`` in ``encode``, so a frozen encoder keeps no activations.
    """

    frozen: bool = False

    def freeze(self, frozen: bool = True) -> EncoderModule:
        if not hasattr(self, "_trains"):  # what unfreezing gives gradients back to
            self._trains = {name for name, p in self.named_parameters() if p.requires_grad}
        self.frozen = frozen
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(not frozen and name in self._trains)
        for child in self.children():
            child.train(self.training and not frozen)
        return self

    def train(self, mode: bool = True) -> EncoderModule:
        super().train(mode)
        if self.frozen:  # a parent's .train() must not switch dropout back on in a frozen encoder
            for child in self.children():
                child.eval()
        return self

    def frozen_grad(self) -> contextlib.AbstractContextManager:
        """``torch.no_grad()`` while frozen, else nothing."""
        return torch.no_grad() if self.frozen else contextlib.nullcontext()


def encoder_record(encoder: Any) -> dict:
    """What a model saves of an encoder it holds, to rebuild it: ``{"class": "module:Name", "distribution": ...,
    "config": encoder.config.to_dict()}``. ``rebuild_encoder`` reads it back."""
    kind = type(encoder)
    if "<locals>" in kind.__qualname__ or kind.__module__ == "__main__":
        raise UserError(f"an encoder of class {kind.__qualname__} (module {kind.__module__}) cannot be saved with a "
                        "model: it is rebuilt by its import path, so define it at the top level of an installed "
                        "module")
    try:  # a checkpoint holds plain data only (torch's safe loader), and config.json is JSON
        config = json.loads(json.dumps(encoder.config.to_dict()))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{kind.__qualname__}.config.to_dict() is not plain JSON values ({exc}): a model saves it to "
                        "rebuild the encoder") from None
    return {"class": f"{kind.__module__}:{kind.__qualname__}", "distribution": _distribution(kind.__module__),
            "config": config}


@functools.cache
def _distribution(module: str) -> str | None:
    """The installed distribution that holds ``module``, for the advice of a model that cannot rebuild it."""
    found = importlib.metadata.packages_distributions().get(module.split(".")[0], [])
    return found[0] if found else None


def rebuild_encoder(record: dict, frozen: bool, where: str) -> Any:
    """The encoder ``record`` describes, with fresh weights, then ``freeze(frozen)``.

    :param where: what holds the record, for messages (``"runs/x/model/config.json, encoders.image"``).
    :raises UserError: its class cannot be imported (its distribution is named, to install) or is no encoder.
    """
    path, distribution = record.get("class"), record.get("distribution")
    module_name, _, name = str(path).partition(":")
    install = f"; install {distribution} (pip install {distribution})" if distribution else ""
    try:
        found: Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"{where}: the encoder {path!r} cannot be imported ({exc}){install}") from None
    if not isinstance(found, type) or not callable(getattr(found, "from_config", None)):
        raise UserError(f"{where}: {path!r} is not an encoder class with from_config")
    encoder = found.from_config(record.get("config") or {})
    if not isinstance(encoder, nn.Module):
        raise UserError(f"{where}: {path}.from_config returned {type(encoder).__name__}, not a torch.nn.Module")
    encoder.freeze(frozen)
    return encoder
