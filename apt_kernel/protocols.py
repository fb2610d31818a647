"""What each component kind must look like: the typed half of the contract (the hooks are the other).

A factory registered through a ``register_*`` hook returns an object of the matching protocol. These are
``typing.Protocol`` classes: a plugin never has to inherit from them, only to have the members listed. A kind's
optional members are a protocol of their own, ``<Kind>Optional``: a consumer looks each up (``getattr``,
``hasattr``) and does without it; the kernel checks a built component for the required ones only.

They list what the builtin consumers use, and nothing else: the trainer, the kernel's runner and profiler, and the
multimodal model and data (of an ``Encoder`` and its ``Preprocessor``). ``tests/test_contract_coverage.py``
records what these read of each component in runs and compares it with what is declared here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Batch = dict[str, Any]
"""A batch: a dict of tensors. The model is called with every key but ``labels``; the loss sees all."""


@runtime_checkable
class DataModule(Protocol):
    """Batches for training and validation; its optional members are ``DataModuleOptional``'s.

    A data module that loads with worker processes (a ``DataLoader`` with ``num_workers``) starts them
    with ``apt_sdk.start_loader(loader)`` (its workers leave the process group, through
    ``apt_sdk.loader_worker_init``), so a SIGTERM or Ctrl-C to the process group lets the trainer finish
    the step and save rather than lose it to a killed worker.
    """

    def steps_per_epoch(self, epoch: int) -> int:
        """How many batches ``train_batches(epoch)`` yields on this process (the trainer's schedule spans them)."""

    def train_batches(self, epoch: int, start: int = 0) -> Iterable[Batch]:
        """This epoch's batches from position ``start`` on, in an order fixed by the pipeline seed and ``epoch``
        (exact resume restarts mid-epoch with ``start``)."""

    def val_batches(self) -> Iterable[Batch]:
        """The validation batches, the same every time."""


class DataModuleOptional(Protocol):
    """What a trainer uses of a data module where it has it; a data module may have any of these, or none."""

    tokenizer: Tokenizer
    """The data's tokenizer: checkpoints and the exported model save it beside the weights, and a model factory may
    read ``vocab_size`` and the special ids from it (``context.data.tokenizer``)."""
    block_size: int
    """Tokens per sequence; used for MFU when the batches do not say."""
    summary: list[tuple[str, str]]
    """``(label, text)`` pairs the run's summary shows (records skipped, say)."""

    def configure_distributed(self, rank: int, world_size: int) -> None:
        """Called once before training under DDP/FSDP; shard so each process sees its own part."""


@runtime_checkable
class Tokenizer(Protocol):
    """Text to ids and back: a data module's ``tokenizer``; its optional members are ``TokenizerOptional``'s."""

    vocab_size: int
    """The number of ids; a model factory sizes its embedding by it."""
    pad_id: int
    """The id of padding (a loss ignores its targets)."""
    bos_id: int
    """The id that starts a sequence (a prompt to generate from begins with it)."""
    eos_id: int
    """The id that ends a sequence (generation stops at it)."""

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, without ``bos_id`` or ``eos_id``."""

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``."""

    def save(self, directory: str | Path) -> None:
        """Write it into ``directory``: the trainer saves it beside checkpoints and in ``model/tokenizer/``."""


class TokenizerOptional(Protocol):
    """What a trainer uses of a tokenizer where it has it."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Write it into the exported ``model/`` the Hugging Face way (``AutoTokenizer.from_pretrained`` reads it)."""


@runtime_checkable
class Model(Protocol):
    """A ``torch.nn.Module`` called as ``model(**batch_without_labels)``; returns what the loss takes. Its optional
    members are ``ModelOptional``'s. The members below are ``torch.nn.Module``'s, listed for what a trainer does
    with them: any module has them."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The forward pass of a batch: ``model(**batch_without_labels)``; what it returns goes to the loss."""

    def parameters(self) -> Iterator[Any]:
        """What the optimizer updates (those that require a gradient)."""

    def state_dict(self) -> dict:
        """The weights, for checkpoints and the export."""

    def load_state_dict(self, state: dict) -> Any:
        """Weights back from ``state_dict``: on resume, and the best validation's into the exported model."""

    def to(self, device: Any) -> Any:
        """Move it to the training device; returns it."""

    def train(self, mode: bool = True) -> Any:
        """Training mode (dropout on), for the training steps."""

    def eval(self) -> Any:
        """Evaluation mode, for validation."""

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        """``(name, parameter)`` pairs: the gradient monitor reports each layer's gradient norm by its name."""

    def modules(self) -> Iterator[Any]:
        """Every submodule: under FSDP each block of its layer lists (``torch.nn.ModuleList``) is sharded."""


class ModelOptional(Protocol):
    """What a trainer, and the kernel's profiler, use of a model where it has it."""

    config: Any
    """With ``from_config``, how the model is rebuilt: an object with ``to_dict() -> dict``, which checkpoints store."""

    @classmethod
    def from_config(cls, config: Any) -> Model:
        """A model of the same shape with fresh weights, from ``config`` or its ``to_dict()``. A trainer rebuilds
        the model through ``type(model).from_config(model.config)`` and nothing else (the builtin trainer does for
        the export of an FSDP run, which it refuses before training for a model without ``config`` and this)."""

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward and backward); a trainer reports MFU only where the model says this."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the exported model in its own format (else the trainer writes its weights as safetensors)."""

    def register_forward_pre_hook(self, hook: Any) -> Any:
        """``torch.nn.Module``'s: with ``--profile`` the kernel times the forward pass from this hook on."""

    def register_forward_hook(self, hook: Any) -> Any:
        """``torch.nn.Module``'s: where ``--profile`` stops timing the forward pass."""


