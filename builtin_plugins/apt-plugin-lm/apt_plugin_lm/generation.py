"""Generation for the APT decoder: the choice of the next token, a batch of sequences decoded together
with a KV cache, and ``APTLargeModel.generate`` built on both.

``KVBatch`` holds sequences of different lengths, each with its own positions: every block's keys and
values are kept left-padded, so the newest token of every row is the last column and one decode step
appends one column for all rows. A padded key is masked for every query (the attention's key padding
mask), so padding changes no result: in autopoietic attention the masked keys get -inf after the
refinement, and the refinement's entropy weight uses the masked probabilities and counts only the keys
a row can see. Rows join (``extend``) and leave (``keep``) between steps, which is what a server's
continuous batching needs; ``generate`` is the case of one batch of equal-length prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Decoder:
    """The parts of an APT decoder that generation runs: token and position embeddings, the blocks
    (``apt_plugin_lm.model.Block``), the final norm and the head. ``Decoder.of(model)`` finds them in an
    ``APTLargeModel`` (``decoder``) or a ``MultimodalAPTModel`` (``blocks``)."""

    tok: nn.Embedding
    pos: nn.Embedding
    blocks: Sequence[nn.Module]
    ln_f: nn.Module
    lm_head: nn.Module

    @classmethod
    def of(cls, model: nn.Module) -> Decoder:
        blocks = getattr(model, "decoder", None)
        blocks = blocks if isinstance(blocks, nn.ModuleList) else getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(f"{type(model).__name__} has no APT decoder blocks (.decoder or .blocks)")
        return cls(model.tok, model.pos, blocks, model.ln_f, model.lm_head)

    @property
    def context(self) -> int:
        """The most tokens a sequence may hold (the position table's size, ``max_seq_len``)."""
        return self.pos.num_embeddings

    def run(self, ids: torch.Tensor, positions: torch.Tensor, padding: torch.Tensor | None,
            memory: torch.Tensor | None, memory_mask: torch.Tensor | None, caches: list[dict]) -> torch.Tensor:
        """Logits ``[B, V]`` of each row's last token; the blocks keep their keys and values in ``caches``."""
        x = self.tok(ids) + self.pos(positions)
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block(x, padding=padding, memory=memory, memory_padding=memory_mask, cache=cache)
        return self.lm_head(self.ln_f(x[:, -1])).float()


class KVBatch:
    """Sequences decoded together, each at its own length, with one KV cache per block.

    ``prefill`` starts a batch from prompts (and, for a decoder with cross-attention, each row's memory);
    ``step`` feeds each row its next token; ``extend`` adds another batch's rows; ``keep`` drops rows.
    Each returns or leaves the logits of every row's next token, as ``float32`` ``[B, V]``."""

    def __init__(self, decoder: Decoder, caches: list[dict], mask: torch.Tensor, lengths: torch.Tensor,
                 memory_mask: torch.Tensor | None) -> None:
        self.decoder, self.caches, self.mask, self.lengths = decoder, caches, mask, lengths
        self.memory_mask = memory_mask

    def __len__(self) -> int:
        return self.mask.shape[0]

    @classmethod
    @torch.no_grad()
    def prefill(cls, decoder: Decoder, prompts: Sequence[Sequence[int]] | torch.Tensor,
                memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> tuple[KVBatch, torch.Tensor]:
        """A batch of ``prompts`` (token id lists, or ``[B, T]``) and the logits after each.

        :param memory: ``[B, M, d_model]`` that the blocks cross-attend to, with ``memory_mask [B, M]``
            (True = real); the keys and values of the memory are computed here, once."""
        device = decoder.tok.weight.device
        if isinstance(prompts, torch.Tensor):
            ids = prompts.to(device)
            mask = torch.ones(ids.shape, dtype=torch.bool, device=device)
        else:
            width = max(len(p) for p in prompts)
            ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
            mask = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
            for row, prompt in enumerate(prompts):
                if prompt:
                    ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), device=device)
                    mask[row, width - len(prompt):] = True
        lengths = mask.sum(1)
        if int(lengths.min()) < 1:
            raise ValueError("every prompt needs at least one token")
        if ids.shape[1] > decoder.context:
            raise ValueError(f"a prompt of {ids.shape[1]} tokens exceeds max_seq_len {decoder.context}")
        # a row's first real token is at position 0; its left padding repeats position 0 and is masked
        positions = (torch.arange(ids.shape[1], device=device) - (ids.shape[1] - lengths)[:, None]).clamp(min=0)
        caches: list[dict] = [{} for _ in decoder.blocks]
        batch = cls(decoder, caches, mask, lengths, memory_mask)
        logits = decoder.run(ids, positions, batch._padding(), memory, memory_mask, caches)
        return batch, logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens [B]`` (one per row, in row order) and return the logits after them."""
        if int(self.lengths.max()) >= self.decoder.context:
            raise ValueError(f"a row is already {int(self.lengths.max())} tokens long, the model's max_seq_len")
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], 1)
        tokens = tokens.to(self.mask.device).reshape(-1, 1)
        logits = self.decoder.run(tokens, self.lengths[:, None], self._padding(), None, self.memory_mask,
                                  self.caches)
        self.lengths = self.lengths + 1
        return logits

    def extend(self, other: KVBatch) -> None:
        """Add ``other``'s rows after these: keys left-padded to the longer of the two, memories right-padded."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([_pad(self.mask, width, 1, left=True), _pad(other.mask, width, 1, left=True)])
        self.lengths = torch.cat([self.lengths, other.lengths])
        span = None  # without a memory mask every row's memory is whole, and of one length
        if (self.memory_mask is None) != (other.memory_mask is None):
            raise ValueError("rows with a memory mask and rows without one cannot share a batch")
        if self.memory_mask is not None:
            span = max(self.memory_mask.shape[1], other.memory_mask.shape[1])
            self.memory_mask = torch.cat([_pad(self.memory_mask, span, 1), _pad(other.memory_mask, span, 1)])
        for mine, theirs in zip(self.caches, other.caches, strict=True):
            for part, tensors in mine.items():
                for key, value in tensors.items():
                    size = width if part == "self" else span or value.shape[2]
                    left = part == "self"
                    tensors[key] = torch.cat([_pad(value, size, 2, left), _pad(theirs[part][key], size, 2, left)])

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order), and drop the key columns that are now padding for all of them."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.mask.device)
        self.mask, self.lengths = self.mask.index_select(0, index), self.lengths.index_select(0, index)
        start = self.mask.shape[1] - int(self.lengths.max()) if len(index) else self.mask.shape[1]
        self.mask = self.mask[:, start:]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
        for cache in self.caches:
            for part, tensors in cache.items():
                for key, value in tensors.items():
                    value = value.index_select(0, index)
                    tensors[key] = value[:, :, start:] if part == "self" else value

    def _padding(self) -> torch.Tensor | None:
        # None when no row is padded: the blocks then take the same path as a lone sequence
        return None if bool(self.mask.all()) else self.mask


