"""model/: the trained model for inference (``save_pretrained`` where the model has it, else safetensors) and the
data's tokenizer beside it, in tokenizer/ and, where it has ``save_pretrained``, in the folder itself, as a Hub
repository has it. Written at the end of the run, and with ``export_on_improvement`` at every new best validation.

A reader of model/ (``apt-kernel serve --watch``, a user copying it) never sees half an export: it is written in a
staging folder beside it, which then takes model/'s place by two renames. Files of the old model/ that the new
export does not write (a model card the user added, say) are carried into it first, as an export into the same
folder always kept them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from apt_sdk import BuildContext

from .runtime import Runtime


class ModelExport:
    def __init__(self, context: BuildContext, runtime: Runtime) -> None:
        self.context, self.runtime = context, runtime

    def write(self, directory: Path, weights: dict | None = None) -> Path | None:
        """model/ with ``weights`` when given, else the model as it is now; the path, on the rank that wrote it.
        Every rank calls it: under FSDP each helps gather, and rank 0 writes a model rebuilt from its config."""
        model = self.runtime.model
        if self.runtime.fsdp:
            weights = self.runtime.model_state() if weights is None else weights  # {} off rank 0: no second gather
            if not self.context.is_main:
                return None
            model = self.runtime.model_class.from_config(model.config)  # its own class, not FSDP's subclass of it
        elif not self.context.is_main:
            return None
        if weights is not None:
            model.load_state_dict(weights)  # like load_best_model_at_end: the model in memory is the one exported
        staging, old = directory.with_name(f".{directory.name}.new"), directory.with_name(f".{directory.name}.old")
        shutil.rmtree(staging, ignore_errors=True)  # a killed export's
        self._save(model, staging)
        if directory.is_dir():
            _carry_over(directory, staging)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old, ignore_errors=True)
        return directory

    def _save(self, model: Any, directory: Path) -> None:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(directory)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            from safetensors.torch import save_model

            save_model(model, str(directory / "model.safetensors"))
        tokenizer: Any = getattr(self.context.data, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "save"):
            tokenizer.save(directory / "tokenizer")
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):  # the Hub's place for it, where
            tokenizer.save_pretrained(directory)  # AutoTokenizer.from_pretrained(model/) reads it


def _carry_over(old: Path, new: Path) -> None:
    for path in old.rglob("*"):
        target = new / path.relative_to(old)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
