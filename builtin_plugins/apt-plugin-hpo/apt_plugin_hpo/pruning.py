"""The `optuna-pruning` callback: reports every validation loss to the running trial and, when Optuna
says prune, asks the trainer to stop (the trainer's stop flag is OR-ed over ranks, so under DDP a
prune decided on rank 0 stops every rank at the same step)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from apt_sdk import BuildContext, Callback

_ACTIVE: list[Any] = []  # the pruning callback of the trial in progress (set by HyperparameterSearcher)


class PruningCallback(Callback):
    def __init__(self, trial=None, monitor: str = "val_loss") -> None:
        self.trial, self.monitor = trial, monitor
        self.pruned = False

    def on_validation_end(self, trainer, metrics: dict) -> None:
        if self.trial is None or metrics.get(self.monitor) is None:  # not rank 0, or nothing to report
            return
        self.trial.report(metrics[self.monitor], metrics["step"])
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True
            trainer.log(f"trial {self.trial.number} pruned at step {metrics['step']} "
                        f"({self.monitor} {metrics[self.monitor]:.4f})")


@contextmanager
def active_trial(trial) -> Iterator[PruningCallback]:
    """Within this block, the `optuna-pruning` callback a pipeline builds reports to ``trial``."""
    callback = PruningCallback(trial)
    _ACTIVE.append(callback)
    try:
        yield callback
    finally:
        _ACTIVE.pop()


def build_pruning(options: dict, context: BuildContext) -> PruningCallback:
    # outside a search (a plain `apt-kernel run`) there is no trial: the callback does nothing
    return _ACTIVE[-1] if _ACTIVE else PruningCallback()
