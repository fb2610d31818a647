"""``SmallCNN``: grey images through two convolutions, a grid of feature vectors (an ``apt_sdk.Encoder``)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from apt_sdk import UserError
from apt_sdk.encoders import EncoderConfig, EncoderModule


class GreyImages:
    """The preprocessor: paths, PIL images or encoded bytes to grey levels ``[B, 1, size, size]`` in [0, 1]."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, media, where=None):
        places = list(where) if where is not None else [None] * len(media)
        grey = [self._grey(item, place) for item, place in zip(media, places, strict=True)]
        return torch.stack([torch.from_numpy(levels) for levels in grey])[:, None]

    def _grey(self, item, place) -> np.ndarray:
        try:
            image = item if isinstance(item, Image.Image) else Image.open(io.BytesIO(item) if isinstance(item, bytes)
                                                                          else item)
            image = image.convert("L").resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as exc:
            name = "image" if isinstance(item, Image.Image | bytes) else f"image {str(item)!r}"
            raise UserError(f"{name}{f' ({place})' if place else ''}: cannot be read ({exc})") from None
        return np.asarray(image, dtype=np.float32) / 255.0


class SmallCNN(EncoderModule):
    """A 3x3 convolution, a stride-2 one and a 1x1 projection: ``(size / 2)^2`` vectors of ``output_dim``."""

    modality = "image"

    def __init__(self, image_size: int = 8, channels: int = 32, output_dim: int = 32):
        super().__init__()
        self.image_size, self.channels, self.output_dim = image_size, channels, output_dim
        self.preprocessor = GreyImages(image_size)
        self.net = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, output_dim, 1))

    @property
    def config(self) -> EncoderConfig:
        return EncoderConfig(image_size=self.image_size, channels=self.channels, output_dim=self.output_dim)

    @classmethod
    def from_config(cls, config: dict) -> SmallCNN:
        return cls(config["image_size"], config["channels"], config["output_dim"])

    def encode(self, inputs: torch.Tensor, mask=None):
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != (1, self.image_size, self.image_size):
            raise ValueError(f"expected grey levels [batch, 1, {self.image_size}, {self.image_size}], "
                             f"got {list(inputs.shape)}")
        with self.frozen_grad():
            grid = self.net(inputs.to(self.net[0].weight.dtype))  # [batch, output_dim, rows, columns]
        return grid.flatten(2).transpose(1, 2), None  # every cell is real
