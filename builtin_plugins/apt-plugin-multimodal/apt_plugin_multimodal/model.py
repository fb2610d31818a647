"""``MultimodalAPTModel``: the APT decoder conditioned on image and audio features.

Conditioning is by cross-attention, in every decoder block: the text stays a causal sequence of its
own tokens (so causality is the LM's, unchanged, with or without an image), and each block reads the
encoders' tokens through the APT decoder's own cross-attention (``apt_plugin_lm.model.Block`` with
``cross=True``). Prefix tokens would lengthen every text sequence by the image's 17-65 patches and
make the prompt/target split shift with the modality; cross-attention keeps positions and lengths
those of the text alone.

The memory a block attends to is one learned "nothing" token followed by the projected image
patches and audio frames (``MultimodalFusion.memory``). The "nothing" token is always visible, so a
text-only record, or a batch where only some records have an image, never has an empty attention row.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from apt_plugin_lm.model import APTConfig, APTLargeModel, Block
from apt_sdk.encoders import encoder_record

from . import encoders
from .checks import check_rows, check_text
from .config import SLOTS, MultimodalConfig
from .fusion import MultimodalFusion
from .generation import Generation
from .loading import Loading
from .warn import plain_warnings

__all__ = ["MultimodalAPTModel", "MultimodalConfig"]


class MultimodalAPTModel(Generation, Loading, nn.Module):
    """``forward(text_input_ids, image=None, audio=None, text_attention_mask=None, ...) -> logits [B, T, V]``;
    ``generate_from_multimodal`` / ``generate_batch`` (``generation.py``); ``save_pretrained`` /
    ``from_pretrained`` (``loading.py``).

    The encoders are used through the kernel's ``Encoder`` protocol alone (``encoders.py``): any encoder of
    images or of audio, a plugin's included, stands in for CLIP's or Whisper's.

    :param apt_config: the decoder (an ``APTConfig`` or its dict); ``num_encoder_layers`` must be 0.
    :param use_vision: attend to images: ``vision_encoder``, or a CLIP tower built from ``vision_config``.
    :param use_audio: attend to audio: ``audio_encoder``, or a Whisper encoder built from ``audio_config``.
    :param vision_encoder: a ready image encoder (``apt_sdk.Encoder`` of modality ``"image"``, a
        ``torch.nn.Module``: a ``VisionEncoder`` loaded from a folder, an ``[encoders.image]`` plugin's); it stays
        frozen or trainable as it is.
    :param audio_encoder: a ready audio encoder (modality ``"audio"``); the same.
    :param vision_config: fields for a new ``VisionEncoder`` over its ``size`` preset: ``{"size": "small",
        "image_size": 64, ...}`` (``"stem": "conv"`` for a convolutional stem). None: ``VisionEncoder()``'s
        own, ViT-B/32's shape (224 px images, 32 px patches).
    :param audio_config: fields for a new ``AudioEncoder``: ``{"size": "small", "max_seconds": 1.0, ...}``
        (default: the ``tiny`` preset, a 1 s window).
    :param freeze_encoders: freeze the encoders built here (their projections into the decoder always
        train); ``freeze_encoders(False)`` unfreezes every encoder later.
    """

    def __init__(self, apt_config: APTConfig | dict, use_vision: bool = True, use_audio: bool = False,
                 vision_encoder: nn.Module | None = None, audio_encoder: nn.Module | None = None,
                 vision_config: dict | None = None, audio_config: dict | None = None,
                 freeze_encoders: bool = True):
        super().__init__()
        decoder_config = apt_config if isinstance(apt_config, APTConfig) else APTConfig.from_dict(apt_config)
        if decoder_config.num_encoder_layers:
            raise ValueError("the multimodal decoder has no text encoder: set num_encoder_layers = 0")
        if not (use_vision or use_audio):
            raise ValueError("a multimodal model needs use_vision or use_audio (for text only, use APTLargeModel)")
        given = {"vision": (use_vision, vision_encoder, vision_config),
                 "audio": (use_audio, audio_encoder, audio_config)}
        for slot, (used, encoder, fields) in given.items():
            if not used:
                setattr(self, slot, None)
            elif encoder is not None:
                setattr(self, slot, encoders.checked(encoder, slot))
            else:
                setattr(self, slot, encoders.built(slot, fields, freeze_encoders))
        self._config = MultimodalConfig(decoder_config.to_dict(), use_vision, use_audio,
                                        freeze_encoders=freeze_encoders)
        self.apt_config = decoder_config
        d = decoder_config.d_model
        self.fusion = MultimodalFusion(image_dim=self.vision.output_dim if self.vision else None,
                                       audio_dim=self.audio.output_dim if self.audio else None, output_dim=d,
                                       num_heads=decoder_config.num_heads)
        self.nothing = nn.Parameter(torch.zeros(1, 1, d))
        self.tok = nn.Embedding(decoder_config.vocab_size, d)
        self.pos = nn.Embedding(decoder_config.max_seq_len, d)
        self.drop = nn.Dropout(decoder_config.dropout)
        self.blocks = nn.ModuleList(Block(decoder_config, causal=True, cross=True)
                                    for _ in range(decoder_config.num_layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, decoder_config.vocab_size, bias=False)
        for module in (self.fusion, self.tok, self.pos, self.blocks, self.lm_head):
            module.apply(APTLargeModel.init_weights)  # the LM's initialisation, for the same decoder
        nn.init.normal_(self.nothing, std=0.02)
        if decoder_config.tie_embeddings:
            self.lm_head.weight = self.tok.weight
        self.tokenizer = None  # set by from_pretrained / train_multimodal_model; needed to generate text
        self.loaded_from = None  # where from_pretrained found the model (for the message when it had no tokenizer)

    @property
    def config(self) -> MultimodalConfig:
        """What rebuilds this model: each encoder's class and config (``apt_sdk.encoders.encoder_record``) and its
        frozen state as it is now (a checkpoint or ``save_pretrained`` writes it, so the encoders come back, frozen
        or trainable as they were)."""
        self._config.frozen = {slot: bool(encoder.frozen) for slot, encoder in self._encoders()}
        self._config.encoders = {SLOTS[slot]: encoder_record(encoder) for slot, encoder in self._encoders()}
        return self._config

    def _encoders(self) -> list[tuple[str, nn.Module]]:
        return [(slot, encoder) for slot, encoder in (("vision", self.vision), ("audio", self.audio))
                if encoder is not None]

    def freeze_encoders(self, frozen: bool = True) -> MultimodalAPTModel:
        """Freeze every encoder (no gradients, forward under ``no_grad``, eval mode even under ``.train()``)
        or, with ``False``, unfreeze them: their weights then train and follow ``.train()``/``.eval()``. The
        state is saved with the model. Build the optimizer after unfreezing: one built before holds none of
        the encoders' weights."""
        for _, encoder in self._encoders():
            encoder.freeze(frozen)
        return self

    def unfreeze_encoders(self) -> MultimodalAPTModel:
        """``freeze_encoders(False)``."""
        return self.freeze_encoders(False)

    def memory(self, batch_size: int, image: Any = None, audio: Any = None, image_present: torch.Tensor | None = None,
               audio_mask: torch.Tensor | None = None, image_index: torch.Tensor | None = None,
               image_mask: torch.Tensor | None = None,
               audio_present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens the decoder cross-attends to, ``[B, 1 + N, d_model]``, and their mask (True = real).

        :param image_index: ``[B]``, each record's row of ``image`` when records share images (``image`` then
            holds each distinct image once and is encoded once)."""
        memory, mask, index = self._shared_memory(batch_size, image, audio, image_present, audio_mask, image_index,
                                                  image_mask, audio_present)
        return (memory if index is None else memory.index_select(0, index)), mask

    def _features(self, slot: str, media: Any, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One modality's features and their mask, through its encoder."""
        encoder = getattr(self, slot)
        if encoder is None:
            raise ValueError(f"this model was built without {slot} (use_{slot}=False); it cannot take {SLOTS[slot]}")
        return encoders.encode(encoder, media, mask, SLOTS[slot], self.nothing.device)

    def _shared_memory(self, batch_size: int, image: Any, audio: Any, image_present: torch.Tensor | None,
                       audio_mask: torch.Tensor | None, image_index: torch.Tensor | None,
                       image_mask: torch.Tensor | None = None, audio_present: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``memory()`` before it is spread over the rows: ``(memory [M, 1 + N, d], mask [B, 1 + N], index)``,
        where row b reads ``memory[index[b]]`` (``index`` None: M = B). With ``image_index`` and no audio, M
        is the number of distinct images, so each is encoded, projected and turned into keys and values once."""
        device = self.nothing.device
        lists = {name: media for name, media in (("image", image if image_index is None else None), ("audio", audio))
                 if media is not None and not isinstance(media, torch.Tensor)}
        check_rows(batch_size, image_present=image_present, audio_mask=audio_mask, audio_present=audio_present,
                   image_index=image_index, **lists)
        if image_index is not None and image is None:
            raise ValueError("image_index says which row of image each record reads, but no image was given")
        image_features = audio_features = image_tokens = audio_tokens = None
        # raw media are read here, and a clip cut to the audio window warns: its message, not a line of code
        with plain_warnings() if lists else contextlib.nullcontext():
            if image is not None:  # per distinct image with image_index: its presence is per record, below
                image_features, image_tokens = self._features("vision", image, image_mask)
            if audio is not None:
                audio_features, audio_tokens = self._features("audio", audio, audio_mask)
        check_rows(batch_size, image=image_features if image_index is None else None, audio=audio_features)
        visible = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
        if image_features is None and audio_features is None:
            return self.nothing.expand(batch_size, -1, -1), visible, None
        index = None if image_index is None or image_features is None else image_index.to(device)
        if index is not None and audio_features is not None:  # audio is per record: spread the images first
            image_features = image_features[index]
            image_tokens, index = None if image_tokens is None else image_tokens[index], None
        tokens, mask = self.fusion.memory(image_features, audio_features, image_present if index is None else None,
                                          audio_tokens, image_mask=image_tokens, audio_present=audio_present)
        if index is not None:  # per record: a record without an image keeps its image tokens hidden
            mask = mask[index] if image_present is None else mask[index] & image_present.to(device).bool()[:, None]
        nothing = self.nothing.expand(tokens.shape[0], -1, -1)
        return torch.cat([nothing, tokens.to(nothing.dtype)], 1), torch.cat([visible, mask], 1), index

    def forward(self, text_input_ids: torch.Tensor, image: Any = None, audio: Any = None,
                text_attention_mask: torch.Tensor | None = None, image_present: torch.Tensor | None = None,
                audio_mask: torch.Tensor | None = None, image_index: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None, audio_present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]``; position t depends on text tokens <= t and on all of the image and audio.

        :param image: what the image encoder's preprocessor makes, stacked (CLIP: pixel values ``[B, 3, H, W]``),
            with ``image_mask`` when that preprocessor gives a mask; or a list of images. ``image_present [B]``
            marks the records that really have one (the others' inputs are ignored).
        :param audio: what the audio encoder's preprocessor makes (Whisper: log-mel features ``[B, mels, frames]``
            with ``audio_mask [B, frames]``), or a list of clips; ``audio_present [B]`` marks the records that have
            audio (a record with an all-False ``audio_mask`` has none either).
        :param image_index: ``[B]``: ``image`` holds distinct images and record b's is ``image[image_index[b]]``.
        """
        ids = text_input_ids
        check_text(ids, self.apt_config.max_seq_len)
        memory, memory_mask, index = self._shared_memory(ids.shape[0], image, audio, image_present, audio_mask,
                                                         image_index, image_mask, audio_present)
        return self._decode(ids, memory, memory_mask, text_attention_mask, memory_index=index)

    def _decode(self, ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                padding: torch.Tensor | None = None, caches: list[dict] | None = None, start: int = 0,
                memory_index: torch.Tensor | None = None) -> torch.Tensor:
        """``caches`` (one dict per block) keep keys and values between calls; ``ids`` are then the tokens
        from position ``start`` on. Row b reads ``memory[memory_index[b]]`` (all of ``memory`` if None)."""
        x = self.drop(self.tok(ids) + self.pos(torch.arange(start, start + ids.shape[1], device=ids.device)))
        for i, block in enumerate(self.blocks):
            x = block(x, padding=padding, memory=memory, memory_padding=memory_mask,
                      cache=None if caches is None else caches[i], memory_index=memory_index)
        return self.lm_head(self.ln_f(x))

