"""Text generation of ``MultimodalAPTModel``: greedy or sampled, one prompt or many, with a KV cache.

The cache keeps the self-attention keys and values of earlier tokens and the cross-attention ones of the
memory (the image patches and audio frames, projected once). It is exact for autopoietic attention too,
because the refinement of a query row depends only on that row. Past ``max_seq_len`` the window slides,
and each token is then recomputed.
"""

from __future__ import annotations

from typing import Any

import torch

from apt_sdk import UserError

from .checks import check_sampling


class Generation:
    """The generation methods of ``MultimodalAPTModel`` (a mixin: it uses the model's memory and decoder)."""

    @torch.no_grad()
    def generate_from_multimodal(self, text: str, image: Any = None, audio: Any = None, max_length: int = 100,
                                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                                 generator: torch.Generator | None = None, use_cache: bool = True) -> str:
        """The continuation of ``text`` (a prompt) given an image and/or a clip, as text.

        :param image: a PIL image, a path, or what the image encoder's preprocessor makes for one (CLIP: pixel
            values ``[1, 3, H, W]`` of the tower's size).
        :param audio: a path, a 16 kHz waveform, or what the audio encoder's preprocessor makes for one (Whisper:
            features ``[1, mels, frames]``).
        :param max_length: new tokens at most (at least 1); generation also stops at the end-of-text token.
        :param do_sample: sample (with ``temperature`` > 0 and ``top_k``: None or 0 for no limit) instead of
            the most likely token.
        :param use_cache: keep the keys and values of earlier tokens (and of the image and audio) instead of
            recomputing them for every new token; the same tokens, faster (``bench/bench_multimodal.py``).
            Past ``max_seq_len`` tokens the window slides, which needs the recomputation.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a prompt string ('' for none), got {type(text).__name__}")
        images = None if image is None else (image if isinstance(image, torch.Tensor) else [image])
        clips = None if audio is None else (audio if isinstance(audio, torch.Tensor) else [audio])
        return self.generate_batch([text], images, clips, max_length=max_length, do_sample=do_sample,
                                   temperature=temperature, top_k=top_k, generator=generator, use_cache=use_cache)[0]

    @torch.no_grad()
    def generate_batch(self, prompts: list[str], image: Any = None, audio: Any = None,
                       image_present: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None,
                       max_length: int = 100, image_index: torch.Tensor | None = None,
                       image_mask: torch.Tensor | None = None, audio_present: torch.Tensor | None = None,
                       **sampling: Any) -> list[str]:
        """``generate_from_multimodal`` for many prompts at once: ``image``/``audio`` as ``forward`` takes
        them (one per prompt, or distinct ones with ``image_index``). Prompts of the same length in tokens
        are decoded together, so no row is padded; ``sampling`` takes ``do_sample``, ``temperature``,
        ``top_k``, ``generator``, ``use_cache``."""
        unknown = set(sampling) - {"do_sample", "temperature", "top_k", "generator", "use_cache"}
        if unknown:
            raise TypeError(f"generate_batch() got unexpected arguments: {', '.join(sorted(unknown))}")
        check_sampling(max_length, sampling.get("do_sample", False), sampling.get("temperature", 1.0),
                       sampling.get("top_k"))
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r:.60}")
        if self.tokenizer is None:
            raise UserError(self._no_tokenizer())
        was_training = self.training
        self.eval()
        tokenizer = self.tokenizer
        encoded = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
        memory, memory_mask, index = self._shared_memory(len(prompts), image, audio, image_present, audio_mask,
                                                         image_index, image_mask, audio_present)
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

    def _no_tokenizer(self) -> str:
        source = getattr(self, "loaded_from", None)
        if source is None:
            return ("this model has no tokenizer: set model.tokenizer (from_pretrained and train_multimodal_model "
                    "set it)")
        return (f"this model has no tokenizer: from_pretrained found none with {source} (a checkpoint's is the "
                "tokenizer/ folder of its run, written with the run's first regular checkpoint); set "
                "model.tokenizer = apt_plugin_lm.tokenization.load_tokenizer(<that folder>)")

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
                logits = logits / temperature
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
