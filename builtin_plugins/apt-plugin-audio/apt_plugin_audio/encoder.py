"""``AudioEncoder``: Whisper's audio encoder (transformers' ``WhisperEncoder``) behind the kernel's
``Encoder`` contract, with the original plan's API (``encode_audio``, ``encode_batch``).

Whisper pads every clip to a fixed window (30 s in the released models) and its encoder has exactly
one position per 20 ms of that window. ``max_seconds`` sets the window for the feature extractor and
the encoder's positions together, so a model for 1-second digits computes 50 frames, not 1,500; loaded
weights keep their first ``50 * max_seconds`` positions.

Preprocessing (decoding the window, resampling, log-mel features) lives in ``AudioPreprocessor``, a small
picklable object, so DataLoader workers run it and the training process only runs the network.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import logging as hf_logging

from apt_sdk import UserError, check_known_keys

from .audio import AudioSource, describe, load_window
from .hub import from_hub
from .rate import SAMPLING_RATE

HOP = 160  # samples per mel frame (10 ms at 16 kHz); the encoder's second convolution halves the frames
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64),
    "small": dict(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024),
    # the encoder of openai/whisper-base
    "base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048),
}
MODEL_TYPES = ("whisper",)


def frames_for(max_seconds: float) -> int:
    """Encoder frames for a window of ``max_seconds`` (50 per second); it must be a whole number of frames."""
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float) or not max_seconds > 0:
        raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
    frames = round(max_seconds * SAMPLING_RATE / HOP / 2)
    if not math.isclose(frames * 2 * HOP / SAMPLING_RATE, max_seconds, abs_tol=1e-9) or frames == 0:
        raise ValueError(f"max_seconds = {max_seconds} is not a whole number of 20 ms encoder frames "
                         f"(e.g. {max(frames, 1) * 2 * HOP / SAMPLING_RATE:g})")
    return frames


class AudioPreprocessor:
    """Clips (paths or arrays) to Whisper log-mel features ``[B, mels, 2 * frames]`` and a frame mask
    ``[B, frames]`` (True where there was audio). Picklable: a DataLoader worker's collate function."""

    def __init__(self, feature_extractor: WhisperFeatureExtractor, frames: int):
        self.feature_extractor = feature_extractor
        self.frames = frames
        self.max_samples = frames * 2 * HOP
        feature_extractor.n_samples = self.max_samples
        feature_extractor.nb_max_frames = frames * 2
        feature_extractor.chunk_length = self.max_samples / SAMPLING_RATE

    @classmethod
    def for_window(cls, max_seconds: float, mel_bins: int = 80) -> AudioPreprocessor:
        """Whisper's standard features for a ``max_seconds`` window (what a from-config encoder uses)."""
        return cls(WhisperFeatureExtractor(feature_size=mel_bins), frames_for(max_seconds))

    def __call__(self, clips: Sequence[AudioSource], sampling_rate: int | None = None,
                 where: Sequence[str | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(clips, str | Path | np.ndarray):
            raise UserError(f"expected a list of clips, got one {type(clips).__name__}: wrap it in a list")
        if not len(clips):
            raise UserError("no audio to encode (an empty list)")
        labels = list(where) if where is not None else [None] * len(clips)
        waves = []
        for i, (clip, label) in enumerate(zip(clips, labels, strict=True)):
            label = label or (None if not isinstance(clip, np.ndarray) else f"clip {i} of the batch")
            limit = self.max_samples / SAMPLING_RATE
            # a file is decoded only as far as the window: its first seconds are all the features use
            wave, seconds = load_window(clip, sampling_rate if isinstance(clip, np.ndarray) else None, label,
                                        None if isinstance(clip, np.ndarray) else limit)
            if math.ceil(round(seconds * SAMPLING_RATE, 6)) > self.max_samples:  # the resampled length
                warnings.warn(f"{describe(clip, label)}: {seconds:.2f} s is longer than max_seconds = {limit:g}; "
                              "the rest is cut", stacklevel=2)
            waves.append(wave)
        with torch.autocast("cpu", enabled=False):  # under CPU bf16 autocast its numpy step met bf16 and failed
            features = self.feature_extractor(waves, sampling_rate=SAMPLING_RATE, return_tensors="pt",
                                              padding="max_length", max_length=self.max_samples,
                                              truncation=True)["input_features"]
        # a mel frame per HOP samples begun, an encoder frame per two mel frames begun
        lengths = torch.tensor([math.ceil(math.ceil(min(len(w), self.max_samples) / HOP) / 2) for w in waves])
        return features, torch.arange(self.frames) < lengths[:, None]


class AudioEncoder(nn.Module):
    """A Whisper audio encoder.

    :param model_type: ``"whisper"`` (the only family this plugin provides).
    :param model_name_or_path: a local folder written by ``save_pretrained`` (``WhisperModel``,
        ``WhisperForConditionalGeneration`` or this encoder), or a hub id where a hub is reachable.
        ``None``: build from ``config``/``size`` with random weights.
    :param config: a ``WhisperConfig``, or a dict of its fields laid over the ``size`` preset.
    :param size: the preset when building from a config: ``tiny`` (tests), ``small`` (CPU tasks),
        ``base`` (whisper-base's encoder: 512 wide, 6 layers, 8 heads).
    :param max_seconds: the longest clip (longer ones are cut, with a warning); sets the features'
        length and the encoder's positions: ``frames = 50 * max_seconds``.
    :param freeze_encoder: no gradients (``requires_grad`` off, forward under ``no_grad``), always in eval
        mode (no dropout), so an optimizer over ``parameters()`` that skips frozen ones holds nothing of it.

    ``output_dim`` is the frame width D: ``encode_batch`` gives ``([B, frames, D], mask [B, frames])``.
    """

    def __init__(self, model_type: str = "whisper", model_name_or_path: str | Path | None = None,
                 config: WhisperConfig | dict | None = None, size: str = "base", max_seconds: float = 30.0,
                 freeze_encoder: bool = True):
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise UserError(f"model_type {model_type!r} is not supported: this plugin provides "
                            f"{', '.join(MODEL_TYPES)}")
        if model_name_or_path is not None and config is not None:
            raise UserError("pass model_name_or_path (saved weights) or config (a new encoder), not both")
        try:
            frames = frames_for(max_seconds)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if model_name_or_path is not None:
            self.encoder, extractor = _load(str(model_name_or_path), frames)
        else:
            whisper_config = _build_config(config, size, frames)
            self.encoder = WhisperEncoder(whisper_config)
            extractor = WhisperFeatureExtractor(feature_size=whisper_config.num_mel_bins)
        if extractor.feature_size != self.encoder.config.num_mel_bins:
            raise UserError(f"the feature extractor makes {extractor.feature_size} mel bins but the encoder expects "
                            f"{self.encoder.config.num_mel_bins}")
        self.preprocessor = AudioPreprocessor(extractor, frames)
        self.model_type = model_type
        self.max_seconds = float(max_seconds)
        self.frames = frames
        self.output_dim = int(self.encoder.config.d_model)
        self._trainable = {name for name, p in self.encoder.named_parameters() if p.requires_grad}  # not positions
        self.frozen = False
        if freeze_encoder:
            self.freeze()

    def freeze(self, frozen: bool = True) -> AudioEncoder:
        """Freeze (``requires_grad`` off, eval mode, forward under ``no_grad``) or, with False, unfreeze the
        encoder: the weights that trained before train again (Whisper's fixed positions stay fixed) and it
        follows ``train()``/``eval()``. Saved with a multimodal model."""
        self.frozen = frozen
        for name, parameter in self.encoder.named_parameters():
            parameter.requires_grad_(not frozen and name in self._trainable)
        self.encoder.train(self.training and not frozen)
        return self

    def train(self, mode: bool = True) -> AudioEncoder:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # a parent's .train() must not switch dropout back on in a frozen encoder
        return self

    def preprocess(self, clips: Sequence[AudioSource], sampling_rate: int | None = None,
                   where: Sequence[str | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features and the frame mask, on the CPU (what a DataLoader worker produces)."""
        return self.preprocessor(clips, sampling_rate, where)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """Frame embeddings ``[B, frames, output_dim]`` of log-mel features ``[B, mels, 2 * frames]``."""
        expected = (self.encoder.config.num_mel_bins, 2 * self.frames)
        if input_features.ndim != 3 or tuple(input_features.shape[1:]) != expected:
            raise UserError(f"features must be [batch, {expected[0]}, {expected[1]}] for max_seconds = "
                            f"{self.max_seconds:g}, got {list(input_features.shape)}")
        weight = self.encoder.conv1.weight
        features = input_features.to(device=weight.device, dtype=weight.dtype, non_blocking=True)
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            return self.encoder(features).last_hidden_state

    def encode_audio(self, audio: AudioSource, sampling_rate: int | None = None) -> torch.Tensor:
        """One clip (a path, or an array at ``sampling_rate``, default 16 kHz) to ``[1, frames, output_dim]``."""
        return self.encode_batch([audio], sampling_rate)[0]

    def encode_batch(self, clips: Sequence[AudioSource],
                     sampling_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips to ``([B, frames, output_dim], mask [B, frames])``; the mask is True where there was audio."""
        features, mask = self.preprocess(clips, sampling_rate)
        frames = self.forward(features)
        return frames, mask.to(frames.device)

    def encode(self, inputs: Any) -> torch.Tensor:
        """The kernel's ``Encoder`` contract: frames of a list of clips, or of ready features."""
        return self.forward(inputs) if isinstance(inputs, torch.Tensor) else self.encode_batch(inputs)[0]

    def save_pretrained(self, path: str | Path) -> None:
        """Write the encoder and its feature extractor; ``AudioEncoder(model_name_or_path=path)`` loads them."""
        with _quiet():  # transformers' "Writing model shards" progress bar
            self.encoder.save_pretrained(path)
        self.preprocessor.feature_extractor.save_pretrained(path)


def _build_config(config: WhisperConfig | dict | None, size: str, frames: int) -> WhisperConfig:
    if isinstance(config, WhisperConfig):
        built = WhisperConfig(**{**config.to_dict(), "max_source_positions": frames})
    else:
        if size not in SIZES:
            raise UserError(f"size {size!r} is not a preset: choose one of {', '.join(SIZES)}")
        if config is not None and not isinstance(config, dict):
            raise UserError(f"config must be a WhisperConfig or a dict, got {type(config).__name__}")
        _check_fields(config or {}, WhisperConfig)
        fields = {**SIZES[size], **(config or {}), "max_source_positions": frames}
        try:
            built = WhisperConfig(**fields)
        except Exception as exc:  # noqa: BLE001 - transformers validates through huggingface_hub's own error types
            raise UserError(f"invalid Whisper config {fields}: {str(exc).strip().splitlines()[-1].strip()}") from None
    if built.d_model % built.encoder_attention_heads:
        raise UserError(f"invalid Whisper config: d_model {built.d_model} must divide by encoder_attention_heads "
                        f"{built.encoder_attention_heads}")
    return built


def _check_fields(fields: dict, config_class: type) -> None:
    """A misspelt field would be kept by transformers as an unused attribute and the preset's value used
    instead, so a typo must fail here. A config saved by ``to_dict`` (it names its ``model_type``) is
    exempt: it may hold fields of another transformers version, and its values are already the model's."""
    if fields.get("model_type") != config_class.model_type:
        check_known_keys(fields, config_class().to_dict(), f"{config_class.__name__} field")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' load report and progress bar are noise when a whole Whisper's decoder is skipped on purpose."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(name: str, frames: int) -> tuple[WhisperEncoder, WhisperFeatureExtractor]:
    local = Path(name).expanduser()
    if local.exists() and not local.is_dir():
        raise UserError(f"model_name_or_path {name!r} is a file: pass the folder save_pretrained wrote")
    if local.is_dir():
        try:
            encoder, missing, extractor = _read(str(local), name, local_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load Whisper weights from folder {str(local)!r}: {exc}") from None
    else:
        encoder, missing, extractor = from_hub(name, lambda local_only: _read(name, name, local_only),
                                               f"Download it where there is a network (hf download {name} "
                                               f"--local-dir DIR) and pass model_name_or_path=DIR, or build from a "
                                               f"config: model_name_or_path=None with size='tiny'|'small'|'base' or "
                                               f"config=...")
    if missing:
        raise UserError(f"{name!r} lacks {len(missing)} weights of a Whisper encoder "
                        f"(e.g. {', '.join(sorted(missing)[:3])})")
    saved = encoder.config.max_source_positions
    if frames > saved:
        raise UserError(f"{name!r} has positions for {saved * 2 * HOP / SAMPLING_RATE:g} s of audio; max_seconds = "
                        f"{frames * 2 * HOP / SAMPLING_RATE:g} needs {frames}")
    if frames < saved:
        # the first positions are exactly the ones a shorter window uses
        kept = encoder.embed_positions.weight.detach()[:frames].clone()
        encoder.embed_positions = nn.Embedding.from_pretrained(kept, freeze=True)
        encoder.config.max_source_positions = encoder.max_source_positions = frames
    return encoder.eval(), extractor


def _read(source: str, name: str, local_only: bool) -> tuple[WhisperEncoder, list[str], WhisperFeatureExtractor]:
    with _quiet():
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        if config.model_type != "whisper":
            raise UserError(f"{name!r} holds a {config.model_type!r} model, not Whisper")
        if "WhisperEncoder" in (config.architectures or []):
            encoder, info = WhisperEncoder.from_pretrained(source, output_loading_info=True,
                                                           local_files_only=local_only)
            missing = info["missing_keys"]
        else:  # a whole Whisper: load it through WhisperModel and keep the encoder
            model, info = WhisperModel.from_pretrained(source, output_loading_info=True, local_files_only=local_only)
            encoder = model.encoder
            missing = [key for key in info["missing_keys"] if key.startswith("encoder.")]
        return encoder, missing, _extractor(source, config.num_mel_bins, local_only)


def _extractor(source: str, mel_bins: int, local_only: bool) -> WhisperFeatureExtractor:
    try:
        return WhisperFeatureExtractor.from_pretrained(source, local_files_only=local_only)
    except OSError:
        # weights without preprocessor_config.json: Whisper's standard features at the model's mel count
        return WhisperFeatureExtractor(feature_size=mel_bins)
