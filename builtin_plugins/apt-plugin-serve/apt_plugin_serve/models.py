"""What a run folder or a model folder holds, loaded for serving.

``load(path)`` finds the model (``PATH/config.json``, else the run's exported ``PATH/model/``), tells a text
APT model (``apt-lm``: an ``APTConfig``) from a multimodal one (``multimodal-apt``: a ``"multimodal"`` key),
and returns a ``Served``: the model in eval mode, its tokenizer, its decoder's parts for ``KVBatch``, what
inputs it takes, and a fingerprint of its files (``system_fingerprint`` in every answer, so a client can
tell which export wrote it). ``Served.prepare`` decodes and preprocesses an image or a clip with the model's
own preprocessors, ``Served.memories`` encodes them: the pixels, features and memory that
``generate_from_multimodal`` uses for the same file.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apt_plugin_lm.generation import Decoder
from apt_sdk import UserError

CONFIG_FILE = "config.json"


@dataclass
class Media:
    """A request's image and clip, preprocessed: pixels ``[1, 3, S, S]``, features ``[1, mels, frames]`` and
    their frame mask."""

    pixels: torch.Tensor | None = None
    features: torch.Tensor | None = None
    audio_mask: torch.Tensor | None = None
    image_mask: torch.Tensor | None = None  # an image encoder's, when its preprocessor gives one

    def __getstate__(self) -> dict:
        # to the engine's process as numpy arrays: a tensor pickles through torch.save, 5x slower for these
        return {k: v.numpy() if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16 else v
                for k, v in vars(self).items()}

    def __setstate__(self, state: dict) -> None:
        vars(self).update({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()})


@dataclass
class Served:
    kind: str  # "apt-lm" or "multimodal-apt"
    folder: Path
    model: torch.nn.Module
    tokenizer: Any
    fingerprint: str

    def __post_init__(self) -> None:
        self.decoder = Decoder.of(self.model)
        self.context = self.decoder.context
        self.eos_id = self.tokenizer.eos_id
        self.takes_image = getattr(self.model, "vision", None) is not None
        self.takes_audio = getattr(self.model, "audio", None) is not None

    def describe(self) -> str:
        takes = [name for name, yes in (("images", self.takes_image), ("audio", self.takes_audio)) if yes]
        return (f"{self.kind} from {self.folder} ({sum(p.numel() for p in self.model.parameters()):,} parameters, "
                f"context {self.context} tokens{', takes ' + ' and '.join(takes) if takes else ''})")

    def encode(self, text: str) -> list[int]:
        """A prompt's tokens: ``<bos>`` and the text, as the models were trained (and as ``text-samples``
        and ``generate_from_multimodal`` prompt them)."""
        bos = self.tokenizer.bos_id
        return ([bos] if bos is not None else []) + self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def prepare(self, image: bytes | None = None, audio: bytes | None = None, audio_format: str = "wav") -> Media:
        """Decode and preprocess; a ``UserError`` names what is wrong (not an image, not audio, a modality
        the model was built without). Runs outside the engine's thread: it may be slow, and it may fail."""
        media = Media()
        if image is not None:
            if not self.takes_image:
                raise UserError(f"this {self.kind} model takes no images (it was built without vision)")
            prepared = self.model.vision.preprocessor([image])  # the Encoder contract's: any image encoder's
            media.pixels, media.image_mask = prepared if isinstance(prepared, tuple) else (prepared, None)
        if audio is not None:
            if not self.takes_audio:
                raise UserError(f"this {self.kind} model takes no audio (it was built without an audio encoder)")
            # a file, as generate_from_multimodal(audio=path) reads one: the same decoder and resampler
            with tempfile.NamedTemporaryFile(suffix=f".{audio_format}") as clip:
                clip.write(audio)
                clip.flush()
                prepared = self.model.audio.preprocessor([clip.name])
                media.features, media.audio_mask = prepared if isinstance(prepared, tuple) else (prepared, None)
        return media

    def memories(self, medias: list[Media | None]) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """What each request's decoder rows cross-attend to, ``[1, M, d_model]``, and its mask; ``(None, None)``
        for a text model. The requests that bring the same inputs, of the same shapes, are encoded in one call
        (32 images read one by one took as long as 10 decode steps of the 32 requests)."""
        if self.kind != "multimodal-apt":
            return [(None, None)] * len(medias)
        parts = ("pixels", "features", "audio_mask", "image_mask")
        groups: dict[tuple, list[int]] = {}
        medias = [media or Media() for media in medias]
        for i, media in enumerate(medias):
            groups.setdefault(tuple(_shape(getattr(media, part)) for part in parts), []).append(i)
        found: list = [None] * len(medias)
        for rows in groups.values():
            inputs = {part: _cat([getattr(medias[i], part) for i in rows]) for part in parts}
            memory, mask = self.model.memory(len(rows), image=inputs["pixels"], audio=inputs["features"],
                                             audio_mask=inputs["audio_mask"], image_mask=inputs["image_mask"])
            for j, i in enumerate(rows):
                found[i] = memory[j:j + 1], mask[j:j + 1]
        return found


