"""``ConvStem``: a small convolutional network in place of CLIP's patch embedding.

A linear patch embedding sees each patch once, through one matrix: to tell a 10-pixel circle from a
square it must learn the difference at every offset the object can have inside the patch, and on
Sort-of-CLEVR a tower trained from scratch that way stayed at chance on shape for thousands of steps.
Stride-2 3x3 convolutions (the stem of Santoro et al.'s relation network) build edge and corner
detectors once and share them over the image; two coordinate channels (CoordConv, Liu et al. 2018) then
say where each cell is from the first step, which a learned position table has to discover.

GroupNorm rather than the paper's BatchNorm: a batch of questions holds few distinct images, and with
BatchNorm's running statistics the held-out accuracy of one question type swung between 0.4 and 1.0
from one evaluation to the next; GroupNorm gave the same or better accuracy, steadily.

The stem is an ``nn.Conv2d`` (the last, 1x1 projection to the tower's width) with the convolutions in
front of it: CLIP's embeddings call it, and read its ``weight`` for the input dtype, exactly as they do
the patch embedding. It gives the grid the patches would (``image_size // patch_size`` square), so
position embeddings and token counts are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STEMS = ("patches", "conv")


class ConvStem(nn.Conv2d):
    """``[B, 3, S, S]`` pixels to ``[B, hidden_size, S // patch_size, S // patch_size]`` features.

    :param channels: width of the convolutions (the paper's stem has 24; 32 is as cheap on a CPU).
    """

    def __init__(self, hidden_size: int, image_size: int, patch_size: int, num_channels: int = 3,
                 channels: int = 32):
        super().__init__(channels + 2, hidden_size, kernel_size=1, bias=False)
        self.grid = image_size // patch_size
        layers: list[nn.Module] = []
        size, width = image_size, num_channels
        while (size + 1) // 2 >= self.grid:  # halve while the map stays at least as fine as the grid
            layers += [nn.Conv2d(width, channels, 3, stride=2, padding=1), nn.GroupNorm(4, channels), nn.ReLU()]
            size, width = (size + 1) // 2, channels
        if not layers:  # patch_size 1: one stride-1 layer, so there is still a convolution to learn
            layers += [nn.Conv2d(width, channels, 3, padding=1), nn.GroupNorm(4, channels), nn.ReLU()]
        self.layers = nn.Sequential(*layers)
        line = torch.linspace(-1.0, 1.0, self.grid)
        rows, cols = torch.meshgrid(line, line, indexing="ij")
        self.register_buffer("coordinates", torch.stack([cols, rows]), persistent=False)  # x, y in [-1, 1]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.layers(pixels)
        if features.shape[-1] != self.grid:  # e.g. 75 px with 5 px patches: 19 cells pooled to 15
            features = F.adaptive_avg_pool2d(features, self.grid)
        where = self.coordinates.to(features.dtype).expand(features.shape[0], -1, -1, -1)
        return super().forward(torch.cat([features, where], 1))
