"""The end of a run: the result ``fit`` returns, model/ (the best validation's weights, or the last step's),
the callbacks' ``on_fit_end``, then ``end_of_run`` in metadata.json. A run is finished only once that record is
written: a run killed during this work (in its export, or a callback's scoring of a test set) is finished by
its next ``--resume latest``, which does the work without training a step.

The best validation's weights are read back from its checkpoint when one was written at that step (the
default cadence); only a best that no checkpoint holds was kept on the CPU (``Validation.keep_best``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from apt_sdk import BuildContext

from .checkpointing import Checkpointing
from .export import ModelExport
from .optimization import Optimization
from .options import TrainerOptions
from .position import Position
from .run_state import Events
from .runtime import Runtime
from .validation import Validation

SHOWN = [("train loss", "train_loss", "{:.4f}"), ("val loss", "val_loss", "{:.4f}"),
         ("best val loss", "best_val_loss", "{:.4f}"), ("steps", "steps", "{}"), ("epochs", "epochs", "{}"),
         ("tokens", "tokens", "{:,}"), ("seconds", "seconds", "{:.1f}"), ("processes", "world_size", "{}"),
         ("peak GPU memory", "peak_memory_gib", "{:.3f} GiB"), ("last checkpoint", "checkpoint", "{}")]


def rebuildable(model: Any) -> bool:
    """Whether ``model`` says how it is rebuilt (the Model protocol's ``config`` and ``from_config``)."""
    return callable(getattr(type(model), "from_config", None)) and hasattr(model, "config")


class EndOfRun:
    def __init__(self, options: TrainerOptions, context: BuildContext, runtime: Runtime, position: Position,
                 optimization: Optimization, validation: Validation, checkpointing: Checkpointing,
                 events: Events, export: ModelExport) -> None:
        self.options, self.context, self.runtime, self.position = options, context, runtime, position
        self.export = export
        self.optimization, self.validation, self.checkpointing, self.events = \
            optimization, validation, checkpointing, events

    def ended(self) -> bool:
        """Whether the end-of-run work of this step completed; a run killed during it has not ended."""
        record = self.checkpointing.manager.end_of_run() or {}
        return record.get("global_step") == self.position.global_step

    def run(self, started: float, last_path: Path | None = None) -> dict:
        """The end-of-run work: model/, the callbacks' on_fit_end, then its record in metadata.json."""
        self.optimization.flush()
        self.checkpointing.manager.clear_temp()
        result = self.result(started, last_path)
        if self.options.export is not False:
            self._export(result)
        self.events("on_fit_end", result)
        self._record(result)
        self.runtime.close()
        return result

    def nothing_to_do(self, started: float) -> dict:
        """A finished run resumed with the limits it finished under: no step past them."""
        options, step = self.options, self.position.global_step
        limit = f"max_steps = {options.max_steps}" if options.reached_max_steps(step) else f"epochs = {options.epochs}"
        message = (f"nothing to train: the run already finished at step {step} ({limit}); "
                   f"raise {limit.split(' ')[0]} to train further")
        self.context.log(message)
        result = self.result(started, self.checkpointing.resumed_from)
        result["summary"].insert(0, ("nothing to do", message.split(": ", 1)[1]))
        self.runtime.close()
        return result

    def result(self, started: float, last_path: Path | None = None) -> dict:
        position, runtime = self.position, self.runtime
        last_path = last_path or self.checkpointing.last_path
        result = {
            "train_loss": position.recent_loss(), "val_loss": position.metrics.get("val_loss"),
            "best_val_loss": self.validation.best_val,
            "steps": position.global_step, "epochs": position.epoch + 1, "tokens": int(self.optimization.tokens),
            "seconds": round(time.perf_counter() - started, 1), "checkpoint": str(last_path) if last_path else None,
            "loss_history": list(position.loss_history), "world_size": runtime.dist.world_size,
            # this process's peak of allocated CUDA memory, as torch.cuda.max_memory_allocated counts it
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(runtime.device) / 2**30, 3)
            if runtime.device.type == "cuda" else None,
        }
        result["summary"] = [(label, form.format(result[key])) for label, key, form in SHOWN if result[key] is not None]
        result["summary"] += [(str(label), str(text)) for label, text in getattr(self.context.data, "summary", None)
                              or []]
        return result

    def _export(self, result: dict) -> None:
        """model/: the best validation's weights (export = "best", the default) or the last step's."""
        validation, weights, step = self.validation, None, self.position.global_step
        if self.options.exports_best and validation.best_step is not None and validation.best_step != step:
            # in memory, or in its checkpoint (under FSDP the other ranks hold an empty dict)
            weights = validation.best_weights if validation.best_weights is not None else self._best_from_checkpoint()
            step = validation.best_step if weights is not None else step
        which = (f"the best validation: step {step}, val loss {validation.best_val:.4f}"
                 if step == validation.best_step else f"the last step, {step}")
        exported = self.export.write(self.context.run_dir / "model", weights)
        if exported is not None:
            result["export_dir"] = str(exported)
            result["exported_step"] = step
            result["summary"].append(("model", f"{exported} ({which})"))

    def _record(self, result: dict) -> None:
        """metadata.json's ``end_of_run``: the step, and the result's numbers (the callbacks' too: a test accuracy)."""
        if not self.context.is_main:
            return
        numbers = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in result.items()
                   if isinstance(v, int | float | str) or v is None}
        self.checkpointing.manager.record_end(self.position.global_step, numbers)

    def _best_from_checkpoint(self) -> dict | None:
        manager, best_step = self.checkpointing.manager, self.validation.best_step
        best = [c for c in manager.checkpoints() if c["is_best"] and c["global_step"] == best_step]
        if not best:
            self.context.log(f"note: the best validation (step {best_step}) is in no checkpoint (it came before "
                             "this run resumed); model/ holds the last step's weights")
            return None
        return manager.read(manager.dir / best[-1]["file"])["model_state_dict"]
