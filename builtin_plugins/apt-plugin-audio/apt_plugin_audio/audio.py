"""Loading audio as Whisper wants it: mono float32 at 16 kHz, from any file libsndfile (or librosa's
fallback) reads, or an array.

A file is decoded only as far as it is used: with ``max_seconds`` only the frames of that window (and a
margin for the resampler's filter) are read and resampled, so one second of a 30-minute recording costs
one second's work, and its samples are exactly those of the whole file decoded, resampled and cut.

Every failure is a ``UserError`` that names the file (and, when the caller passes one, the record).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import soundfile as sf

from apt_sdk import UserError

from .rate import SAMPLING_RATE

AudioSource = str | os.PathLike | np.ndarray
RESAMPLER = "soxr_hq"  # librosa.load's default, so a windowed read equals the whole file's first seconds


def describe(source: Any, where: str | None) -> str:
    """How an error names a clip: its file (or "audio array") and, from a dataset, the record."""
    what = f"audio file {str(source)!r}" if isinstance(source, str | os.PathLike) else "audio array"
    return f"{what} ({where})" if where else what


def load_audio(source: AudioSource, sampling_rate: int | None = None, where: str | None = None,
               max_seconds: float | None = None) -> np.ndarray:
    """A mono float32 waveform at 16 kHz.

    :param source: a path to any file libsndfile reads (WAV, FLAC, OGG, MP3; 8/16/24/32-bit PCM or
        float; any rate; any channel count), or an array ``[samples]``, ``[channels, samples]`` or
        ``[samples, channels]``.
    :param sampling_rate: the array's rate (``None``: already 16 kHz). Not allowed with a path: a file
        carries its own rate.
    :param where: where the clip came from, for messages (``"record 17 of train.jsonl"``).
    :param max_seconds: decode a file only this far (the first ``max_seconds``).
    :raises UserError: a missing, empty, corrupt or non-audio file; audio that is empty, not finite,
        or of more than two dimensions.
    """
    return load_window(source, sampling_rate, where, max_seconds)[0]


def load_window(source: AudioSource, sampling_rate: int | None = None, where: str | None = None,
                max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """``load_audio`` and the whole clip's length in seconds (of which only ``max_seconds`` were decoded)."""
    label = describe(source, where)
    if isinstance(source, str | os.PathLike):
        if sampling_rate is not None:
            raise UserError(f"{label}: sampling_rate is for arrays; a file carries its own rate")
        samples, seconds = _read(Path(source), label, max_seconds)
        if max_seconds is not None:
            samples = samples[:math.ceil(max_seconds * SAMPLING_RATE)]
        return _checked(samples, label), seconds
    if isinstance(source, np.ndarray):
        samples = _checked(_from_array(source, sampling_rate, label), label)
        return samples, len(samples) / SAMPLING_RATE
    raise UserError(f"{label}: expected a path or a numpy array, got {type(source).__name__}")


def _read(path: Path, label: str, max_seconds: float | None) -> tuple[np.ndarray, float]:
    if not path.is_file():
        raise UserError(f"{label}: no such file" if not path.exists() else f"{label}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{label}: the file is empty")
    try:
        with sf.SoundFile(path) as file:
            rate, total = file.samplerate, file.frames
            wanted = total
            if max_seconds is not None:  # the window, and the frames the resampler's filter looks ahead to
                wanted = min(total, math.ceil(max_seconds * rate) + rate // 10 + 1024)
            frames = file.read(wanted, dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:  # not a format libsndfile knows: librosa's other decoders may
        return _read_other(path, label, max_seconds, exc)
    except RuntimeError as exc:  # a header that promised more than the file holds
        raise UserError(f"{label}: not audio that can be decoded ({_reason(exc)})") from None
    if frames.size and not np.isfinite(frames).all():
        raise UserError(f"{label}: contains NaN or infinite samples")
    mono = librosa.to_mono(frames.T) if frames.shape[1] > 1 else frames[:, 0]  # librosa.load's own mixing
    return _resample(mono, rate), total / rate if rate else 0.0


def _read_other(path: Path, label: str, max_seconds: float | None, first: Exception) -> tuple[np.ndarray, float]:
    try:
        with warnings.catch_warnings():
            # librosa's fallback to audioread warns of its own deprecation and of libsndfile's failure
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            seconds = librosa.get_duration(path=path)
            duration = None if max_seconds is None else max_seconds + 0.2
            samples, _ = librosa.load(path, sr=SAMPLING_RATE, mono=True, duration=duration, res_type=RESAMPLER)
    except ImportError:
        raise  # a broken installation, not a bad file
    except Exception:  # noqa: BLE001 - audioread and ffmpeg each raise their own types
        # libsndfile's reason ("Format not recognised") says more than audioread's NoBackendError
        raise UserError(f"{label}: not audio that can be decoded ({_reason(first)})") from None
    return samples, seconds


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[1] if text.startswith("Error opening") and ": " in text else text


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if samples.size and rate != SAMPLING_RATE:
        return librosa.resample(samples, orig_sr=int(rate), target_sr=SAMPLING_RATE, res_type=RESAMPLER)
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
    if samples.size and not np.isfinite(samples).all():
        raise UserError(f"{label}: contains NaN or infinite samples")
    if samples.ndim == 2:
        if samples.shape[0] > samples.shape[1]:
            samples = samples.T  # [samples, channels], as soundfile returns it
        samples = librosa.to_mono(samples)
    return _resample(samples, int(rate))


def _checked(samples: np.ndarray, label: str) -> np.ndarray:
    if samples.size == 0:
        raise UserError(f"{label}: contains no samples")
    if not np.isfinite(samples).all():
        raise UserError(f"{label}: contains NaN or infinite samples")
    return np.ascontiguousarray(samples, dtype=np.float32)
