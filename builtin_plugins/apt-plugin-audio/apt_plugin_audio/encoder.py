"""``AudioEncoder``: Whisper's audio encoder (transformers' ``WhisperEncoder``) as the kernel's ``Encoder``
(``encode``: frames and their mask), with the original plan's API (``encode_audio``, ``encode_batch``).

Whisper pads every clip to a fixed window (30 s in the released models) and its encoder has exactly
one position per 20 ms of that window. ``max_seconds`` sets the window for the feature extractor and
the encoder's positions together, so a model for 1-second digits computes 50 frames, not 1,500; loaded
weights keep their first ``50 * max_seconds`` positions.

Preprocessing (decoding the window, resampling, log-mel features) lives in ``AudioPreprocessor``, a small
picklable object, so DataLoader workers run it and the training process only runs the network.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from apt_sdk import UserError
from apt_sdk.encoders import EncoderConfig, EncoderModule
from apt_sdk.pretrained import check_divides, check_source, load_pretrained, preset_config, quiet_transformers

from .audio import AudioSource, describe, load_window
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

    def __eq__(self, other: object) -> bool:
        """The same features for the same clip: the same window and the same extractor settings."""
        return (isinstance(other, AudioPreprocessor) and other.frames == self.frames
                and other.feature_extractor.to_dict() == self.feature_extractor.to_dict())

    __hash__ = None  # mutable settings: compared, not hashed


class AudioEncoder(EncoderModule):
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

    As an ``Encoder``: ``modality`` is ``"audio"``, ``output_dim`` the frame width D; ``preprocessor`` gives
    ``(features, mask)`` and ``encode(features, mask)`` gives ``([B, frames, D], mask [B, frames])``, as
    ``encode_batch`` does for clips.
    """

    modality = "audio"

    def __init__(self, model_type: str = "whisper", model_name_or_path: str | Path | None = None,
                 config: WhisperConfig | dict | None = None, size: str = "base", max_seconds: float = 30.0,
                 freeze_encoder: bool = True):
        super().__init__()
        check_source(model_type, MODEL_TYPES, model_name_or_path, config)
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
        self.freeze(freeze_encoder)  # Whisper's fixed positions are not among what unfreezing trains

    @property
    def config(self) -> EncoderConfig:
        """The encoder's config, the window and the feature extractor's settings: ``from_config`` rebuilds it."""
        return EncoderConfig(model=self.encoder.config.to_dict(), max_seconds=self.max_seconds,
                             preprocessor=self.preprocessor.feature_extractor.to_dict())

    @classmethod
    def from_config(cls, config: dict) -> AudioEncoder:
        """An encoder of the saved shape and window with fresh weights and the saved feature extractor. Also takes
        what a multimodal model saved before encoders were recorded: the WhisperConfig's fields and max_seconds."""
        fields = dict(config.get("model", config))
        seconds = config.get("max_seconds", fields.pop("max_seconds", None))
        encoder = cls(config=WhisperConfig.from_dict(fields), max_seconds=seconds, freeze_encoder=False)
        if "preprocessor" in config:
            extractor = WhisperFeatureExtractor.from_dict(config["preprocessor"])
            encoder.preprocessor = AudioPreprocessor(extractor, encoder.frames)
        return encoder

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
        with self.frozen_grad():
            return self.encoder(features).last_hidden_state

    def encode_audio(self, audio: AudioSource, sampling_rate: int | None = None) -> torch.Tensor:
        """One clip (a path, or an array at ``sampling_rate``, default 16 kHz) to ``[1, frames, output_dim]``."""
        return self.encode_batch([audio], sampling_rate)[0]

    def encode_batch(self, clips: Sequence[AudioSource],
                     sampling_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips to ``([B, frames, output_dim], mask [B, frames])``; the mask is True where there was audio."""
        return self.encode(*self.preprocess(clips, sampling_rate))

    def encode(self, inputs: Any, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``Encoder`` contract: the frames of log-mel features (or of a list of clips) and their mask, the
        preprocessor's (None: every frame is audio)."""
        if not isinstance(inputs, torch.Tensor):
            inputs, mask = self.preprocess(inputs)
        frames = self.forward(inputs)
        return frames, None if mask is None else mask.to(frames.device)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the encoder and its feature extractor; ``AudioEncoder(model_name_or_path=path)`` loads them."""
        with quiet_transformers():  # transformers' "Writing model shards" progress bar
            self.encoder.save_pretrained(path)
        self.preprocessor.feature_extractor.save_pretrained(path)


def _build_config(config: WhisperConfig | dict | None, size: str, frames: int) -> WhisperConfig:
    if isinstance(config, WhisperConfig):
        built = WhisperConfig(**{**config.to_dict(), "max_source_positions": frames})
    else:
        built = preset_config(WhisperConfig, SIZES, size, config, "Whisper", "a WhisperConfig",
                              max_source_positions=frames)
    check_divides("Whisper", built, ("d_model", "encoder_attention_heads"))
    return built


def _load(name: str, frames: int) -> tuple[WhisperEncoder, WhisperFeatureExtractor]:
    encoder, missing, extractor = load_pretrained(name, lambda source, local_only: _read(source, name, local_only),
                                                  "Whisper")
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
    with quiet_transformers():
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
