"""Cross-modal attention and fusion: text tokens attend to image patches and audio frames.

``CrossModalAttention`` keeps the original plan's interface and layout: sequence-first tensors as
``torch.nn.MultiheadAttention`` takes them (``batch_first=True`` for ``[B, T, D]``), padding masks with
True at padded positions, as ``key_padding_mask`` has them, and the per-head weights returned.
``MultimodalFusion`` projects whatever modalities it is given into one width and lays them out as a
memory sequence, the form a decoder's cross-attention reads.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossModalAttention(nn.Module):
    """``(text [T, B, D], other [N, B, D]) -> (fused [T, B, D], weights [B, heads, T, N])``.

    fused = LayerNorm(text + attention(text -> other)). A text position marked as padding gets zeros
    and zero weights; a sample whose ``other`` is all padding (no image in that record) attends to
    nothing, so its text passes through the residual unchanged.

    :param d_model: the width of both inputs.
    :param num_heads: attention heads; ``d_model`` must divide by it.
    :param dropout: on the attention weights, in training.
    :param batch_first: inputs and output as ``[B, T, D]`` / ``[B, N, D]``.
    """

    def __init__(self, d_model: int = 512, num_heads: int = 8, dropout: float = 0.0, batch_first: bool = False):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.batch_first = batch_first
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, text: torch.Tensor, other: torch.Tensor, text_padding_mask: torch.Tensor | None = None,
                other_padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.batch_first:
            text, other = text.transpose(0, 1), other.transpose(0, 1)
        empty = None
        if other_padding_mask is not None:
            other_padding_mask = other_padding_mask.bool()
            empty = other_padding_mask.all(dim=1)  # [B]: nothing to attend to
            # a row with every key masked would be NaN; let it see everything and zero it after
            other_padding_mask = other_padding_mask & ~empty[:, None]
        attended, weights = self.attention(text, other, other, key_padding_mask=other_padding_mask,
                                           need_weights=True, average_attn_weights=False)
        keep = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)  # [B, T]
        if text_padding_mask is not None:
            keep = keep & ~text_padding_mask.bool()
        if empty is not None:
            attended = attended.masked_fill(empty[:, None, None], 0.0)
            weights = weights.masked_fill(empty[:, None, None, None], 0.0)
        fused = self.norm(text + attended) * keep[..., None]
        weights = weights * keep[:, None, :, None]
        return (fused if self.batch_first else fused.transpose(0, 1)), weights


class MultimodalFusion(nn.Module):
    """Any subset of text, image and audio features in one ``output_dim``-wide space.

    Each modality has its own projection and a learned type embedding, so the memory says which
    modality a token came from. Image features may be pooled ``[B, D]`` (one token) or patches
    ``[B, N, D]``; audio frames ``[B, F, D]`` with a frame mask (True = audio).

    - ``memory(image=..., audio=...) -> (tokens [B, N, output_dim], mask [B, N])``, True = real: the
      modalities side by side, for a decoder's cross-attention; a sample without a modality has
      that modality's tokens masked (``image_present`` / ``audio_present``, or an all-False mask).
    - ``forward(text=..., image=..., audio=...)``: with text ``[B, T, text_dim]``, the text attends to
      the memory (``CrossModalAttention``) and comes back fused ``[B, T, output_dim]``; without
      text, the mean of the memory's real tokens ``[B, output_dim]``.
    """

    def __init__(self, text_dim: int | None = None, image_dim: int | None = None, audio_dim: int | None = None,
                 output_dim: int = 512, num_heads: int = 8, dropout: float = 0.0):
        super().__init__()
        if image_dim is None and audio_dim is None:
            raise ValueError("MultimodalFusion needs at least one of image_dim and audio_dim")
        self.output_dim = output_dim
        self.text = nn.Linear(text_dim, output_dim) if text_dim is not None else None
        self.image = nn.Linear(image_dim, output_dim) if image_dim is not None else None
        self.audio = nn.Linear(audio_dim, output_dim) if audio_dim is not None else None
        self.types = nn.Embedding(2, output_dim)  # 0 image, 1 audio
        self.cross = CrossModalAttention(output_dim, num_heads, dropout, batch_first=True) if text_dim else None

    def memory(self, image: torch.Tensor | None = None, audio: torch.Tensor | None = None,
               image_present: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None,
               image_mask: torch.Tensor | None = None,
               audio_present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_mask`` / ``audio_mask``: which of each record's tokens are real (None: all of them);
        ``image_present`` / ``audio_present``: which records have that modality at all (None: every one)."""
        parts, masks = [], []
        for index, (features, projection, name, mask, present) in enumerate((
                (image, self.image, "image", image_mask, image_present),
                (audio, self.audio, "audio", audio_mask, audio_present))):
            if features is None:
                continue
            if projection is None:
                raise ValueError(f"this fusion was built without {name}_dim; it cannot take {name} features")
            if features.ndim == 2:
                features = features[:, None]
            tokens = projection(features) + self.types.weight[index]
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if mask is None else mask.bool()
            if present is not None:
                mask = mask & present.to(mask.device).bool()[:, None]
            parts.append(tokens)
            masks.append(mask)
        if not parts:
            raise ValueError("no image or audio features to fuse")
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    def forward(self, text: torch.Tensor | None = None, image: torch.Tensor | None = None,
                audio: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                image_present: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens, mask = self.memory(image, audio, image_present, audio_mask)
        if text is None:
            weights = mask[..., None].to(tokens.dtype)
            return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        if self.text is None:
            raise ValueError("this fusion was built without text_dim; it cannot take text")
        fused, _ = self.cross(self.text(text), tokens, None if text_mask is None else ~text_mask.bool(), ~mask)
        return fused