def _shape(tensor: torch.Tensor | None) -> tuple | None:
    return None if tensor is None else tuple(tensor.shape)


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors)


def model_folder(path: Path) -> Path:
    """The folder of the saved model: ``path`` itself, or a run folder's exported ``model/``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run or model folder")
    if not path.is_dir():
        raise UserError(f"{path} is a file; serve takes a run folder (its exported model/) or a saved model folder")
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / "model" / CONFIG_FILE).is_file():
        return path / "model"
    hint = " (the trainer exports model/ at the end of the run)" if (path / "checkpoints").is_dir() else ""
    raise UserError(f"{path} holds no saved model: neither {path / CONFIG_FILE} nor {path / 'model' / CONFIG_FILE}"
                    f"{hint}")


def load(path: Path) -> Served:
    folder = model_folder(path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / CONFIG_FILE} cannot be read as JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{folder / CONFIG_FILE} is not a model's config (a JSON object)")
    fingerprint = _fingerprint(folder)
    if "multimodal" in config:
        try:
            from apt_plugin_multimodal import MultimodalAPTModel
        except ImportError:
            raise UserError(f"{folder} is a multimodal APT model; serving it needs apt-plugin-multimodal "
                            "(pip install 'apt-plugin-serve[multimodal]')") from None
        model = MultimodalAPTModel.from_pretrained(folder)
        if model.tokenizer is None:
            raise UserError(f"{folder} has no tokenizer/ folder: the model's text cannot be encoded")
        return Served("multimodal-apt", folder, model.eval(), model.tokenizer, fingerprint)
    from apt_plugin_lm.model import APTConfig, APTLargeModel
    from apt_plugin_lm.tokenization import load_tokenizer

    try:
        APTConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{folder / CONFIG_FILE} is neither an APT language model's config nor a multimodal "
                        f"one ({exc})") from None
    if config.get("num_encoder_layers"):
        raise UserError(f"{folder} is an encoder-decoder APT model (num_encoder_layers = "
                        f"{config['num_encoder_layers']}), which generates from src_tokens; serve takes "
                        "decoder-only models")
    if not (folder / "tokenizer").is_dir():
        raise UserError(f"{folder} has no tokenizer/ folder beside the weights: the model's text cannot be encoded")
    try:
        model = APTLargeModel.from_pretrained(folder)
    except (OSError, RuntimeError) as exc:  # a missing or partly written weights file
        raise UserError(f"{folder}: the weights cannot be loaded ({str(exc).splitlines()[0]})") from None
    return Served("apt-lm", folder, model.eval(), load_tokenizer(folder / "tokenizer"), fingerprint)


def _fingerprint(folder: Path) -> str:
    """A short hash of the files that make the model (config, weights, tokenizer)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "fp_" + digest.hexdigest()[:12]


def tokenizer_signature(served: Served) -> str:
    """What must not change for running requests to continue on a reloaded model: its kind and its tokenizer."""
    return f"{served.kind} {_fingerprint(served.folder / 'tokenizer')}"


def watch_signature(folder: Path) -> tuple | None:
    """Sizes and modification times of the model's files: a new export changes it (None: no model there)."""
    try:
        return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                            for p in folder.rglob("*") if p.is_file()))
    except OSError:  # files being replaced under us
        return None
