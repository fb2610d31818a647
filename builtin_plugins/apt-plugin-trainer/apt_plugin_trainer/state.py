"""A training run's whole state, for checkpoints that resume exactly: what is saved, and how it comes back.

A checkpoint holds model and optimizer (gathered whole under FSDP), scheduler, scaler, the position
inside the epoch, every rank's RNG states, the callbacks' states keyed by name, and the pipeline.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from apt_sdk import UserError

from .checkpoint import load_model_state

if TYPE_CHECKING:
    from .trainer import Trainer


def rng_state() -> dict:
    """This process's RNG states as checkpoint-safe values (tensors, ints, tuples)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


def _dcp():
    """torch's distributed state-dict helpers, imported when an FSDP run or a name-keyed optimizer state
    needs them: the import takes about a second, which every single-process run paid at start."""
    from torch.distributed.checkpoint import state_dict

    return state_dict


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """Load an optimizer state saved plain (keyed by index) or by FSDP (keyed by parameter name). The
    implementation this run chose (fused, foreach) stays: the saved param groups carry the writer's, and
    an FSDP checkpoint's foreach AdamW resumed in one process would refuse the fused path's found_inf."""
    kept = [{k: group[k] for k in IMPLEMENTATION if k in group} for group in optimizer.param_groups]
    if any(isinstance(key, str) for key in state.get("state", {})):
        _dcp().set_optimizer_state_dict(model, optimizer, state)
    else:
        optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, kept, strict=True):
        group.update(flags)


def model_and_optimizer_state(trainer: Trainer) -> tuple[dict, dict]:
    if not trainer.fsdp:
        return trainer.model.state_dict(), trainer.optimizer.state_dict()
    # gathered whole on rank 0 (a collective: every rank calls it); optimizer state keyed by name
    dcp = _dcp()
    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (dcp.get_model_state_dict(trainer.model, options=options),
            dcp.get_optimizer_state_dict(trainer.model, trainer.optimizer, options=options))


def model_state(trainer: Trainer, copy: bool = False) -> dict:
    """The model's weights, whole (gathered on rank 0 under FSDP, a collective); ``copy``: on the CPU,
    detached from the training run's tensors."""
    if trainer.fsdp:
        dcp = _dcp()
        return dcp.get_model_state_dict(trainer.model, options=dcp.StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
    weights = trainer.model.state_dict()
    return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()} if copy else weights


def capture(trainer: Trainer, epoch_complete: bool) -> dict:
    """Everything needed to continue this run exactly (a collective under DDP/FSDP)."""
    model_state, optimizer_state = model_and_optimizer_state(trainer)
    config = getattr(trainer.model, "config", None)
    return {
        "model_state_dict": model_state,
        "optimizer_state_dict": optimizer_state,
        "scheduler_state_dict": trainer.scheduler.state_dict(),
        "scaler_state_dict": trainer.scaler.state_dict() if trainer.scaler else None,
        "epoch": trainer.epoch,
        "global_step": trainer.global_step,
        "loss_history": list(trainer.loss_history),
        "metrics": {k: float(v) for k, v in trainer.last_metrics.items()},
        "position": {"epoch": trainer.epoch, "batches_done": trainer.batches_done, "epoch_complete": epoch_complete},
        "best_val": trainer.best_val,
        "best_step": trainer.best_step,
        "callbacks": trainer.context.callbacks.state_dicts(),
        "rng": trainer.dist.gather(rng_state()),  # every rank's, indexed by rank
        "world_size": trainer.dist.world_size,
        "config": config.to_dict() if hasattr(config, "to_dict") else None,
        "pipeline": trainer.context.config,
        "pipeline_hash": trainer.pipeline_hash,
    }


IGNORED_CHANGES = {"trainer.resume_from"}  # how a run was resumed is not a change of the run


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(data, list) and any(isinstance(v, dict) for v in data):
        return {k: v for i, value in enumerate(data) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix[:-1]: data}


