"""What each component kind must look like: the typed half of the contract (the hooks are the other).

A factory registered through a ``register_*`` hook returns an object of the matching protocol. These
are ``typing.Protocol`` classes: a plugin never has to inherit from them, only to have the methods and
attributes listed. What is marked *optional* a trainer checks for with ``getattr`` and does without.

The builtin trainer (``apt-trainer``) calls exactly what is listed here and nothing else; so does the multimodal
model (``multimodal-apt``) of an ``Encoder``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
class Preprocessor(Protocol):
    """An encoder's ``preprocessor``: raw media to the inputs ``Encoder.encode`` takes.

    A multimodal data module calls it in its DataLoader workers, one record at a time, and stacks the rows of
    what it returns over a batch; so it must be picklable (no network, no open files) and return tensors on
    the CPU. It never sees a tensor.
    """

    def __call__(self, media: Sequence[Any], where: Sequence[str | None] | None = None) -> Any:
        """The inputs of ``len(media)`` items: a tensor ``[B, ...]``, or a tuple ``(inputs [B, ...], mask [B, ...])``
        when the lengths vary (the mask goes to ``encode`` beside the inputs).

        :param media: a list of raw items. A path (``str`` or ``os.PathLike``) to a file of the modality is always
            possible; an image encoder also takes PIL images, an audio encoder 16 kHz mono waveforms (1-D numpy
            arrays). What else it takes is the encoder's to say.
        :param where: for each item, where it came from (``"line 17 of train.jsonl"``) or None: a file it cannot
            read is a ``UserError`` naming the file and that place.
        """
        ...


@runtime_checkable
class Encoder(Protocol):
    """One modality's media turned into a sequence of feature vectors, for a model to attend to.

    ``multimodal-apt`` takes ``[encoders.image]`` and ``[encoders.audio]`` through these members and nothing
    else: its data module runs ``preprocessor`` in DataLoader workers, its model runs ``encode`` on the batches,
    freezes and unfreezes with ``freeze``, and saves ``config`` to rebuild the encoder with ``from_config``. So
    any encoder with them stands in for ``clip`` or ``whisper``.

    An encoder is a ``torch.nn.Module``: the model holds it as a submodule, so its weights train, move to the
    device and are saved with the model's (checkpoints, ``model.safetensors``).
    """

    modality: str
    """The media it takes: ``"image"`` or ``"audio"``. A multimodal model refuses an encoder of another modality
    in ``[encoders.image]`` or ``[encoders.audio]``."""
    output_dim: int
    """The width of every feature vector ``encode`` returns."""
    preprocessor: Preprocessor
    """Raw media (paths, PIL images, waveforms) to the inputs of ``encode``; picklable, for DataLoader workers."""
    frozen: bool
    """Whether it is frozen now (see ``freeze``); saved with the model, and given back to ``freeze`` when the model
    is rebuilt."""
    config: Any
    """What rebuilds it: an object with ``to_dict() -> dict`` of JSON values (numbers, strings, lists, dicts)."""

    def encode(self, inputs: Any, mask: Any = None) -> tuple[Any, Any]:
        """Features of a preprocessed batch.

        :param inputs: what ``preprocessor`` returned for the batch's items, stacked (a tensor ``[B, ...]``,
            on the model's device; records without this modality hold zeros, and their features are ignored).
        :param mask: the preprocessor's mask, stacked the same way, when it returns ``(inputs, mask)``; else None.
        :returns: ``(features, mask)``: ``features [B, N, output_dim]``, and ``mask [B, N]`` (bool, True where a
            feature is real) when the number of real features varies, else None. When frozen it runs under
            ``torch.no_grad()``. An input it cannot take (a wrong shape or size) is a ``ValueError`` or
            ``UserError`` saying what it expected.
        """
        ...

    def freeze(self, frozen: bool = True) -> Any:
        """Freeze or, with False, unfreeze it; return it.

        Frozen means: no parameter requires a gradient, it stays in eval mode (no dropout) even when the model
        around it is put in training mode, and ``encode`` runs under ``torch.no_grad()``; so an optimizer over
        the parameters that require gradients holds nothing of it. Unfrozen, it trains with the model and
        follows ``train()``/``eval()``; parameters it never trains (fixed positions) stay fixed.
        """
        ...

    @classmethod
    def from_config(cls, config: dict) -> Encoder:
        """An encoder of the same shape and preprocessing, with fresh weights, from ``config.to_dict()``; its
        weights are then loaded from the model's. It must not need the network or the folder the encoder was
        first loaded from. A model records the class by its import path, so it is a module-level class of an
        installed distribution."""
        ...


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
