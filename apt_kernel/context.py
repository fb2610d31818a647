"""What a component factory receives besides its options: the run and what was built before it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .callbacks import CallbackDispatcher


def _print(message: str) -> None:
    print(message, flush=True)


@dataclass
class BuildContext:
    """The run's shared state. Components are filled in build order: data, encoders, model, loss,
    callbacks, trainer; a factory may read what was built before it (the model reads ``data``)."""

    pipeline_name: str
    seed: int
    run_dir: Path
    config: dict  # the validated pipeline as plain data, options with defaults filled in
    data: Any = None
    encoders: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    loss: Any = None
    callbacks: CallbackDispatcher = field(default_factory=CallbackDispatcher)
    trainer: Any = None
    log: Callable[[str], None] = _print
    progress: bool = True
    rank: int = 0  # this process's rank under torchrun (RANK), 0 otherwise
    world_size: int = 1
    report_error: Callable[[dict], None] = field(default=lambda error: None)
    resume: str | None = None  # a checkpoint to continue from (a path, a glob, "latest"): --resume, else Trainer.resume
    resume_command: str = "run_pipeline(..., resume='latest')"  # how the user resumes this run, for messages

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and logs (rank 0)."""
        return self.rank == 0
