"""``MelCNN``: 16 kHz audio as a log-mel spectrogram through two 1-D convolutions (an ``apt_sdk.Encoder``)."""

from __future__ import annotations

import math
import os

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly
from torch import nn

from apt_sdk import UserError
from apt_sdk.encoders import EncoderConfig, EncoderModule

RATE, HOP, FFT = 16_000, 160, 400  # 10 ms frames of 25 ms windows


def mel_filters(bins: int, fft: int = FFT, rate: int = RATE) -> np.ndarray:
    """Triangular filters ``[bins, fft // 2 + 1]`` evenly spaced on the mel scale."""
    mel = np.linspace(0.0, 2595 * np.log10(1 + rate / 2 / 700), bins + 2)
    edges = 700 * (10 ** (mel / 2595) - 1)
    freqs = np.linspace(0, rate / 2, fft // 2 + 1)
    lower = (freqs[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)


class LogMel:
    """The preprocessor: paths or 16 kHz waveforms to log-mel spectrograms ``[B, bins, frames]`` of a fixed window
    and the mask of the frames that hold audio ``[B, frames]``."""

    def __init__(self, max_seconds: float, bins: int):
        self.samples = int(round(max_seconds * RATE))
        self.frames = self.samples // HOP
        self.filters = torch.from_numpy(mel_filters(bins))

    def __call__(self, media, where=None):
        places = list(where) if where is not None else [None] * len(media)
        waves = [self._wave(item, place) for item, place in zip(media, places, strict=True)]
        padded = torch.stack([torch.from_numpy(np.pad(w[:self.samples], (0, max(0, self.samples - len(w)))))
                              for w in waves])
        spectrum = torch.stft(padded, FFT, HOP, window=torch.hann_window(FFT), return_complex=True).abs() ** 2
        features = torch.log(self.filters @ spectrum[..., :self.frames] + 1e-6)
        lengths = torch.tensor([math.ceil(min(len(w), self.samples) / HOP) for w in waves])
        return features, torch.arange(self.frames) < lengths[:, None]

    @staticmethod
    def _wave(item, place) -> np.ndarray:
        if isinstance(item, np.ndarray):
            wave, rate = item.astype(np.float32), RATE
        else:
            try:
                wave, rate = soundfile.read(os.fspath(item), dtype="float32", always_2d=True)
            except (OSError, RuntimeError, TypeError) as exc:
                where = f" ({place})" if place else ""
                raise UserError(f"audio {str(item)!r}{where}: cannot be read ({exc})") from None
            wave = wave.mean(1)
        if rate != RATE:
            common = math.gcd(int(rate), RATE)
            wave = resample_poly(wave, RATE // common, int(rate) // common).astype(np.float32)
        if wave.size == 0:
            raise UserError(f"audio {str(item)!r}{f' ({place})' if place else ''}: holds no samples")
        return wave


class MelCNN(EncoderModule):
    """Two 1-D convolutions over the mel bins, the second of stride 2: 50 vectors a second, with their mask."""

    modality = "audio"

    def __init__(self, max_seconds: float = 1.0, mel_bins: int = 40, channels: int = 64, output_dim: int = 32):
        super().__init__()
        self.max_seconds, self.mel_bins, self.channels, self.output_dim = max_seconds, mel_bins, channels, output_dim
        self.preprocessor = LogMel(max_seconds, mel_bins)
        self.net = nn.Sequential(nn.Conv1d(mel_bins, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv1d(channels, output_dim, 3, stride=2, padding=1))

    @property
    def config(self) -> EncoderConfig:
        return EncoderConfig(max_seconds=self.max_seconds, mel_bins=self.mel_bins, channels=self.channels,
                             output_dim=self.output_dim)

    @classmethod
    def from_config(cls, config: dict) -> MelCNN:
        return cls(config["max_seconds"], config["mel_bins"], config["channels"], config["output_dim"])

    def encode(self, inputs: torch.Tensor, mask=None):
        if inputs.ndim != 3 or inputs.shape[1] != self.mel_bins:
            raise ValueError(f"expected log-mel features [batch, {self.mel_bins}, frames], got {list(inputs.shape)}")
        with self.frozen_grad():
            frames = self.net(inputs.to(self.net[0].weight.dtype)).transpose(1, 2)  # [batch, frames / 2, output_dim]
        return frames, None if mask is None else mask[:, ::2]
