"""Saved weights and optimizer state into live objects: a tensor that does not fit is named, an optimizer state
saved plain (keyed by index) or by FSDP (keyed by parameter name) loads, and torch's distributed state-dict
helpers are imported only when a run needs them."""

from __future__ import annotations

from pathlib import Path

import torch

from apt_sdk import UserError

IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


def dcp():
    """``torch.distributed.checkpoint.state_dict``, imported when an FSDP run or a name-keyed optimizer state
    needs it: the import takes about a second, which every single-process run paid at start."""
    from torch.distributed.checkpoint import state_dict

    return state_dict


def load_model_state(model: torch.nn.Module, saved: dict, path: str | Path) -> None:
    """``model.load_state_dict``, with an error naming each tensor that does not fit instead of torch's."""
    expected = model.state_dict()
    problems = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
                for k, v in saved.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    problems += [f"{k}: missing from the checkpoint" for k in expected if k not in saved]
    problems += [f"{k}: in the checkpoint, not in the model" for k in saved if k not in expected]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise UserError(f"checkpoint {path} does not fit this model: " + "; ".join(problems[:5]) + more)
    model.load_state_dict(saved)


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """Load an optimizer state saved plain (keyed by index) or by FSDP (keyed by parameter name). The
    implementation this run chose (fused, foreach) stays: the saved param groups carry the writer's, and
    an FSDP checkpoint's foreach AdamW resumed in one process would refuse the fused path's found_inf."""
    kept = [{k: group[k] for k in IMPLEMENTATION if k in group} for group in optimizer.param_groups]
    if any(isinstance(key, str) for key in state.get("state", {})):
        dcp().set_optimizer_state_dict(model, optimizer, state)
    else:
        optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, kept, strict=True):
        group.update(flags)
