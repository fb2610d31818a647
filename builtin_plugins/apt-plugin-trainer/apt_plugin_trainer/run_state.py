"""What callbacks see of the running trainer: the kernel's ``TrainerState`` (``apt_sdk.TrainerState``), and
nothing else, so a callback cannot come to depend on the trainer's parts. It is also how a callback asks the
trainer to stop or to drop an update (``should_stop``, ``skip_next_step``), which the trainer's parts read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apt_sdk import BuildContext

from .position import Position


class RunState:
    def __init__(self, context: BuildContext, position: Position) -> None:
        self._context, self._position = context, position
        self.optimizer: Any = None  # the trainer's, once built
        self.should_stop = False
        self.skip_next_step = False  # set by a callback in on_before_optimizer_step

    @property
    def step(self) -> int:
        return self._position.global_step

    @property
    def epoch(self) -> int:
        return self._position.epoch

    @property
    def metrics(self) -> dict:
        return self._position.metrics

    @property
    def losses(self) -> list[float]:
        return self._position.loss_history

    @property
    def model(self) -> Any:
        return self._context.model

    @property
    def data(self) -> Any:
        return self._context.data

    @property
    def is_main(self) -> bool:
        return self._context.is_main

    @property
    def rank(self) -> int:
        return self._context.rank

    @property
    def world_size(self) -> int:
        return self._context.world_size

    @property
    def run_dir(self) -> Path:
        return self._context.run_dir

    def log(self, message: str) -> None:
        self._context.log(message)

    def report_error(self, error: dict) -> None:
        self._context.report_error(error)


class Events:
    """Runs a callback event through the kernel's dispatcher (``context.callbacks``) with the ``RunState``: the
    one way the trainer's parts call callbacks."""

    def __init__(self, context: BuildContext, state: RunState) -> None:
        self.dispatcher, self.state = context.callbacks, state

    def __call__(self, event: str, *args: Any) -> None:
        self.dispatcher.call(event, self.state, *args)
