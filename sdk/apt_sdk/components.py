"""What each component kind looks like to the kernel and the trainer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable


class Callback:
    """Training events, Lightning style: subclass and override the ones you need.

    Every event receives the trainer; set ``trainer.should_stop = True`` to end training after the
    current step. ``state_dict``/``load_state_dict`` carry the callback's state through checkpoints.
    """

    def on_fit_start(self, trainer: Any) -> None:
        """Training is about to start (after a resume, too)."""

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """An epoch begins."""

    def on_micro_batch_end(self, trainer: Any, epoch: int, batch_index: int, batch: dict) -> None:
        """Micro-batch ``batch_index`` of ``epoch`` went forward and backward (before the optimizer step)."""

    def on_before_optimizer_step(self, trainer: Any, step: int) -> None:
        """Gradients of step ``step`` are final (unscaled, clipped); set ``trainer.skip_next_step`` to drop it."""

    def on_train_batch_end(self, trainer: Any, step: int, metrics: dict) -> None:
        """Optimizer step ``step`` finished; ``metrics`` holds loss (a 0-d tensor: reading it syncs) and lr."""

    def on_validation_end(self, trainer: Any, metrics: dict) -> None:
        """Validation finished; ``metrics`` holds val_loss."""

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict) -> None:
        """An epoch ended (after its validation and checkpoint)."""

    def on_checkpoint_saved(self, trainer: Any, path: str) -> None:
        """A checkpoint was written to ``path``."""

    def on_fit_end(self, trainer: Any, result: dict) -> None:
        """Training finished; ``result`` is what ``fit`` returns."""

    def on_exception(self, trainer: Any, error: BaseException) -> None:
        """Training is failing with ``error``; it is re-raised afterwards."""

    def state_dict(self) -> dict:
        """Plain data to store in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


@runtime_checkable
class DataModule(Protocol):
    """Batches for training and validation. A batch is a dict of tensors (``input_ids``, ``labels``...)."""

    def train_batches(self, epoch: int) -> Iterable[dict]:
        """This epoch's training batches, in a deterministic order given the seed and epoch."""
        ...

    def val_batches(self) -> Iterable[dict]:
        """Validation batches, the same every time."""
        ...


@runtime_checkable
class Loss(Protocol):
    """``loss(outputs, batch) -> (loss_sum, count)``: the summed loss and the number of targets it covers,
    so a trainer can normalise by the real token count over a whole accumulation window."""

    def __call__(self, outputs: Any, batch: dict) -> tuple[Any, Any]: ...


@runtime_checkable
class Encoder(Protocol):
    """Turns one modality (images, audio) into a sequence of ``output_dim``-wide embeddings."""

    output_dim: int

    def encode(self, inputs: Any) -> Any: ...


@runtime_checkable
class Trainer(Protocol):
    """Fits ``context.model`` on ``context.data`` with ``context.loss`` and returns a summary dict."""

    def fit(self, context: Any) -> dict: ...
