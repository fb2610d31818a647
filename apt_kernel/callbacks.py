"""Training callbacks: the ``Callback`` base class, its events (listed here once), and the one dispatcher
that calls them.

A trainer never calls a callback method itself: it calls ``context.callbacks.call(event, state, *args)``
on the ``CallbackDispatcher`` the kernel puts in ``BuildContext.callbacks``. The dispatcher calls only
the callbacks that implement the event, times each call when profiling, and turns a callback's
exception into a ``PluginError`` naming the plugin, the callback and the event. A sandboxed callback
is an ordinary entry whose methods forward to its worker process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import KernelError, PluginError

if TYPE_CHECKING:
    from .protocols import TrainerState


class Callback:
    """Training events, Lightning style: subclass and override the ones you need.

    Every event receives the trainer's ``TrainerState`` (see ``apt_kernel.protocols``): read ``step``,
    ``epoch``, ``metrics``, ``losses``; set ``should_stop = True`` to end training after the current step.
    ``state_dict``/``load_state_dict`` carry the callback's state through checkpoints, keyed by its ``use`` name
    and ``state_key``, so a callback finds its own state whatever its place in the pipeline.
    """

    @property
    def state_key(self) -> str:
        """The name of this callback's state in a checkpoint, after its ``use`` name (``early-stopping:
        EarlyStopping(monitor='val_loss', mode='min')``). The default, the class's name, is enough unless a pipeline
        may hold two of these callbacks: then name the options that tell them apart, as
        ``return self.generate_state_key(monitor=self.monitor)``."""
        return type(self).__qualname__

    def generate_state_key(self, **identifying: Any) -> str:
        """``ClassName(option=value, ...)``: a ``state_key`` of the options that tell two such callbacks apart."""
        return f"{type(self).__qualname__}({', '.join(f'{k}={v!r}' for k, v in identifying.items())})"

    def on_fit_start(self, trainer: TrainerState) -> None:
        """Training is about to start (after a resume, too)."""

    def on_epoch_start(self, trainer: TrainerState, epoch: int) -> None:
        """An epoch begins."""

    def on_micro_batch_end(self, trainer: TrainerState, epoch: int, batch_index: int, batch: dict) -> None:
        """Micro-batch ``batch_index`` of ``epoch`` went forward and backward (before the optimizer step)."""

    def on_before_optimizer_step(self, trainer: TrainerState, step: int) -> None:
        """Gradients of step ``step`` are final (unscaled, clipped); set ``trainer.skip_next_step`` to drop it."""

    def on_train_batch_end(self, trainer: TrainerState, step: int, metrics: dict) -> None:
        """Optimizer step ``step`` finished; ``metrics`` holds loss (a 0-d tensor: reading it syncs) and lr."""

    def on_validation_end(self, trainer: TrainerState, metrics: dict) -> None:
        """Validation finished; ``metrics`` holds val_loss and step."""

    def on_epoch_end(self, trainer: TrainerState, epoch: int, metrics: dict) -> None:
        """An epoch ended (after its validation and checkpoint)."""

    def on_checkpoint_saved(self, trainer: TrainerState, path: str) -> None:
        """A checkpoint was written to ``path``."""

    def on_fit_end(self, trainer: TrainerState, result: dict) -> None:
        """Training finished; ``result`` is what ``fit`` returns (a callback may add keys to it)."""

    def on_exception(self, trainer: TrainerState, error: BaseException) -> None:
        """Training is failing with ``error``; it is re-raised afterwards."""

    def state_dict(self) -> dict:
        """Plain data to store in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


#: Every training event, in the order a run can reach them. The one list: the dispatcher, the
#: profiler and the sandbox all read it from here.
EVENTS: tuple[str, ...] = tuple(name for name in vars(Callback) if name.startswith("on_"))
STATE_METHODS = ("state_dict", "load_state_dict")


def implemented_events(callback: Any) -> frozenset[str]:
    """The events (and state methods) a callback object really implements, not the base class's no-ops."""
    if callable(getattr(type(callback), "implemented_events", None)):  # a stand-in (the sandbox's) knows
        return frozenset(callback.implemented_events())  # what its remote object implements
    names = [*EVENTS, *STATE_METHODS]
    return frozenset(n for n in names if callable(getattr(callback, n, None))
                     and getattr(type(callback), n, None) is not getattr(Callback, n))


def callback_hook(name: str, event: str) -> str:
    """Where a callback's failure happened, as ``PluginError.hook`` and the profiler name it."""
    return f"callback {name}.{event}"


#: The name of ``PluginError`` for a callback's failure in SDK 0.1.0-0.1.2; one class since.
CallbackError = PluginError


