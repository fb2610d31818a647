"""Early stopping, with Lightning's semantics: stop after ``patience`` validations without improvement
(a change larger than ``min_delta`` in the right direction); patience 0 and 1 both stop at the first. A
``monitor`` the validation does not report stops the run (``strict``, as Lightning's), or is said once."""

from __future__ import annotations

import math

from apt_sdk import Callback, UserError


class EarlyStopping(Callback):
    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 3, min_delta: float = 0.0,
                 strict: bool = True) -> None:
        self.monitor, self.mode, self.patience, self.min_delta, self.strict = monitor, mode, patience, min_delta, strict
        self.missing_said = False
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0
        self.stopped_step: int | None = None

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float) -> bool:
        """Record one validation; True when training should stop."""
        if self.improved(value):
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        return self.wait >= max(self.patience, 1)

    def on_validation_end(self, trainer, metrics: dict) -> None:
        if self.monitor not in metrics:  # a misspelt monitor would otherwise never stop anything, silently
            message = (f"early-stopping: the validation reports no {self.monitor!r}; it reports "
                       f"{', '.join(map(repr, sorted(metrics))) or 'nothing'} (set monitor to one of them)")
            if self.strict:
                raise UserError(message)
            if not self.missing_said:
                trainer.log(f"warning: {message}; it stops nothing (strict = false)")
                self.missing_said = True
            return
        if self.update(float(metrics[self.monitor])):
            self.stopped_step = trainer.step
            trainer.should_stop = True
            trainer.log(f"early stopping at step {trainer.step}: {self.monitor} has not improved on "
                        f"{self.best:.4f} for {self.wait} validation(s)")

    @property
    def state_key(self) -> str:
        """Two early stoppings of one pipeline (a metric each) keep their states apart."""
        return self.generate_state_key(monitor=self.monitor, mode=self.mode)

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "stopped_step": self.stopped_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.stopped_step = state["best"], state["wait"], state["stopped_step"]
