"""What each component kind must look like: the typed half of the contract (the hooks are the other).

A factory registered through a ``register_*`` hook returns an object of the matching protocol. These
are ``typing.Protocol`` classes: a plugin never has to inherit from them, only to have the methods and
attributes listed. What is marked *optional* a trainer checks for with ``getattr`` and does without.

The builtin trainer (``apt-trainer``) calls exactly what is listed here and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Batch = dict[str, Any]
"""A batch: a dict of tensors. The model is called with every key but ``labels``; the loss sees all."""


@runtime_checkable
class DataModule(Protocol):
    """Batches for training and validation.

    Required:

    - ``steps_per_epoch(epoch)``: how many batches ``train_batches(epoch)`` yields on this process.
    - ``train_batches(epoch, start=0)``: this epoch's batches from position ``start`` on, in an order
      fixed by the pipeline seed and ``epoch`` (exact resume restarts mid-epoch with ``start``).
    - ``val_batches()``: the validation batches, the same every time.

    Optional:

    - ``configure_distributed(rank, world_size)``: called once before training under DDP/FSDP; shard
      so each process sees its own part.
    - ``tokenizer``: a ``Tokenizer``; checkpoints and the exported model save it beside the weights.
    - ``block_size``: tokens per sequence; used for MFU when batches do not say.
    - ``summary``: ``(label, text)`` pairs the run's summary shows (records skipped, say).

    A data module that loads with worker processes (a ``DataLoader`` with ``num_workers``) starts them
    with ``apt_sdk.start_loader(loader)`` (its workers leave the process group, through
    ``apt_sdk.loader_worker_init``), so a SIGTERM or Ctrl-C to the process group lets the trainer finish
    the step and save rather than lose it to a killed worker.
    """

    def steps_per_epoch(self, epoch: int) -> int: ...

    def train_batches(self, epoch: int, start: int = 0) -> Iterable[Batch]: ...

    def val_batches(self) -> Iterable[Batch]: ...


@runtime_checkable
class Tokenizer(Protocol):
    """Optional: a data module's ``tokenizer``. A model factory may read ``vocab_size`` and the special
    ids from it (``context.data.tokenizer``); ``save(directory)`` writes it next to checkpoints."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: str | Path) -> None: ...


@runtime_checkable
class Model(Protocol):
    """A ``torch.nn.Module`` called as ``model(**batch_without_labels)``; returns what the loss takes.

    Optional:

    - ``flops_per_token(seq_len) -> float``: training FLOPs per token (forward and backward); a trainer
      reports MFU only where the model says this.
    - ``save_pretrained(directory)``: the exported model's format (else the weights as safetensors).
    - ``config`` with ``to_dict()``, and the classmethod ``from_config(config)``: how the model is rebuilt, a
      model of the same shape with fresh weights from ``config`` or its ``to_dict()``. Checkpoints store
      ``config.to_dict()``; a trainer rebuilds the model through ``type(model).from_config(model.config)`` and
      nothing else (the builtin trainer does for the export of an FSDP run, which it refuses before training
      for a model without them).
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self) -> Iterable[Any]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


@runtime_checkable
class Loss(Protocol):
    """``loss(outputs, batch) -> (loss_sum, count)``: the summed loss (a tensor) and the number of targets it
    covers, a tensor or an ``int``, so a trainer can normalise by the real token count over a whole
    accumulation window."""

    def __call__(self, outputs: Any, batch: Batch) -> tuple[Any, Any]: ...


@runtime_checkable
class Encoder(Protocol):
    """Turns one modality (images, audio) into ``output_dim``-wide embeddings.

    ``encode(inputs)`` takes a list of raw inputs (PIL images, waveforms, file paths) or a ready
    tensor, and returns a tensor ``[batch, output_dim]`` (pooled) or ``[batch, tokens, output_dim]``.
    """

    output_dim: int

    def encode(self, inputs: Any) -> Any: ...


@runtime_checkable
class TrainerState(Protocol):
    """What a callback sees of a running trainer: the first argument of every ``Callback`` event.

    A callback reads only what is listed here; that is also all a sandboxed callback gets (where
    ``model``, ``optimizer`` and ``data`` are ``None``: they live in the training process).
    """

    step: int
    """Optimizer steps completed."""
    epoch: int
    """The current epoch (0-based)."""
    metrics: dict[str, float]
    """The latest values: ``val_loss``, ``best_val_loss``, ``train_loss``, ``tokens_per_s``, ..."""
    losses: list[float]
    """Training loss per optimizer step, oldest first (read back at each logging interval; a
    sandboxed callback gets the last 20)."""
    is_main: bool
    """True on the process that writes files and logs (rank 0)."""
    rank: int
    world_size: int
    run_dir: Path
    model: Any
    """The model being trained (in-process only)."""
    optimizer: Any
    """The optimizer (in-process only)."""
    data: Any
    """The data module (in-process only)."""
    should_stop: bool
    """Set to True to end training after the current step (OR-ed over every rank)."""
    skip_next_step: bool
    """Set to True in ``on_before_optimizer_step`` to drop this step's update."""

    def log(self, message: str) -> None:
        """Print a line the way the run prints (rank 0 only)."""
        ...

    def report_error(self, error: dict) -> None:
        """Report a non-fatal problem (``type``, ``message``, ``severity``...) to ``error_reported``."""
        ...


@runtime_checkable
class Trainer(Protocol):
    """``fit(context) -> result``: trains ``context.model`` on ``context.data`` with ``context.loss``.

    The kernel hands over in ``context``: ``resume`` (a checkpoint path, a glob or ``"latest"``, or
    None), ``resume_command`` (the words that resume this run, for messages), and ``callbacks`` (a
    ``CallbackDispatcher``: run events with ``context.callbacks.call(event, state, *args)``, where
    ``state`` is a ``TrainerState``).

    ``result`` is plain data. The kernel reads only ``summary`` (optional): a list of
    ``(label, value)`` pairs it prints when the run finishes.

    Optional: ``resume``, the trainer's hand-back of a resume its own options ask for (the builtin trainer's
    ``resume_from``): a checkpoint path, a glob, ``"latest"`` or ``"best"``, or None. The kernel reads it once
    the trainer is built; when the run was given no ``--resume``, the run folder is claimed as a continued run
    and ``resume`` comes back to ``fit`` as ``context.resume``. A trainer never sets ``context.resume`` itself.
    """

    def fit(self, context: Any) -> dict: ...


Factory = Callable[[dict, Any], Any]
"""``factory(options, context)``: builds a component from its validated options and the BuildContext."""
