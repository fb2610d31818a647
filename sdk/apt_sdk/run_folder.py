"""The run folder, read: the one reader of the layout a training run leaves, for every plugin that reads a run
(the trainer resuming one, the error log, the multimodal model's ``from_pretrained``, the benchmarks).

    <run>/                                  the pipeline's output_dir
      pipeline.json                         the pipeline as it ran (the kernel's record)
      .apt-run.lock                         held by the process that runs it (the kernel's)
      metadata.json                         the trainer's record: {"checkpoints": [...], "end_of_run": {...}}
      checkpoints/apt_model_epoch{E}_step{S}.pt   one per epoch or cadence, epochs counted from 0
      temp/apt_temp_step{S}.pt              the newest mid-epoch state; removed after a clean finish
      tokenizer/                            what the checkpoints need to decode
      model/                                the exported model (save_pretrained, or model.safetensors)
      ...                                   what callbacks write (errors.db, tensorboard/, samples.txt, ...)

``metadata.json`` is strict JSON: ``checkpoints`` lists every checkpoint oldest first, each with ``file``,
``epoch``, ``global_step``, ``metrics`` (a non-finite value is ``null``), ``is_best`` (exactly one is),
``sha256`` (of the file, computed while writing) and ``time``; ``end_of_run`` (once the run's end-of-run work
is done) holds its ``global_step`` and the ``result``'s plain numbers. A checkpoint is a ``torch.save`` dict of
tensors and plain data: ``model_state_dict``, ``optimizer_state_dict``, ``scheduler_state_dict``,
``scaler_state_dict``, ``epoch``, ``global_step``, ``loss_history``, ``metrics``, ``position`` (epoch,
micro-batches done, whether the epoch was complete), ``best_val``, ``best_step``, ``callbacks`` (each
callback's state by its key: ``use`` name and ``state_key``), ``rng`` (every rank's), ``world_size``, ``config``
(the model's, for ``from_config``), ``pipeline`` and ``pipeline_hash``. Files are written atomically (a
partial one is ``.<name>.<pid>.tmp`` and never chosen).

Who writes what: the kernel claims the folder, holds its lock and writes ``pipeline.json``
(``apt_kernel.rundir``); the trainer writes the checkpoints, ``metadata.json``, ``tokenizer/`` and ``model/``
(a trainer with its own ``checkpoint_dir`` writes its part there: read that folder for the checkpoints).
This module only reads: it creates nothing.
"""

from __future__ import annotations

import glob
import hashlib
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

from apt_kernel.errors import UserError

