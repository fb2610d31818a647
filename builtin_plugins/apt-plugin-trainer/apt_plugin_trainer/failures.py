"""When one rank of a torch.distributed job fails, every rank has to learn it at the same point of the
step: a rank that is left waiting in a collective the failed rank will never join hangs until the
process-group timeout (30 minutes by default). So errors are captured locally and the training loop
calls `check()` at fixed sync points, where one all-reduce of an error flag tells every rank."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """Raised on every rank when any rank failed; ``failures`` says which ranks and with what."""

    def __init__(self, failures: list[dict], step: int | None = None) -> None:
        self.failures, self.step = failures, step
        where = f" at step {step}" if step is not None else ""
        parts = [f"rank {f['rank']} failed{where}: {f['type']}: {f['message']}" for f in failures]
        super().__init__("; ".join(parts))
        self.plugin = failures[0].get("plugin") if failures else None


class DistributedErrorHandler:
    """Capture an exception on this rank, then agree on it with every rank at the next `check()`."""

    def __init__(self, device: torch.device | str = "cpu", group=None) -> None:
        self.device, self.group = torch.device(device), group
        self.error: BaseException | None = None
        self.step: int | None = None

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group) if dist.is_available() and dist.is_initialized() else 1

    @contextmanager
    def capture(self, step: int | None = None) -> Iterator[None]:
        """Run a block whose exception must not leave this rank alone: keep it for the next check."""
        try:
            yield
        except Exception as exc:
            self.error, self.step = exc, step

    @property
    def failed(self) -> bool:
        """This rank failed: skip local work until the next `check()` tells everyone."""
        return self.error is not None

    def check(self, *flags: bool) -> list[bool]:
        """One all-reduce (max) of [error, *flags]: raise `DistributedError` on every rank if any rank
        failed, else return each flag OR-ed over the ranks."""
        if self.world_size == 1:
            if self.error is not None:
                raise self.error
            return list(flags)
        value = torch.tensor([float(self.error is not None), *map(float, flags)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        if value[0].item():
            self._raise_everywhere()
        return [bool(v) for v in value[1:].tolist()]

    def _raise_everywhere(self) -> None:
        local = None
        if self.error is not None:
            # a plugin's error arrives wrapped (CallbackError): report what it raised, attributed to it
            original = getattr(self.error, "original", None) or self.error
            local = {"rank": dist.get_rank(), "type": type(original).__name__, "message": _text(original),
                     "traceback": _text(lambda: "".join(traceback.format_exception(self.error))),
                     "plugin": getattr(self.error, "plugin", None), "hook": getattr(self.error, "hook", None),
                     "step": self.step}
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, local, group=self.group)
        failures = [f for f in gathered if f is not None]
        steps = {f["step"] for f in failures}
        error = DistributedError(failures, steps.pop() if len(steps) == 1 else None)
        raise error from self.error


def _text(source) -> str:
    """str() of an exception (or a call's result) that cannot itself raise: a broken __str__ must not
    turn one rank's error into a hang of the others."""
    try:
        return source() if callable(source) and not isinstance(source, BaseException) else str(source)
    except Exception as exc:  # noqa: BLE001 - any failure here is reported, not raised
        return f"<unprintable {type(source).__name__}: {type(exc).__name__}>"
