"""LoRA through PEFT: the ``lora`` table checked before anything is built (a misspelt key, a value out of range, a
module the model does not have), and the adapter put around the model, which then trains alone."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from apt_sdk import UserError, check_known_keys

DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None, "modules_to_save": None}
"""The ``lora`` keys and their defaults (``target_modules`` None: PEFT's default for the architecture)."""


def lora_settings(table: dict) -> dict:
    """The ``lora`` table with its defaults filled in; a ``UserError`` names a key it cannot take."""
    check_known_keys(table, DEFAULTS, "lora key")
    settings = {**DEFAULTS, **table}
    r, alpha, dropout = settings["r"], settings["alpha"], settings["dropout"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise UserError(f"r = {r!r}: the adapter's rank, a whole number of at least 1")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise UserError(f"alpha = {alpha!r}: the scale (alpha / r scales the adapter), a number above 0")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UserError(f"dropout = {dropout!r}: a probability, at least 0 and below 1")
    for key in ("target_modules", "modules_to_save"):
        value = settings[key]
        if key == "target_modules" and isinstance(value, str) and value:
            continue  # "all-linear", or a pattern PEFT matches against the full module names
        if value is not None and (not isinstance(value, list) or not value
                                  or not all(isinstance(v, str) and v for v in value)):
            raise UserError(f"{key} = {value!r}: a list of module names, like [\"q_proj\", \"v_proj\"]"
                            + (", or \"all-linear\"" if key == "target_modules" else ""))
    return settings


def linear_names(network: nn.Module) -> list[str]:
    """The names (last part) of the model's layers LoRA can adapt: its linear layers (GPT-2's Conv1D included)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in network.named_modules()
                   if name and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")})


def check_modules(network: nn.Module, settings: dict) -> None:
    """Each name of ``target_modules`` and ``modules_to_save`` matches a module of ``network``, as PEFT matches
    them (the whole name, or its last parts); else a ``UserError`` listing the layers there are."""
    names = [name for name, _ in network.named_modules() if name]
    for key in ("target_modules", "modules_to_save"):
        wanted = settings[key]
        if not isinstance(wanted, list):
            continue
        missing = [w for w in wanted if not any(n == w or n.endswith(f".{w}") for n in names)]
        if missing:
            kind = type(network).__name__
            raise UserError(f"{key}: {kind} has no module named {', '.join(map(repr, missing))}; its linear "
                            f"layers are {', '.join(linear_names(network))}")


def apply_lora(network: nn.Module, settings: dict, base: str | None) -> nn.Module:
    """``network`` inside a PEFT LoRA model: its own weights frozen, the adapter (and ``modules_to_save``)
    trainable. ``base`` is recorded as the adapter's ``base_model_name_or_path``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", r=settings["r"], lora_alpha=settings["alpha"],
                        lora_dropout=settings["dropout"], target_modules=settings["target_modules"],
                        modules_to_save=settings["modules_to_save"])
    with warnings.catch_warnings():
        # GPT-2's Conv1D stores its weight transposed: PEFT sees it and adapts it the right way round
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
        try:
            model = get_peft_model(network, config)
        except ValueError as exc:  # no default target_modules for this architecture, a pattern that matches none
            raise UserError(f"{str(exc).strip().splitlines()[0]}") from None
    model.peft_config["default"].base_model_name_or_path = base
    return model
