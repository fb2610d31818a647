"""Saving and loading ``MultimodalAPTModel``: a ``save_pretrained`` folder, a run folder, a checkpoint file.

A run folder is read as the trainer reads it for ``--resume latest``, by the SDK's one reader of the run
folder (``apt_sdk.RunReader``): its ``metadata.json`` says which checkpoints it holds, and the newest state, a
regular checkpoint or the temp one a killed run left, is the one loaded (file times say nothing: a copy or a
restore changes them). Checkpoints load as the trainer loads them: tensors and plain data only, the hash
recorded in ``metadata.json`` checked. Each encoder is rebuilt by the class its record names (a plugin's
encoder as CLIP's and Whisper's) and comes back frozen or trainable as it was saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apt_sdk import RunReader, UserError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class Loading:
    """``save_pretrained``, ``from_config`` and ``from_pretrained`` of ``MultimodalAPTModel`` (a mixin)."""

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` (decoder, encoders' configs, which encoders are frozen), ``model.safetensors`` (all
        weights, encoders included) and, when the model has one, ``tokenizer/``."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps({"multimodal": self.config.to_dict()}, indent=2))
        save_model(self, str(directory / WEIGHTS_FILE))
        if self.tokenizer is not None:
            self.tokenizer.save(directory / "tokenizer")

    @classmethod
    def from_config(cls, config: Any, where: str = "the model's config") -> Any:
        """A model of the saved shape with fresh weights: each encoder rebuilt by its class's ``from_config``
        (``apt_sdk.encoders.rebuild_encoder``: a plugin's encoder as CLIP's and Whisper's), frozen or not as saved.

        :param where: what holds ``config``, for the message of an encoder that cannot be rebuilt."""
        from apt_sdk.encoders import rebuild_encoder

        from .config import SLOTS, MultimodalConfig

        config = config if isinstance(config, MultimodalConfig) else MultimodalConfig.from_dict(config)
        frozen = config.frozen if config.frozen is not None else {}  # saved before each encoder's state was
        built = {slot: rebuild_encoder(record, frozen.get(slot, config.freeze_encoders), f"{where}, encoders."
                                       f"{SLOTS[slot]}") for slot, record in config.encoder_records().items()}
        return cls(config.apt, config.use_vision, config.use_audio, built.get("vision"), built.get("audio"),
                   freeze_encoders=config.freeze_encoders)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str = "cpu") -> Any:
        """Load a ``save_pretrained`` folder, a run folder (its exported ``model/``, else the newest state
        its ``metadata.json`` and ``temp/`` hold, as ``--resume latest`` picks it), or a checkpoint file."""
        path = Path(path)
        if path.is_dir() and not (path / CONFIG_FILE).exists():
            exported = RunReader(path).exported_model()
            path = exported if exported is not None and (exported / CONFIG_FILE).exists() else _latest_checkpoint(path)
        if path.is_file():
            model = _from_checkpoint(cls, path, map_location)
        elif not path.exists():
            raise UserError(f"{path}: no such folder or checkpoint file")
        else:
            model = _from_folder(cls, path, map_location)
        model.loaded_from = path
        return model


def _latest_checkpoint(run: Path) -> Path:
    reader = RunReader(run)
    regular = sorted(reader.checkpoints_dir.glob("*.pt")) if reader.checkpoints_dir.is_dir() else []
    temp = list(reader.temp_dir.glob("*.pt")) if reader.temp_dir.is_dir() else []
    if not regular and not temp:
        raise UserError(f"{run} holds no saved multimodal model (config.json), exported model/ or checkpoint "
                        f"(checkpoints/ or temp/)")
    if not temp and not reader.metadata_path.exists():
        raise UserError(f"{reader.metadata_path} is missing, so which of the {len(regular)} checkpoint(s) in "
                        f"{reader.checkpoints_dir} is the newest is not recorded; load one by its file: "
                        f"from_pretrained('{regular[-1]}')")
    return reader.resolve("latest")


def _from_checkpoint(cls: type, path: Path, map_location: str) -> Any:
    state = RunReader(path.parent.parent).read(path)  # checked against its run's record, when it has one
    config = state.get("config")
    if not isinstance(config, dict) or "apt" not in config:
        raise UserError(f"{path} is not a checkpoint of a multimodal APT model (its config has no 'apt' decoder)")
    model = cls.from_config(config, where=str(path))
    model.load_state_dict(state["model_state_dict"])
    model.to(map_location)
    tokenizer_dir = path.parent.parent / "tokenizer"
    if tokenizer_dir.is_dir():
        from apt_plugin_lm.tokenization import load_tokenizer

        model.tokenizer = load_tokenizer(tokenizer_dir)
    return model


def _from_folder(cls: type, path: Path, map_location: str) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        saved = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} holds no saved multimodal model (config.json)") from None
    except ValueError as exc:
        raise UserError(f"{path / CONFIG_FILE} is not JSON ({exc})") from None
    if not isinstance(saved, dict) or "multimodal" not in saved:
        raise UserError(f"{path / CONFIG_FILE} is not a multimodal APT model's config (no 'multimodal' key)")
    model = cls.from_config(saved["multimodal"], where=str(path / CONFIG_FILE))
    try:
        load_model(model, str(path / WEIGHTS_FILE), device=map_location)
    except FileNotFoundError:
        raise UserError(f"{path} has a config.json but no {WEIGHTS_FILE}") from None
    except (SafetensorError, RuntimeError) as exc:
        raise UserError(f"{path / WEIGHTS_FILE} cannot be loaded into the model its config.json describes: "
                        f"{str(exc).splitlines()[0][:300]}") from None
    if (path / "tokenizer").is_dir():
        from apt_plugin_lm.tokenization import load_tokenizer

        model.tokenizer = load_tokenizer(path / "tokenizer")
    return model
