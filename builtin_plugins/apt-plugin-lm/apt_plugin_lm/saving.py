"""How an ``APTLargeModel`` is saved and rebuilt: its folder (``config.json`` and ``model.safetensors``), and the
Model protocol's ``from_config``, through which a trainer rebuilds the model whole (the FSDP export).

A decoder-only model's folder is also a Hugging Face model repository (``hub.py``: ``config.json`` with
``auto_map`` and the modeling code beside the weights); an encoder-decoder one, which ``transformers``' causal LM
class does not take, keeps the plain ``config.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import APTConfig

WEIGHTS_FILE = "model.safetensors"


class Saving:
    """``save_pretrained``, ``from_pretrained`` and ``from_config`` of ``APTLargeModel`` (a mixin)."""

    config: APTConfig

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_model

        from .hub import write_hub_files

        if self.config.num_encoder_layers:
            self.config.save(directory)  # creates the folder
        else:
            dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
            write_hub_files(directory, self.config, dtype)
        save_model(self, str(Path(directory) / WEIGHTS_FILE))

    @classmethod
    def from_config(cls, config: APTConfig | dict) -> Any:
        """A model of ``config``'s shape (an ``APTConfig`` or its ``to_dict()``) with fresh weights."""
        return cls(config if isinstance(config, APTConfig) else APTConfig.from_dict(config))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> Any:
        from safetensors.torch import load_model

        model = cls.from_config(APTConfig.load(directory))
        load_model(model, str(Path(directory) / WEIGHTS_FILE), device=map_location)
        return model