@dataclass(frozen=True)
class CallbackEntry:
    callback: Any
    plugin: str  # the plugin that registered it
    name: str  # the component name in the pipeline (``use = ...``)
    events: frozenset[str]


class CallbackDispatcher:
    """The pipeline's callbacks, in pipeline order; ``call(event, state, *args)`` runs an event.

    Iterating yields the callback objects themselves, so ``for cb in context.callbacks`` still works.
    """

    def __init__(self, profiler: Any = None) -> None:
        self.entries: list[CallbackEntry] = []
        self.profiler = profiler  # has record(plugin, what, seconds); None costs nothing
        self._by_event: dict[str, list[CallbackEntry]] = {}

    def add(self, callback: Any, plugin: str, name: str) -> None:
        self.entries.append(CallbackEntry(callback, plugin, name, implemented_events(callback)))
        self._by_event.clear()

    def __iter__(self) -> Iterator[Any]:
        return (entry.callback for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Any:
        return self.entries[index].callback

    def listening(self, event: str) -> list[CallbackEntry]:
        if event not in self._by_event:
            self._by_event[event] = [e for e in self.entries if event in e.events]
        return self._by_event[event]

    def call(self, event: str, state: Any, *args: Any) -> None:
        """Run ``event`` on every callback that implements it. During ``on_exception`` a failing
        callback is reported on ``state.log`` and the rest still run: the original error wins."""
        if event not in EVENTS:
            raise ValueError(f"unknown callback event {event!r}; events: {', '.join(EVENTS)}")
        for entry in self.listening(event):
            started = time.perf_counter() if self.profiler is not None else 0.0
            try:
                getattr(entry.callback, event)(state, *args)
            except KernelError as exc:
                if not getattr(exc, "plugin", None):
                    exc.plugin, exc.hook = entry.plugin, callback_hook(entry.name, event)
                self._raise_or_log(event, state, exc)
            except Exception as exc:
                error = PluginError(entry.plugin, callback_hook(entry.name, event), exc, event=event)
                self._raise_or_log(event, state, error, exc)
            finally:
                if self.profiler is not None:
                    self.profiler.record(entry.plugin, callback_hook(entry.name, event), time.perf_counter() - started)

    @staticmethod
    def _raise_or_log(event: str, state: Any, error: KernelError, cause: BaseException | None = None) -> None:
        if event == "on_exception":
            log = getattr(state, "log", print)
            log(f"warning: {error}")
            return
        if cause is not None:
            raise error from cause
        raise error

    def state_keys(self) -> list[str]:
        """Each callback's key in a checkpoint: its ``use`` name and its ``state_key`` (an object without one: the
        ``use`` name alone); a second callback of the same key gets ``#2`` after it, and so on."""
        keys: list[str] = []
        for entry in self.entries:
            own = getattr(entry.callback, "state_key", None)
            key = f"{entry.name}:{own}" if isinstance(own, str) and own else entry.name
            same = sum(k == key or k.startswith(f"{key}#") for k in keys)
            keys.append(f"{key}#{same + 1}" if same else key)
        return keys

    def state_dicts(self) -> dict[str, dict]:
        """The states of the callbacks that keep one (``state_dict``), by their ``state_keys``, for a checkpoint."""
        return {key: entry.callback.state_dict() for key, entry in zip(self.state_keys(), self.entries, strict=True)
                if "state_dict" in entry.events}

    def load_state_dicts(self, saved: dict | list, log: Callable[[str], None] = print) -> None:
        """Give each callback the state saved under its key. ``log`` warns, naming the key, of a callback that keeps
        state but finds none saved (it starts afresh) and of a saved state no callback here has (dropped).
        A list is the format before state keys (SDK 0.1.3 and earlier): matched by position and name."""
        if isinstance(saved, list):
            self._load_by_position(saved)
            return
        keys = self.state_keys()
        for key, entry in zip(keys, self.entries, strict=True):
            if "load_state_dict" not in entry.events:
                continue
            if key in saved:
                entry.callback.load_state_dict(saved[key])
            else:
                log(f"warning: callback state: the checkpoint holds none for {key!r}; it starts afresh")
        for key in sorted(saved.keys() - set(keys)):
            log(f"warning: callback state: the checkpoint's {key!r} belongs to no callback of this pipeline; "
                "it is dropped")

    def _load_by_position(self, saved: list[dict]) -> None:
        """An entry matches by position and name (or, from a checkpoint older still, by class name)."""
        for entry, item in zip(self.entries, saved, strict=False):
            if "name" in item:
                same = item["name"] == entry.name
            else:
                same = item.get("class") == type(entry.callback).__name__
            if same and "load_state_dict" in entry.events:
                entry.callback.load_state_dict(item.get("state") or {})
