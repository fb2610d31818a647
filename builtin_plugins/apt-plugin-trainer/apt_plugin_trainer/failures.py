"""When one rank of a torch.distributed job fails, every rank has to learn it at the same point of the
step: a rank that is left waiting in a collective the failed rank will never join hangs until the
process-group timeout (30 minutes by default). So errors are captured locally and the training loop
calls `check()` at fixed sync points, where one all-reduce of an error flag tells every rank."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    """Capture an exception on this rank, then agree on it with every rank at the next `check()`.

    ``DistributedErrorHandler(rank, world_size)`` is the original's signature: both are checked
    against the process group when one is running. Its ``broadcast_error`` and
    ``sync_checkpoint_on_error`` are collectives every rank calls (an all-reduced flag, never a
    broadcast from the failing rank, which the others would not know to wait for)."""

    def __init__(self, rank: int | None = None, world_size: int | None = None, *,
                 device: torch.device | str = "cpu", group=None) -> None:
        self.device, self.group = torch.device(device), group
        self.error: BaseException | None = None
        self.step: int | None = None
        running = dist.is_available() and dist.is_initialized()
        actual = (dist.get_rank(group), dist.get_world_size(group)) if running else (0, 1)
        for name, given, real in (("rank", rank, actual[0]), ("world_size", world_size, actual[1])):
            if given is not None and given != real:
                raise ValueError(f"DistributedErrorHandler({name}={given}) but this process's {name} is {real}")
        self.rank = actual[0]

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group) if dist.is_available() and dist.is_initialized() else 1

    def broadcast_error(self, error: BaseException | None = None) -> list[dict]:
        """Every rank calls this, with its error or None; every rank gets the same list of failures
        (rank, type, message, traceback), empty when no rank failed."""
        if error is not None:
            self.error = error
        try:
            self.check()
        except DistributedError as exc:
            return exc.failures
        except BaseException:  # noqa: BLE001 - one process: check() re-raises the error itself
            return [self._describe()]
        return []

    def sync_checkpoint_on_error(self, model: torch.nn.Module, optimizer, checkpoint_path: str | Path) -> bool:
        """Every rank calls this. If any rank has failed, all of them meet and rank 0 writes one checkpoint
        (model, optimizer, the failures) atomically to ``checkpoint_path``; returns whether it was written,
        the same answer on every rank."""
        any_failed = self.error is not None
        if self.world_size > 1:
            flag = torch.tensor([float(any_failed)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            any_failed = bool(flag.item())
        if not any_failed:
            return False
        failures = self.broadcast_error()
        if self.rank == 0:
            module = getattr(model, "module", model)  # DDP's replica is the same on every rank
            path = Path(checkpoint_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save({"model_state_dict": module.state_dict(),
                        "optimizer_state_dict": optimizer.state_dict() if optimizer is not None else None,
                        "failures": failures}, tmp)
            os.replace(tmp, path)
        if self.world_size > 1:
            dist.barrier(group=self.group)  # nobody goes on (or exits) before the file is in place
        return True

    def _describe(self) -> dict:
        original = getattr(self.error, "original", None) or self.error
        return {"rank": self.rank, "type": type(original).__name__, "message": _text(original),
                "traceback": _text(lambda: "".join(traceback.format_exception(self.error))),
                "plugin": getattr(self.error, "plugin", None), "hook": getattr(self.error, "hook", None),
                "step": self.step}

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
        # a plugin's error arrives wrapped (CallbackError): report what it raised, attributed to it
        local = self._describe() if self.error is not None else None
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
