"""Checkpointing: a checkpoint holds the whole state of the run, each part's own ``state_dict`` (the weights and
the optimizer gathered whole under FSDP, the schedule, the position inside the epoch, the best validation), the
callbacks' states keyed by ``state_key``, every rank's RNG states, the model's config and the pipeline; a
resume puts each back exactly. At most one checkpoint per step; temp/ holds the newest mid-epoch state.
The files and their layout are ``CheckpointManager``'s (``checkpoint.py``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from apt_sdk import BuildContext, UserError

from .checkpoint import CheckpointManager
from .failures import DistributedError
from .optimization import Optimization
from .options import TrainerOptions
from .position import Position
from .rng import rng_state, set_rng_state
from .run_state import Events
from .runtime import Runtime
from .validation import Validation

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


class Checkpointing:
    def __init__(self, options: TrainerOptions, context: BuildContext, runtime: Runtime, position: Position,
                 optimization: Optimization, validation: Validation, events: Events) -> None:
        self.context, self.runtime, self.position = context, runtime, position
        self.optimization, self.validation, self.events = optimization, validation, events
        self.enabled = options.save_checkpoints
        self.manager = CheckpointManager(options.checkpoint_dir or context.run_dir, keep_last=options.keep_last,
                                         rank=runtime.dist.rank)
        self.saved: tuple[int, bool] | None = None  # (step, epoch_complete) of the last checkpoint
        self.last_path: Path | None = None  # the last regular checkpoint
        self.resumed_from: Path | None = None
        config = json.dumps(context.config, sort_keys=True, default=str)
        self.pipeline_hash = hashlib.sha256(config.encode()).hexdigest()

    @property
    def saved_step(self) -> int | None:
        return self.saved[0] if self.saved is not None else None

    def capture(self, epoch_complete: bool) -> dict:
        """Everything needed to continue this run exactly (a collective under DDP/FSDP)."""
        self.optimization.flush()
        weights = self.runtime.model_state()  # the order of the collectives is every rank's
        optimizer = self.optimization.optimizer_state()
        config = getattr(self.runtime.model, "config", None)
        return {
            "model_state_dict": weights,
            "optimizer_state_dict": optimizer,
            **self.optimization.state_dict(),
            **self.position.state_dict(epoch_complete),
            **self.validation.state_dict(),
            "callbacks": self.context.callbacks.state_dicts(),
            "rng": self.runtime.dist.gather(rng_state()),  # every rank's, indexed by rank
            "world_size": self.runtime.dist.world_size,
            "config": config.to_dict() if hasattr(config, "to_dict") else None,
            "pipeline": self.context.config,
            "pipeline_hash": self.pipeline_hash,
        }

    def checkpoint(self, epoch_complete: bool) -> None:
        """A checkpoint of this step (marked best when this step's validation was the best); written again
        only to record that the step also completed the epoch."""
        step = self.position.global_step
        if not self.enabled or self.saved in ((step, epoch_complete), (step, True)):
            return
        self.optimization.flush()
        self.position.metrics.update(train_loss=self.position.recent_loss())
        tokenizer = getattr(self.context.data, "tokenizer", None)
        self.last_path = self.manager.save(self.capture(epoch_complete), self.validation.best_step == step, tokenizer)
        self.saved = (step, epoch_complete)
        self.events("on_checkpoint_saved", str(self.last_path))

    def save_temp(self) -> Path:
        """The whole state, mid-epoch, in temp/ (for a killed or interrupted run)."""
        return self.manager.save_temp(self.capture(epoch_complete=False))

    def save_after_failure(self, error: DistributedError) -> None:
        """Every rank is alive and at the same check: save the last completed step (rank 0 writes)."""
        try:
            error.checkpoint = str(self.save_temp())
            self.context.log(f"{error}\nsaved {error.checkpoint} (step {self.position.global_step}); "
                             f"resume with: {self.context.resume_command}")
        except Exception as exc:  # noqa: BLE001 - the original error is what the user must see
            self.context.log(f"warning: could not save a checkpoint after the failure: {exc}")

    def resume(self, spec: str) -> tuple[int, int]:
        """Load the checkpoint ``spec`` names (a path, a glob, ``latest`` or ``best``) into every part; returns
        the (epoch, micro-batch) to continue from."""
        path = self.manager.resolve(spec)
        self.resumed_from = path
        state = self.manager.read(path)
        changes = pipeline_changes(state.get("pipeline"), self.context.config)
        self._load_weights_and_optimizer(path, state, changes)
        self.optimization.load_state_dict(state)
        start = self.position.load_state_dict(state)
        self.validation.load_state_dict(state)
        self.context.callbacks.load_state_dicts(state.get("callbacks") or [], log=self.context.log)
        rngs, dist = state.get("rng") or [], self.runtime.dist
        if len(rngs) == dist.world_size:
            set_rng_state(rngs[dist.rank])
        elif rngs:
            self.context.log(f"note: {path} was written by {len(rngs)} processes, this run has {dist.world_size}: "
                             "random streams are not continued exactly")
        if changes:
            self.context.log("note: the pipeline differs from the checkpoint's: " + "; ".join(changes))
        self.context.log(f"resumed from {path} (epoch {self.position.epoch}, step {self.position.global_step})")
        return start

    def _load_weights_and_optimizer(self, path: Path, state: dict, changes: list[str]) -> None:
        """Nothing is written before this succeeds; a checkpoint that does not fit names what changed."""
        try:
            self.runtime.load_model_state(state["model_state_dict"], path)
            self.optimization.load_optimizer_state(state["optimizer_state_dict"])
        except (UserError, RuntimeError, ValueError, KeyError) as exc:
            detail = str(exc).removeprefix(f"checkpoint {path} ")
            changed = ("the pipeline differs from the checkpoint's: " + "; ".join(changes) + "; so the checkpoint "
                       ) if changes else "the checkpoint "
            raise UserError(f"cannot resume from {path}: {changed}{detail}.\nResume with the settings the run was "
                            f"started with, or start a new run (--overwrite, or another output_dir)") from None