@runtime_checkable
class Loss(Protocol):
    """``loss(outputs, batch) -> (loss_sum, count)``: the summed loss (a tensor) and the number of targets it
    covers, a tensor or an ``int``, so a trainer can normalise by the real token count over a whole
    accumulation window."""

    def __call__(self, outputs: Any, batch: Batch) -> tuple[Any, Any]:
        """``(loss_sum, count)`` of a batch, from the model's ``outputs`` and the batch (``labels`` included)."""


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
    """Whether it is frozen now (``freeze``); saved with the model, and frozen again as it was when rebuilt."""
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

    def freeze(self, frozen: bool = True) -> Any:
        """Freeze or, with False, unfreeze it; return it.

        Frozen means: no parameter requires a gradient, it stays in eval mode (no dropout) even when the model
        around it is put in training mode, and ``encode`` runs under ``torch.no_grad()``; so an optimizer over
        the parameters that require gradients holds nothing of it. Unfrozen, it trains with the model and
        follows ``train()``/``eval()``; parameters it never trains (fixed positions) stay fixed.
        """

    @classmethod
    def from_config(cls, config: dict) -> Encoder:
        """An encoder of the same shape and preprocessing, with fresh weights, from ``config.to_dict()``; its
        weights are then loaded from the model's. It must not need the network or the folder the encoder was
        first loaded from. A model records the class by its import path, so it is a module-level class of an
        installed distribution."""


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
    """This process's rank (0 without torchrun)."""
    world_size: int
    """How many processes train (1 without torchrun)."""
    run_dir: Path
    """The run folder (the pipeline's ``output_dir``)."""
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

    def report_error(self, error: dict) -> None:
        """Report a non-fatal problem (``type``, ``message``, ``severity``...) to ``error_reported``."""


@runtime_checkable
class Trainer(Protocol):
    """``fit(context) -> result``: trains ``context.model`` on ``context.data`` with ``context.loss``; its optional
    member is ``TrainerOptional``'s.

    The kernel hands over in ``context``: ``resume`` (a checkpoint path, a glob or ``"latest"``, or None),
    ``resume_command`` (the words that resume this run, for messages), and ``callbacks`` (a ``CallbackDispatcher``:
    run events with ``context.callbacks.call(event, state, *args)``, where ``state`` is a ``TrainerState``).

    ``result`` is plain data. The kernel reads only ``summary`` (optional): a list of ``(label, value)`` pairs it
    prints when the run finishes.
    """

    def fit(self, context: Any) -> dict:
        """Train, and return the result."""


class TrainerOptional(Protocol):
    """What the kernel uses of a trainer where it has it."""

    resume: str | None
    """The trainer's hand-back of a resume its own options ask for (the builtin trainer's ``resume_from``): a
    checkpoint path, a glob, ``"latest"`` or ``"best"``, or None. The kernel reads it once the trainer is built; when
    the run was given no ``--resume``, the run folder is claimed as a continued run and ``resume`` comes back to
    ``fit`` as ``context.resume``. A trainer never sets ``context.resume`` itself."""
