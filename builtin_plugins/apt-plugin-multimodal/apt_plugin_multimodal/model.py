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

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apt_plugin_lm.model import APTConfig, APTLargeModel, Block
from apt_sdk import UserError

from .fusion import MultimodalFusion

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class MultimodalConfig:
    """Everything needed to rebuild the model: the decoder, which encoders, and their shapes."""

    apt: dict
    use_vision: bool = True
    use_audio: bool = False
    vision: dict | None = None  # CLIPVisionConfig fields ("size" preset or full fields)
    audio: dict | None = None  # WhisperConfig fields and max_seconds
    freeze_encoders: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MultimodalConfig:
        return cls(**data)


class MultimodalAPTModel(nn.Module):
    """``forward(text_input_ids, image=None, audio=None, text_attention_mask=None, ...) -> logits [B, T, V]``.

    :param apt_config: the decoder (an ``APTConfig`` or its dict); ``num_encoder_layers`` must be 0.
    :param use_vision: build a CLIP image tower (``vision_encoder`` or one from ``vision_config``).
    :param use_audio: build a Whisper audio encoder (``audio_encoder`` or one from ``audio_config``).
    :param vision_encoder: a ready ``VisionEncoder`` (weights loaded from a folder, say).
    :param audio_encoder: a ready ``AudioEncoder``.
    :param vision_config: fields for a new ``VisionEncoder``: ``{"size": "small", "image_size": 64, ...}``
        (``"stem": "conv"`` for a convolutional stem).
    :param audio_config: fields for a new ``AudioEncoder``: ``{"size": "small", "max_seconds": 1.0, ...}``.
    :param freeze_encoders: freeze the encoders (their projections into the decoder always train).
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
        self.vision = self.audio = None
        vision_fields, audio_fields = None, None
        if use_vision:
            self.vision, vision_fields = _vision(vision_encoder, vision_config, freeze_encoders)
        if use_audio:
            self.audio, audio_fields = _audio(audio_encoder, audio_config, freeze_encoders)
        self.config = MultimodalConfig(decoder_config.to_dict(), use_vision, use_audio, vision_fields, audio_fields,
                                       freeze_encoders)
        self.apt_config = decoder_config
        d = decoder_config.d_model
        self.fusion = MultimodalFusion(image_dim=self.vision.vision_dim if self.vision else None,
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
            module.apply(APTLargeModel._init)  # the LM's initialisation, for the same decoder
        nn.init.normal_(self.nothing, std=0.02)
        if decoder_config.tie_embeddings:
            self.lm_head.weight = self.tok.weight
        self.tokenizer = None  # set by from_pretrained / train_multimodal_model; needed to generate text

    def memory(self, batch_size: int, image: Any = None, audio: Any = None, image_present: torch.Tensor | None = None,
               audio_mask: torch.Tensor | None = None,
               image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens the decoder cross-attends to, ``[B, 1 + N, d_model]``, and their mask (True = real).

        :param image_index: ``[B]``, each record's row of ``image`` when records share images (``image`` then
            holds each distinct image once and is encoded once)."""
        memory, mask, index = self._shared_memory(batch_size, image, audio, image_present, audio_mask, image_index)
        return (memory if index is None else memory.index_select(0, index)), mask

    def _shared_memory(self, batch_size: int, image: Any, audio: Any, image_present: torch.Tensor | None,
                       audio_mask: torch.Tensor | None, image_index: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``memory()`` before it is spread over the rows: ``(memory [M, 1 + N, d], mask [B, 1 + N], index)``,
        where row b reads ``memory[index[b]]`` (``index`` None: M = B). With ``image_index`` and no audio, M
        is the number of distinct images, so each is encoded, projected and turned into keys and values once."""
        device = self.nothing.device
        image_features = audio_features = None
        if image is not None:
            if self.vision is None:
                raise ValueError("this model was built without vision (use_vision=False); it cannot take an image")
            image_features = self.vision.patch_features(image)
        if audio is not None:
            if self.audio is None:
                raise ValueError("this model was built without audio (use_audio=False); it cannot take audio")
            if isinstance(audio, torch.Tensor):
                audio_features = self.audio(audio)
            else:
                audio_features, audio_mask = self.audio.encode_batch(audio)
        visible = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
        if image_features is None and audio_features is None:
            return self.nothing.expand(batch_size, -1, -1), visible, None
        index = None if image_index is None or image_features is None else image_index.to(device)
        if index is not None and audio_features is not None:  # audio is per record: spread the images first
            image_features, index = image_features[index], None
        present = None if image_present is None else image_present.to(device).bool()
        tokens, mask = self.fusion.memory(image_features, audio_features, present if index is None else None,
                                          None if audio_mask is None else audio_mask.to(device))
        if index is not None:  # per record: a record without an image keeps its image tokens hidden
            mask = mask[index] if present is None else mask[index] & present[:, None]
        nothing = self.nothing.expand(tokens.shape[0], -1, -1)
        return torch.cat([nothing, tokens.to(nothing.dtype)], 1), torch.cat([visible, mask], 1), index

    def forward(self, text_input_ids: torch.Tensor, image: Any = None, audio: Any = None,
                text_attention_mask: torch.Tensor | None = None, image_present: torch.Tensor | None = None,
                audio_mask: torch.Tensor | None = None, image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]``; position t depends on text tokens <= t and on all of the image and audio.

        :param image: pixel values ``[B, 3, H, W]`` or a list of images; ``image_present [B]`` marks the
            records that really have one (the others' pixels are ignored).
        :param audio: log-mel features ``[B, mels, frames]`` with ``audio_mask [B, frames]``, or a list of
            clips; a record without audio has an all-False mask.
        :param image_index: ``[B]``: ``image`` holds distinct images and record b's is ``image[image_index[b]]``.
        """
        ids = text_input_ids
        if ids.shape[1] > self.apt_config.max_seq_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_seq_len {self.apt_config.max_seq_len}")
        memory, memory_mask, index = self._shared_memory(ids.shape[0], image, audio, image_present, audio_mask,
                                                         image_index)
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

    @torch.no_grad()
    def generate_from_multimodal(self, text: str, image: Any = None, audio: Any = None, max_length: int = 100,
                                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                                 generator: torch.Generator | None = None, use_cache: bool = True) -> str:
        """The continuation of ``text`` (a prompt) given an image and/or a clip, as text.

        :param image: a PIL image, a path, or pixel values ``[1, 3, H, W]``.
        :param audio: a path, a 16 kHz waveform, or features ``[1, mels, frames]``.
        :param max_length: new tokens at most; generation also stops at the end-of-text token.
        :param do_sample: sample (with ``temperature`` and ``top_k``) instead of the most likely token.
        :param use_cache: keep the keys and values of earlier tokens (and of the image and audio) instead of
            recomputing them for every new token; the same tokens, faster (``bench/bench_multimodal.py``).
            Past ``max_seq_len`` tokens the window slides, which needs the recomputation.
        """
        images = None if image is None else (image if isinstance(image, torch.Tensor) else [image])
        clips = None if audio is None else (audio if isinstance(audio, torch.Tensor) else [audio])
        return self.generate_batch([text], images, clips, max_length=max_length, do_sample=do_sample,
                                   temperature=temperature, top_k=top_k, generator=generator, use_cache=use_cache)[0]

    @torch.no_grad()
    def generate_batch(self, prompts: list[str], image: Any = None, audio: Any = None,
                       image_present: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None,
                       max_length: int = 100, image_index: torch.Tensor | None = None, **sampling: Any) -> list[str]:
        """``generate_from_multimodal`` for many prompts at once: ``image``/``audio`` as ``forward`` takes
        them (one per prompt, or distinct ones with ``image_index``). Prompts of the same length in tokens
        are decoded together, so no row is padded; ``sampling`` takes ``do_sample``, ``temperature``,
        ``top_k``, ``generator``, ``use_cache``."""
        if self.tokenizer is None:
            raise UserError("this model has no tokenizer: load it with from_pretrained, or set model.tokenizer")
        was_training = self.training
        self.eval()
        tokenizer = self.tokenizer
        encoded = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
        memory, memory_mask, index = self._shared_memory(len(prompts), image, audio, image_present, audio_mask,
                                                         image_index)
        answers: list[str] = [""] * len(prompts)
        for length in sorted({len(ids) for ids in encoded}):
            rows = [i for i, ids in enumerate(encoded) if len(ids) == length]
            ids = torch.tensor([encoded[i] for i in rows], device=memory.device)
            if index is None:
                new = self._generate(ids, memory[rows], memory_mask[rows], max_length, **sampling)
            else:
                new = self._generate(ids, memory, memory_mask[rows], max_length, memory_index=index[rows], **sampling)
            for i, tokens in zip(rows, new, strict=True):
                answers[i] = tokenizer.decode(tokens)
        self.train(was_training)
        return answers

    def _generate(self, ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor, max_length: int,
                  do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                  generator: torch.Generator | None = None, use_cache: bool = True,
                  memory_index: torch.Tensor | None = None) -> list[list[int]]:
        """New tokens of each row, up to its end-of-text token."""
        eos, limit = self.tokenizer.eos_id, self.apt_config.max_seq_len
        caches: list[dict] | None = [{} for _ in self.blocks] if use_cache and ids.shape[1] <= limit else None
        done = 0  # tokens already in the caches
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        new: list[torch.Tensor] = []
        for _ in range(max_length):
            if caches is not None and ids.shape[1] <= limit:
                logits = self._decode(ids[:, done:], memory, memory_mask, caches=caches, start=done,
                                      memory_index=memory_index)[:, -1].float()
                done = ids.shape[1]
            else:
                logits = self._decode(ids[:, -limit:], memory, memory_mask, memory_index=memory_index)[:, -1].float()
            if do_sample:
                logits = logits / max(temperature, 1e-6)
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            else:
                next_id = logits.argmax(-1, keepdim=True)
            finished |= next_id[:, 0] == eos
            new.append(next_id[:, 0].masked_fill(finished, eos))
            if bool(finished.all()):
                break
            ids = torch.cat([ids, next_id], dim=1)
        rows = torch.stack(new, 1).tolist() if new else [[] for _ in range(ids.shape[0])]
        return [row[:row.index(eos)] if eos in row else row for row in rows]

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` (decoder, encoders' configs), ``model.safetensors`` (all weights, encoders
        included) and, when the model has one, ``tokenizer/``."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps({"multimodal": self.config.to_dict()}, indent=2))
        save_model(self, str(directory / WEIGHTS_FILE))
        if self.tokenizer is not None:
            self.tokenizer.save(directory / "tokenizer")

    @classmethod
    def from_config(cls, config: MultimodalConfig | dict) -> MultimodalAPTModel:
        """A model of the saved shape with fresh weights (the encoders rebuilt from their configs)."""
        config = config if isinstance(config, MultimodalConfig) else MultimodalConfig.from_dict(config)
        vision = audio = None
        if config.use_vision:
            from transformers import CLIPVisionConfig

            from apt_plugin_vision import VisionEncoder

            vision = VisionEncoder(config=CLIPVisionConfig.from_dict(config.vision),
                                   freeze_encoder=config.freeze_encoders)
        if config.use_audio:
            from transformers import WhisperConfig

            from apt_plugin_audio import AudioEncoder

            fields = dict(config.audio)
            seconds = fields.pop("max_seconds")
            audio = AudioEncoder(config=WhisperConfig.from_dict(fields), max_seconds=seconds,
                                 freeze_encoder=config.freeze_encoders)
        return cls(config.apt, config.use_vision, config.use_audio, vision, audio,
                   freeze_encoders=config.freeze_encoders)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str = "cpu") -> MultimodalAPTModel:
        """Load a ``save_pretrained`` folder, a run folder (its exported ``model/``, else its newest
        checkpoint), or a trainer checkpoint file."""
        path = Path(path)
        if path.is_dir() and not (path / CONFIG_FILE).exists():
            exported = path / "model"
            checkpoints = sorted((path / "checkpoints").glob("*.pt"), key=lambda p: p.stat().st_mtime)
            if (exported / CONFIG_FILE).exists():
                path = exported
            elif checkpoints:
                path = checkpoints[-1]
            else:
                raise UserError(f"{path} holds no saved multimodal model (config.json), exported model/ or "
                                f"checkpoints/*.pt")
        if path.is_file():
            return _from_checkpoint(cls, path, map_location)
        if not path.exists():
            raise UserError(f"{path}: no such folder or checkpoint file")
        from safetensors.torch import load_model

        saved = json.loads((path / CONFIG_FILE).read_text())
        if "multimodal" not in saved:
            raise UserError(f"{path / CONFIG_FILE} is not a multimodal APT model's config (no 'multimodal' key)")
        model = cls.from_config(saved["multimodal"])
        load_model(model, str(path / WEIGHTS_FILE), device=map_location)
        if (path / "tokenizer").is_dir():
            from apt_plugin_lm.tokenization import load_tokenizer

            model.tokenizer = load_tokenizer(path / "tokenizer")
        return model


def _from_checkpoint(cls, path: Path, map_location: str) -> MultimodalAPTModel:
    state = torch.load(path, map_location=map_location, weights_only=True)  # tensors and plain data only
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict) or "apt" not in config:
        raise UserError(f"{path} is not a checkpoint of a multimodal APT model (its config has no 'apt' decoder)")
    model = cls.from_config(config)
    model.load_state_dict(state["model_state_dict"])
    tokenizer_dir = path.parent.parent / "tokenizer"
    if tokenizer_dir.is_dir():
        from apt_plugin_lm.tokenization import load_tokenizer

        model.tokenizer = load_tokenizer(tokenizer_dir)
    return model


def _vision(encoder: nn.Module | None, fields: dict | None, freeze: bool) -> tuple[nn.Module, dict]:
    from apt_plugin_vision import VisionEncoder

    if encoder is None:
        fields = dict(fields or {"size": "tiny"})
        size, stem = fields.pop("size", "tiny"), fields.pop("stem", None)
        encoder = VisionEncoder(size=size, config=fields or None, freeze_encoder=freeze, stem=stem)
    return encoder, encoder.model.config.to_dict()


def _audio(encoder: nn.Module | None, fields: dict | None, freeze: bool) -> tuple[nn.Module, dict]:
    from apt_plugin_audio import AudioEncoder

    if encoder is None:
        fields = dict(fields or {"size": "tiny"})
        size, seconds = fields.pop("size", "tiny"), fields.pop("max_seconds", 1.0)
        encoder = AudioEncoder(size=size, config=fields or None, max_seconds=seconds, freeze_encoder=freeze)
    return encoder, {**encoder.encoder.config.to_dict(), "max_seconds": encoder.max_seconds}
