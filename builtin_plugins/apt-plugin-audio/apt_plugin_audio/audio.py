"""Loading audio as Whisper wants it: mono float32 at 16 kHz, from any file librosa reads or an array.

Every failure is a ``UserError`` that names the file (and, when the caller passes one, the record).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import librosa
import numpy as np

from apt_sdk import UserError

from . import SAMPLING_RATE

AudioSource = str | os.PathLike | np.ndarray


def describe(source: Any, where: str | None) -> str:
    """How an error names a clip: its file (or "audio array") and, from a dataset, the record."""
    what = f"audio file {str(source)!r}" if isinstance(source, str | os.PathLike) else "audio array"
    return f"{what} ({where})" if where else what


def load_audio(source: AudioSource, sampling_rate: int | None = None, where: str | None = None) -> np.ndarray:
    """A mono float32 waveform at 16 kHz.

    :param source: a path to any file librosa reads (WAV, FLAC, OGG; 8/16/24/32-bit PCM or float; any
        rate; any channel count), or an array ``[samples]`` or ``[channels, samples]``.
    :param sampling_rate: the array's rate (``None``: already 16 kHz). Not allowed with a path: a file
        carries its own rate.
    :param where: where the clip came from, for messages (``"record 17 of train.jsonl"``).
    :raises UserError: a missing, empty, corrupt or non-audio file; an array that is empty, not finite,
        or of more than two dimensions.
    """
    label = describe(source, where)
    if isinstance(source, str | os.PathLike):
        if sampling_rate is not None:
            raise UserError(f"{label}: sampling_rate is for arrays; a file carries its own rate")
        return _checked(_read(Path(source), label), label)
    if isinstance(source, np.ndarray):
        return _checked(_from_array(source, sampling_rate, label), label)
    raise UserError(f"{label}: expected a path or a numpy array, got {type(source).__name__}")


def _read(path: Path, label: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{label}: no such file" if not path.exists() else f"{label}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{label}: the file is empty")
    try:
        with warnings.catch_warnings():
            # librosa's fallback to audioread (for what libsndfile cannot read) warns of its own deprecation
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            samples, _ = librosa.load(path, sr=SAMPLING_RATE, mono=True)
    except ImportError:
        raise  # a broken installation, not a bad file
    except Exception as exc:  # noqa: BLE001 - libsndfile, audioread and ffmpeg each raise their own types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{label}: not audio that can be decoded ({reason})") from None
    return samples


def _from_array(samples: np.ndarray, sampling_rate: int | None, label: str) -> np.ndarray:
    rate = SAMPLING_RATE if sampling_rate is None else sampling_rate
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
        raise UserError(f"{label}: sampling_rate must be a positive whole number of Hz, got {sampling_rate!r}")
    if samples.ndim not in (1, 2):
        raise UserError(f"{label}: expected [samples] or [channels, samples], got shape {list(samples.shape)}")
    if np.issubdtype(samples.dtype, np.integer):
        info = np.iinfo(samples.dtype)
        samples = (samples.astype(np.float64) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    elif not np.issubdtype(samples.dtype, np.floating):
        raise UserError(f"{label}: expected numbers, got dtype {samples.dtype}")
    samples = samples.astype(np.float32)
    if samples.ndim == 2:
        if samples.shape[0] > samples.shape[1]:
            samples = samples.T  # [samples, channels], as soundfile returns it
        samples = librosa.to_mono(samples)
    if samples.size and rate != SAMPLING_RATE:
        samples = librosa.resample(samples, orig_sr=int(rate), target_sr=SAMPLING_RATE)
    return samples


def _checked(samples: np.ndarray, label: str) -> np.ndarray:
    if samples.size == 0:
        raise UserError(f"{label}: contains no samples")
    if not np.isfinite(samples).all():
        raise UserError(f"{label}: contains NaN or infinite samples")
    return np.ascontiguousarray(samples, dtype=np.float32)