PIPELINE_RECORD = "pipeline.json"  # the kernel's name for it (apt_kernel.rundir.RECORD; a test checks they agree)
METADATA_FILE, CHECKPOINTS, TEMP, MODEL, TOKENIZER = "metadata.json", "checkpoints", "temp", "model", "tokenizer"
CHECKPOINT_GLOB, TEMP_GLOB = "apt_model_epoch*_step*.pt", "apt_temp_step*.pt"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class RunReader:
    """Reads the run folder ``path``: its checkpoints as ``--resume`` chooses them, a checkpoint's contents
    (checked against its recorded hash, loaded without running code), the trainer's record, the kernel's
    pipeline record and the exported model. Every problem is a ``UserError`` naming the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metadata_path = self.path / METADATA_FILE
        self.checkpoints_dir = self.path / CHECKPOINTS
        self.temp_dir = self.path / TEMP
        self.tokenizer_dir = self.path / TOKENIZER
        self.pipeline_path = self.path / PIPELINE_RECORD

    def metadata(self) -> dict:
        """``metadata.json`` (``{"checkpoints": []}`` when there is none), checked for its shape."""
        try:
            data = json.loads(self.metadata_path.read_text())
        except FileNotFoundError:
            return {"checkpoints": []}
        except ValueError as exc:
            raise UserError(f"{self.metadata_path} is not valid JSON ({exc}); remove it to start over") from None
        where = f"{self.metadata_path} is not a checkpoint record"
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
            raise UserError(f"{where}: expected {{\"checkpoints\": [...]}}, got {json.dumps(data)[:80]}")
        for i, entry in enumerate(data["checkpoints"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
                    or not isinstance(entry.get("global_step"), int):
                raise UserError(f"{where}: checkpoints[{i}] needs \"file\" and \"global_step\", "
                                f"got {json.dumps(entry)[:80]}")
        return data

    def checkpoints(self) -> list[dict]:
        """The recorded checkpoints whose file exists, oldest first (their ``metadata.json`` entries)."""
        return [c for c in self.metadata()["checkpoints"] if (self.checkpoints_dir / c["file"]).exists()]

    def temp_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of each temp checkpoint."""
        found = []
        for path in self.temp_dir.glob(TEMP_GLOB):
            step = path.stem.removeprefix("apt_temp_step")
            if step.isdigit():
                found.append((int(step), path))
        return found

    def resolve(self, spec: str | Path = "latest") -> Path:
        """The checkpoint ``spec`` names, as ``--resume`` reads it: ``"latest"`` (the newest state, regular or
        temp; at equal steps the regular one, which has the validation's metrics), ``"best"`` (the one
        ``metadata.json`` marks best), a path, or a glob (its last match)."""
        recorded = self.checkpoints()
        if spec == "best":
            chosen = [c for c in recorded if c["is_best"]]
            if not chosen:
                raise UserError(f"no best checkpoint recorded in {self.metadata_path}")
            return self.checkpoints_dir / chosen[-1]["file"]
        if spec == "latest":
            candidates = [(c["global_step"], 1, self.checkpoints_dir / c["file"]) for c in recorded]
            candidates += [(step, 0, path) for step, path in self.temp_checkpoints()]
            if not candidates:
                unrecorded = sorted(self.checkpoints_dir.glob(CHECKPOINT_GLOB), key=lambda p: p.stat().st_mtime)
                if unrecorded and not self.metadata_path.exists():
                    raise UserError(f"{self.metadata_path} is missing, so the {len(unrecorded)} checkpoint(s) in "
                                    f"{self.checkpoints_dir} are not recorded; resume from a file instead, e.g. "
                                    f"--resume {unrecorded[-1]} (resume_from=... in Python)")
                raise UserError(f"no checkpoint to resume from in {self.checkpoints_dir} or {self.temp_dir}")
            return max(candidates)[2]
        matches = sorted(glob.glob(str(spec)))
        if not matches:
            raise UserError(f"checkpoint not found: {spec}")
        return Path(matches[-1])

    def latest_checkpoint(self) -> Path | None:
        """``resolve("latest")``, or None when the run has no checkpoint to resume from."""
        try:
            return self.resolve("latest")
        except UserError:
            return None

    def read(self, path: str | Path) -> dict:
        """A checkpoint's contents (``torch.load`` with ``weights_only``: a file that would run code is refused,
        never run); a file of this run whose hash differs from ``metadata.json``'s is refused. Needs torch."""
        import torch

        path = Path(path)
        expected = next((c.get("sha256") for c in self.metadata()["checkpoints"] if c["file"] == path.name), None)
        if expected is not None and path.parent.resolve() == self.checkpoints_dir.resolve() \
                and _sha256(path) != expected:
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

    def end_of_run(self) -> dict | None:
        """``metadata.json``'s ``end_of_run`` (``global_step``, ``result``), or None: the run's end-of-run work
        (model/, the callbacks' ``on_fit_end``) has not completed."""
        return self.metadata().get("end_of_run")

    def exported_model(self) -> Path | None:
        """``model/``, the exported model, if the run wrote one (complete once ``end_of_run`` is recorded)."""
        folder = self.path / MODEL
        return folder if folder.is_dir() and any(folder.iterdir()) else None

    def pipeline(self) -> dict[str, Any] | None:
        """The pipeline as the run ran it (``pipeline.json``), or None when there is none."""
        try:
            return json.loads(self.pipeline_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise UserError(f"{self.pipeline_path} is not valid JSON ({exc})") from None
