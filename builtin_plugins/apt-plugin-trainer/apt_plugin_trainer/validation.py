"""Validation: the loss over the validation batches (all, or ``eval_batches`` of them spread evenly over the
split, the same each time), at most once per step, split across ranks and summed; and the best validation so
far, whose step a checkpoint records and whose weights model/ gets with ``export = "best"``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .options import TrainerOptions
from .position import Position
from .run_state import Events
from .runtime import Runtime


def sampled(count: int, wanted: int) -> set[int] | None:
    """``wanted`` batch indices spread evenly over ``count`` (the middle of each equal share), so a few
    batches estimate the whole split rather than its beginning; None when every batch is wanted."""
    if not wanted or wanted >= count:
        return None
    return {(2 * i + 1) * count // (2 * wanted) for i in range(wanted)}


class Validation:
    def __init__(self, options: TrainerOptions, runtime: Runtime, position: Position, data, events: Events) -> None:
        self.runtime, self.position, self.data, self.events = runtime, position, data, events
        self.eval_batches, self.keeps_best_weights = options.eval_batches, options.exports_best
        self.validated_at: int | None = None  # the step of the last validation: never two at one step
        self.val_count: int | None = None  # validation batches on this rank, counted once for eval_batches
        self.best_val: float | None = None
        self.best_step: int | None = None  # the step of best_val
        self.best_weights: dict | None = None  # the model at best_step on the CPU, when no checkpoint holds it

    def run(self, note: Callable[[str], None]) -> None:
        """Validate at this step (never twice): the metrics, ``note`` of the loss, the callbacks'
        ``on_validation_end``; a finite loss below the best so far is the new best."""
        step = self.position.global_step
        if self.validated_at == step:
            return
        self.validated_at = step
        val_loss = self._loss()
        if val_loss is None:
            return
        self.position.metrics["val_loss"] = val_loss
        note(f"step {step}: val loss {val_loss:.4f}")
        with self.runtime.errors.capture(step):
            self.events("on_validation_end", {"val_loss": val_loss, "step": step})
        worse = self.best_val is not None and val_loss >= self.best_val
        if not math.isfinite(val_loss) or worse:  # a NaN validation is never the best
            return
        self.best_val, self.best_step, self.best_weights = val_loss, step, None
        self.position.metrics["best_val_loss"] = val_loss

    @torch.no_grad()
    def _loss(self) -> float | None:
        """The mean loss per target over the (chosen) validation batches of every rank; None without any."""
        runtime, model = self.runtime, self.runtime.model
        model.eval()
        sums = torch.zeros(2, device=runtime.device)
        with runtime.errors.capture(self.position.global_step):
            chosen = None
            if self.eval_batches:
                if self.val_count is None:  # the protocol gives no length: count this rank's batches once
                    self.val_count = sum(1 for _ in self.data.val_batches())
                chosen = sampled(self.val_count, self.eval_batches)
            for i, batch in enumerate(self.data.val_batches()):
                if chosen is None or i in chosen:
                    sums += torch.stack(runtime.forward_loss(model, batch))
        model.train()
        runtime.errors.check()
        total, count = runtime.dist.sum(sums).tolist()
        return total / count if count else None

    def keep_best(self, saved_step: int | None) -> None:
        """With export = "best": a best found at this step that no checkpoint of this step holds is copied
        to the CPU (a collective under FSDP: every rank decides alike)."""
        step = self.position.global_step
        if self.keeps_best_weights and self.best_step == step and self.best_weights is None and saved_step != step:
            self.best_weights = self.runtime.model_state(copy=True)

    def state_dict(self) -> dict:
        return {"best_val": self.best_val, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best_val = state.get("best_val", self.position.metrics.get("val_loss"))
        self.best_step = state.get("best_step")
