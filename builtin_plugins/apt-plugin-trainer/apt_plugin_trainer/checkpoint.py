"""Checkpoints in the original layout, written atomically, loaded without unpickling code.

    <save_dir>/checkpoints/apt_model_epoch{E}_step{S}.pt
    <save_dir>/metadata.json     every checkpoint: epoch, step, metrics, is_best, sha256
    <save_dir>/temp/apt_temp_step{S}.pt   the latest mid-epoch state; removed after a clean finish

A save writes a temp file in the same folder, fsyncs it and renames it into place, then rewrites
metadata.json the same way, so a crash leaves either the old or the new state, never half of one.
A partial file is named after its writer's PID: one whose writer is dead is removed when a manager
opens the folder for writing, one whose writer lives is left alone (it may be a running save), and
neither is ever chosen. metadata.json is strict JSON (a non-finite metric is ``null``). Under DDP only
rank 0 writes; every rank can read. A manager that only loads creates nothing.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from apt_sdk import UserError

from .state_dicts import load_model_state, load_optimizer_state

CHECKPOINT_GLOB = "apt_model_epoch*_step*.pt"
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


class CheckpointManager:
    def __init__(self, save_dir: str | Path, keep_last: int = 0, rank: int = 0) -> None:
        self.save_dir = Path(save_dir)
        self.dir = self.save_dir / "checkpoints"
        self.temp_dir = self.save_dir / "temp"
        self.metadata_path = self.save_dir / "metadata.json"
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

    # -- metadata ----------------------------------------------------------------------------------
    def metadata(self) -> dict:
        try:
            data = json.loads(self.metadata_path.read_text())
        except FileNotFoundError:
            return {"checkpoints": []}
        except ValueError as exc:
            raise UserError(f"{self.metadata_path} is not valid JSON ({exc}); remove it to start over") from None
        self._check_metadata(data)
        return data

    def _check_metadata(self, data: Any) -> None:
        where = f"{self.metadata_path} is not a checkpoint record"
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
            raise UserError(f"{where}: expected {{\"checkpoints\": [...]}}, got {json.dumps(data)[:80]}")
        for i, entry in enumerate(data["checkpoints"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
                    or not isinstance(entry.get("global_step"), int):
                raise UserError(f"{where}: checkpoints[{i}] needs \"file\" and \"global_step\", "
                                f"got {json.dumps(entry)[:80]}")

    def _write_metadata(self, data: dict) -> None:
        text = json.dumps(data, indent=2, allow_nan=False)
        _atomic_write(self.metadata_path, lambda fh: fh.write(text.encode()))

    def checkpoints(self) -> list[dict]:
        """Recorded checkpoints whose file exists, oldest first."""
        return [c for c in self.metadata()["checkpoints"] if (self.dir / c["file"]).exists()]

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

    def _temp_checkpoints(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.temp_dir.glob("apt_temp_step*.pt"):
            step = path.stem.removeprefix("apt_temp_step")
            if step.isdigit():
                found.append((int(step), path))
        return found

    def _prune(self, data: dict) -> None:
        if self.keep_last <= 0:
            return
        entries = data["checkpoints"]
        keep = {c["file"] for c in entries[-self.keep_last:]} | {c["file"] for c in entries if c["is_best"]}
        for entry in [c for c in entries if c["file"] not in keep]:
            (self.dir / entry["file"]).unlink(missing_ok=True)
        data["checkpoints"] = [c for c in entries if c["file"] in keep]

    def resolve(self, spec: str | Path | None = None, latest: bool = False, best: bool = False) -> Path:
        """A checkpoint path from an explicit path, a glob, ``"latest"`` or ``"best"``."""
        recorded = self.checkpoints()
        if best or spec == "best":
            chosen = [c for c in recorded if c["is_best"]]
            if not chosen:
                raise UserError(f"no best checkpoint recorded in {self.metadata_path}")
            return self.dir / chosen[-1]["file"]
        if spec is None or latest or spec == "latest":
            # the newest state, regular or temp; at equal steps the regular one (it has val metrics)
            candidates = [(c["global_step"], 1, self.dir / c["file"]) for c in recorded]
            candidates += [(step, 0, path) for step, path in self._temp_checkpoints()]
            if not candidates:
                unrecorded = sorted(self.dir.glob(CHECKPOINT_GLOB), key=lambda p: p.stat().st_mtime)
                if unrecorded and not self.metadata_path.exists():
                    raise UserError(f"{self.metadata_path} is missing, so the {len(unrecorded)} checkpoint(s) in "
                                    f"{self.dir} are not recorded; resume from a file instead, e.g. "
                                    f"--resume {unrecorded[-1]} (resume_from=... in Python)")
                raise UserError(f"no checkpoint to resume from in {self.dir} or {self.temp_dir}")
            return max(candidates)[2]
        matches = sorted(glob.glob(str(spec)))
        if not matches:
            raise UserError(f"checkpoint not found: {spec}")
        return Path(matches[-1])

    def load_checkpoint(self, model, optimizer=None, scheduler=None, checkpoint_path: str | Path | None = None,
                        latest: bool = False, best: bool = False) -> tuple[int, int, list, dict]:
        path = self.resolve(checkpoint_path, latest=latest, best=best)
        state = self.read(path)
        load_model_state(model, state["model_state_dict"], path)
        if optimizer is not None and state.get("optimizer_state_dict") is not None:
            load_optimizer_state(model, optimizer, state["optimizer_state_dict"])
        if scheduler is not None and state.get("scheduler_state_dict") is not None:
            scheduler.load_state_dict(state["scheduler_state_dict"])
        return state["epoch"], state["global_step"], state["loss_history"], state["metrics"]

    def read(self, path: str | Path) -> dict:
        """The checkpoint's contents; refuses a file whose hash differs from metadata.json's."""
        path = Path(path)
        expected = next((c["sha256"] for c in self.metadata()["checkpoints"] if c["file"] == path.name), None)
        if expected is not None and path.parent.resolve() == self.dir.resolve() and _sha256(path) != expected:
            raise UserError(f"checkpoint {path} does not match the hash recorded in {self.metadata_path}: "
                            "the file is corrupt or was changed")
        if path.is_dir():
            raise UserError(f"cannot resume from {path}: it is a folder; give a checkpoint file (a run's "
                            "checkpoints/*.pt) or --resume latest")
        try:
            with warnings.catch_warnings():  # torch's note on the pickle protocol: the error below says more
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refuses pickled code: report, never execute
            # torch's message advises weights_only=False, which is not for us to take; its last part says what
            detail = str(exc).rpartition("WeightsUnpickler error:")[2].strip().splitlines()
            raise UserError(f"cannot load checkpoint {path}: torch's safe loader refused it"
                            f"{' (' + detail[0][:200] + ')' if detail else ''}: it is not a torch.save file, or it "
                            "holds more than tensors and plain data; nothing in it was run") from None
        except Exception as exc:  # noqa: BLE001 - torch raises what its readers raise on a file it cannot parse
            raise UserError(f"cannot load checkpoint {path}: not a PyTorch checkpoint file "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(state, dict) or "model_state_dict" not in state:  # e.g. a bare state_dict
            raise UserError(f"cannot load checkpoint {path}: not a checkpoint of this trainer (it has no "
                            "model_state_dict)")
        return state