def pipeline_changes(saved: dict | None, now: dict) -> list[str]:
    """``key: old in the checkpoint, new now`` for each pipeline value that differs."""
    if not saved:
        return []
    before, after = _flat(saved), _flat(now)
    missing = "(not set)"
    return [f"{key}: {before.get(key, missing)!r} in the checkpoint, {after.get(key, missing)!r} now"
            for key in sorted(before.keys() | after.keys())
            if key not in IGNORED_CHANGES and before.get(key, missing) != after.get(key, missing)]


def _load_model_and_optimizer(trainer: Trainer, path: Path, state: dict, changes: list[str]) -> None:
    """Nothing is written before this succeeds; a checkpoint that does not fit names what changed."""
    try:
        if trainer.fsdp:
            dcp = _dcp()
            options = dcp.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            dcp.set_model_state_dict(trainer.model, state["model_state_dict"], options=options)
            dcp.set_optimizer_state_dict(trainer.model, trainer.optimizer, state["optimizer_state_dict"],
                                         options=options)
        else:
            load_model_state(trainer.model, state["model_state_dict"], path)
            load_optimizer_state(trainer.model, trainer.optimizer, state["optimizer_state_dict"])
    except (UserError, RuntimeError, ValueError, KeyError) as exc:
        detail = str(exc).removeprefix(f"checkpoint {path} ")
        changed = ("the pipeline differs from the checkpoint's: " + "; ".join(changes) + "; so the checkpoint "
                   ) if changes else "the checkpoint "
        raise UserError(f"cannot resume from {path}: {changed}{detail}.\nResume with the settings the run was "
                        f"started with, or start a new run (--overwrite, or another output_dir)") from None


def restore(trainer: Trainer, path: Path, state: dict) -> tuple[int, int]:
    """Load ``state`` (read from ``path``) into the trainer; returns (epoch, batch) to continue from."""
    changes = pipeline_changes(state.get("pipeline"), trainer.context.config)
    _load_model_and_optimizer(trainer, path, state, changes)
    trainer.scheduler.load_state_dict(state["scheduler_state_dict"])
    if trainer.scaler is not None and state.get("scaler_state_dict"):
        trainer.scaler.load_state_dict(state["scaler_state_dict"])
    trainer.global_step, trainer.loss_history = state["global_step"], list(state["loss_history"])
    trainer.last_metrics = dict(state.get("metrics") or {})
    trainer.best_val = state.get("best_val", trainer.last_metrics.get("val_loss"))
    trainer.best_step = state.get("best_step")
    trainer.context.callbacks.load_state_dicts(state.get("callbacks") or [])
    rngs = state.get("rng") or []
    if len(rngs) == trainer.dist.world_size:
        set_rng_state(rngs[trainer.dist.rank])
    elif rngs:
        trainer.log(f"note: {path} was written by {len(rngs)} processes, this run has {trainer.dist.world_size}: "
                    "random streams are not continued exactly")
    position = state.get("position") or {"epoch": state["epoch"], "batches_done": 0, "epoch_complete": True}
    trainer.epoch = position["epoch"]
    if changes:
        trainer.log("note: the pipeline differs from the checkpoint's: " + "; ".join(changes))
    trainer.log(f"resumed from {path} (epoch {position['epoch']}, step {trainer.global_step})")
    if position["epoch_complete"]:
        return position["epoch"] + 1, 0
    return position["epoch"], position["batches_done"]


def export(trainer: Trainer, directory: Path, weights: dict | None = None) -> Path | None:
    """The trained model for inference, with ``weights`` (the best validation's) when given, else as it is
    now: ``save_pretrained`` where the model has it, else safetensors; the data's tokenizer beside it.
    Rank 0 writes (under FSDP every rank helps gather first)."""
    model = trainer.model
    if trainer.fsdp:
        weights = model_state(trainer) if weights is None else weights  # {} off rank 0: no second gather
        if not trainer.is_main:
            return None
        model = type(trainer.model)(trainer.model.config)
    elif not trainer.is_main:
        return None
    if weights is not None:
        model.load_state_dict(weights)  # like load_best_model_at_end: the model in memory is the one exported
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_model

        save_model(model, str(directory / "model.safetensors"))
    tokenizer: Any = getattr(trainer.data, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "save"):
        tokenizer.save(directory / "tokenizer")
    return directory