def _pad(tensor: torch.Tensor, size: int, dim: int, left: bool = False) -> torch.Tensor:
    """``tensor`` padded with zeros (False for a mask) along ``dim`` to ``size``."""
    missing = size - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    filler = tensor.new_zeros(shape)
    return torch.cat([filler, tensor] if left else [tensor, filler], dim)


def choose(logits: torch.Tensor, do_sample: bool = True, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row ``[B, 1]`` from logits ``[B, V]``: the most likely, or a sample after
    the temperature, then top-k, then top-p (the most likely token is always kept)."""
    if not do_sample:
        return logits.argmax(-1, keepdim=True)
    logits = logits / max(temperature, 1e-6)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the first token always
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_length: int = 100, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             do_sample: bool = True, eos_token_id: int | None = None, src_tokens: torch.Tensor | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """``APTLargeModel.generate``: extend ``input_ids [B, T]`` to at most ``max_length`` tokens in total.

    With ``use_cache`` the keys and values of earlier tokens (and of ``src_tokens``' encoding) are kept
    instead of recomputed for every new token: the same tokens, faster. Past ``max_seq_len`` tokens the
    window slides, which changes every position, so from there each token recomputes the window, as
    without the cache. A model sharded by FSDP is always called whole (its forward gathers its weights)."""
    was_training = model.training
    model.eval()
    limit = model.config.max_seq_len
    if model.encoder and src_tokens is None:
        raise ValueError("this APT model is an encoder-decoder: pass src_tokens")
    use_cache = use_cache and not _sharded(model)
    memory = model.encode(src_tokens) if use_cache and src_tokens is not None else None
    ids, batch = input_ids, None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    while ids.shape[1] < max_length and not finished.all():
        if use_cache and ids.shape[1] <= limit:
            if batch is None:
                batch, logits = KVBatch.prefill(Decoder.of(model), ids, memory)
            else:
                logits = batch.step(ids[:, -1])
        else:
            logits = model(ids[:, -limit:], src_tokens=src_tokens)[:, -1, :].float()
        if repetition_penalty != 1.0:
            seen = torch.gather(logits, 1, ids)
            seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
            logits.scatter_(1, ids, seen)
        next_id = choose(logits, do_sample, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            next_id = next_id.masked_fill(finished[:, None], eos_token_id)
            finished |= next_id.squeeze(1) == eos_token_id
        ids = torch.cat([ids, next_id], dim=1)
    model.train(was_training)
    return ids


def _sharded(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without distributed support
        return False
    return isinstance(model, FSDPModule)
