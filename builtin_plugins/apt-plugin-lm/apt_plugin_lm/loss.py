"""Language-model cross-entropy that returns (sum, count) so trainers can normalise by real tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


class LMCrossEntropy:
    def __init__(self, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0) -> None:
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def __call__(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=self.ignore_index,
                                label_smoothing=self.label_smoothing, reduction="sum")
        return total, (labels != self.ignore_index).sum()
