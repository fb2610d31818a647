"""Whisper audio encoder plugin: ``AudioEncoder``, ``AudioPreprocessor`` and ``load_audio``."""

from .rate import SAMPLING_RATE

__version__ = "0.1.1"

__all__ = ["SAMPLING_RATE", "AudioEncoder", "AudioPreprocessor", "load_audio"]


def __getattr__(name: str):
    # torch, transformers and librosa are imported when the encoder is used, not when the plugin is discovered
    if name in ("AudioEncoder", "AudioPreprocessor"):
        from . import encoder

        return getattr(encoder, name)
    if name == "load_audio":
        from .audio import load_audio

        return load_audio
    raise AttributeError(name)
