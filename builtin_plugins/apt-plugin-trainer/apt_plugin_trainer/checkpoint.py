"""Checkpoints written atomically into the run folder's layout (documented, and read, by ``apt_sdk.run_folder``:
``CheckpointManager`` is its ``RunReader`` that also writes).

    <save_dir>/checkpoints/apt_model_epoch{E}_step{S}.pt
    <save_dir>/metadata.json     every checkpoint: epoch, step, metrics, is_best, sha256; end_of_run
    <save_dir>/temp/apt_temp_step{S}.pt   the latest mid-epoch state; removed after a clean finish

A save writes a temp file in the same folder, fsyncs it and renames it into place, then rewrites
metadata.json the same way, so a crash leaves either the old or the new state, never half of one.
A partial file is named after its writer's PID: one whose writer is dead is removed when a manager
opens the folder for writing, one whose writer lives is left alone (it may be a running save), and
neither is ever chosen. metadata.json is strict JSON (a non-finite metric is ``null``). Under DDP only
rank 0 writes; every rank can read. A manager that only loads creates nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from apt_sdk.run_folder import RunReader

from .state_dicts import load_model_state, load_optimizer_state

TMP_SUFFIX = ".tmp"


class _HashingFile:
    """A write-only file that hashes what passes through, so a save never reads its file back."""

    def __init__(self, fh) -> None:
        self.fh, self.digest = fh, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def _atomic_write(path: Path, write) -> str:
    """Write through ``write(file)`` into a temp file beside ``path``, fsync, rename; return the sha256."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            hashing = _HashingFile(fh)
            write(hashing)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return hashing.digest.hexdigest()


def _writer_alive(leftover: Path) -> bool:
    """``.<name>.<pid>.tmp`` is being written by process <pid> if that process exists."""
    pid = leftover.name.removesuffix(TMP_SUFFIX).rsplit(".", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """Config objects become dicts so the checkpoint loads with weights_only=True."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


class CheckpointManager(RunReader):
    """Writes a run's checkpoints and ``metadata.json``; reads them as every reader of a run does (``RunReader``:
    ``metadata()``, ``checkpoints()``, ``resolve(spec)``, ``read(path)``)."""

    def __init__(self, save_dir: str | Path, keep_last: int = 0, rank: int = 0) -> None:
        super().__init__(save_dir)
        self.save_dir, self.dir = self.path, self.checkpoints_dir  # the names of its first version
        self.keep_last, self.rank = keep_last, rank
        self._cleaned = False

    def _prepare(self) -> None:
        """Before the first write: the folders, and partial files left by dead writers gone."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._cleaned:
            return
        for folder in (self.dir, self.temp_dir, self.save_dir):
            for leftover in folder.glob(f".*{TMP_SUFFIX}"):
                if not _writer_alive(leftover):
                    leftover.unlink(missing_ok=True)
        self._cleaned = True

    def _write_metadata(self, data: dict) -> None:
        text = json.dumps(data, indent=2, allow_nan=False)
        _atomic_write(self.metadata_path, lambda fh: fh.write(text.encode()))

    # -- save / load -------------------------------------------------------------------------------
    def save_checkpoint(self, model, optimizer, scheduler, epoch: int, global_step: int, loss_history: list,
                        metrics: dict | None = None, tokenizer=None, config=None, is_best: bool = False,
                        extra: dict | None = None) -> Path:
        extra = dict(extra or {})
        state = {  # a sharded model's trainer passes its gathered state dicts in extra
            "model_state_dict": extra.pop("model_state_dict", None) or model.state_dict(),
            "optimizer_state_dict": extra.pop("optimizer_state_dict", None) or (
                optimizer.state_dict() if optimizer is not None else None),
            "scheduler_state_dict": scheduler.state_dict() if scheduler is not None else None,
            "epoch": int(epoch),
            "global_step": int(global_step),
            "loss_history": [float(x) for x in loss_history],
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "config": _plain(config),
            **extra,
        }
        return self.save(state, is_best, tokenizer)

    def save(self, state: dict, is_best: bool = False, tokenizer=None) -> Path:
        """``state`` (a training state) as its step's checkpoint, recorded in metadata.json; rank 0 writes."""
        epoch, global_step = int(state["epoch"]), int(state["global_step"])
        path = self.dir / f"apt_model_epoch{epoch}_step{global_step}.pt"
        if self.rank != 0:
            return path
        self._prepare()
        digest = _atomic_write(path, lambda fh: torch.save(state, fh))
        if tokenizer is not None:
            tokenizer.save(self.save_dir / "tokenizer")
        data = self.metadata()
        data["checkpoints"] = [c for c in data["checkpoints"] if c["file"] != path.name]
        if is_best:
            for entry in data["checkpoints"]:
                entry["is_best"] = False
        data["checkpoints"].append({
            "file": path.name, "epoch": epoch, "global_step": global_step,
            "metrics": {k: _finite(float(v)) for k, v in state["metrics"].items()}, "is_best": bool(is_best),
            "sha256": digest, "time": time.time(),
        })
        self._prune(data)
        self._write_metadata(data)
        return path

    def save_temp(self, state: dict) -> Path:
        """The full training state mid-epoch, in temp/; only the newest is kept."""
        path = self.temp_dir / f"apt_temp_step{state['global_step']}.pt"
        if self.rank != 0:
            return path
        self._prepare()
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda fh: torch.save(state, fh))
        for old in self.temp_dir.glob("apt_temp_step*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def record_end(self, global_step: int, result: dict) -> None:
        """metadata.json's ``end_of_run``: the end-of-run work of ``global_step`` is done (none without checkpoints)."""
        if self.rank != 0 or not self.metadata_path.exists():
            return
        data = self.metadata()
        data["end_of_run"] = {"global_step": int(global_step), "result": result}
        self._write_metadata(data)

    def clear_temp(self) -> None:
        """After a clean finish: temp checkpoints are only for crashes."""
        if self.rank == 0 and self.temp_dir.exists():
            for leftover in self.temp_dir.iterdir():
                leftover.unlink(missing_ok=True)
            self.temp_dir.rmdir()

    def _prune(self, data: dict) -> None:
        if self.keep_last <= 0:
            return
        entries = data["checkpoints"]
        keep = {c["file"] for c in entries[-self.keep_last:]} | {c["file"] for c in entries if c["is_best"]}
        for entry in [c for c in entries if c["file"] not in keep]:
            (self.dir / entry["file"]).unlink(missing_ok=True)
        data["checkpoints"] = [c for c in entries if c["file"] in keep]

    def load_checkpoint(self, model, optimizer=None, scheduler=None, checkpoint_path: str | Path | None = None,
                        latest: bool = False, best: bool = False) -> tuple[int, int, list, dict]:
        """Load the checkpoint a path or glob names (else the latest, or with ``best`` the best) into ``model`` and,
        when given, ``optimizer`` and ``scheduler``; returns its (epoch, global_step, loss_history, metrics)."""
        spec = "best" if best else "latest" if latest or checkpoint_path is None else checkpoint_path
        path = self.resolve(spec)
        state = self.read(path)
        load_model_state(model, state["model_state_dict"], path)
        if optimizer is not None and state.get("optimizer_state_dict") is not None:
            load_optimizer_state(model, optimizer, state["optimizer_state_dict"])
        if scheduler is not None and state.get("scheduler_state_dict") is not None:
            scheduler.load_state_dict(state["scheduler_state_dict"])
        return state["epoch"], state["global_step"], state["loss_history"], state["metrics"]
