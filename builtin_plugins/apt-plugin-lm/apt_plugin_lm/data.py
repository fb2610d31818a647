"""Text data: one file, a folder of files, a list of strings, or the embedded stdlib corpus; a
tokenizer trained on it; a contiguous train/val split; batches of packed fixed-length blocks.

Packing (the default for files and corpora) joins every document, separated by eos, into one token
stream; the last ``val_fraction`` of the stream is validation (nanoGPT's protocol). An epoch visits
every training block once, in an order and with a start offset drawn from (seed, epoch), so two
runs with the same seed see the same batches. Under DDP each rank reads its share of every global
batch (``batch_size`` is per rank), through ``DistributedSampler`` with epoch seeding. Without
packing (the default for a list of strings) each text is its own sample, padded, and its padding is
ignored by the loss and the attention.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from apt_sdk import OptionError

from .corpus import stdlib_docstrings
from .tokenization import Tokenizer, build_tokenizer

IGNORE_INDEX = -100
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}


def read_texts(path: str | Path) -> list[str]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise OptionError("path", f"folder {path} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
    else:
        files = [path]
    texts = []
    for file in files:
        try:
            texts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise OptionError("path", f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return texts


class TextDataModule:
    def __init__(self, texts: list[str], tokenizer: Tokenizer, *, block_size: int, batch_size: int,
                 val_fraction: float, packing: bool, seed: int) -> None:
        self.tokenizer, self.batch_size, self.packing, self.seed = tokenizer, batch_size, packing, seed
        self.rank, self.world_size = 0, 1
        self.pad_id = tokenizer.pad_id
        if packing:
            stream: list[int] = []
            for text in texts:
                stream.extend(tokenizer.encode(text))
                stream.append(tokenizer.eos_id)
            n_val = int(len(stream) * val_fraction)
            self.train_ids = torch.tensor(stream[: len(stream) - n_val], dtype=torch.long)
            self.val_ids = torch.tensor(stream[len(stream) - n_val:], dtype=torch.long)
            if len(self.train_ids) < 2 * (block_size + 1):
                raise OptionError("block_size", f"the corpus is too small: {len(self.train_ids)} training tokens for "
                                f"block_size {block_size}; lower block_size or add text")
            self.block_size = block_size
            self.val_block = min(block_size, max(len(self.val_ids) - 1, 0))
            counts = Counter(self.train_ids.tolist())
        else:
            docs = [[tokenizer.bos_id, *tokenizer.encode(t), tokenizer.eos_id] for t in texts if t]
            if not docs:
                raise OptionError("texts", "no non-empty text given")
            n_val = max(1, round(len(docs) * val_fraction)) if len(docs) > 1 else 0
            self.train_docs = docs[: len(docs) - n_val]
            self.val_docs = docs[len(docs) - n_val:] or docs  # one text: validate on it (said in the log)
            self.block_size = min(block_size, max(len(d) for d in docs) - 1)
            self.val_block = self.block_size
            counts = Counter(i for d in self.train_docs for i in d[1:])
        total = sum(counts.values())
        self.unigram_entropy = -sum(c / total * math.log(c / total) for c in counts.values())

    # -- batches ---------------------------------------------------------------------------------
    def configure_distributed(self, rank: int, world_size: int) -> None:
        """Each rank then reads its share of every global batch (batch_size is per rank)."""
        self.rank, self.world_size = rank, world_size

    def _train_samples(self, epoch: int) -> torch.Tensor | list[list[int]]:
        if self.packing:
            offset = random.Random(self.seed * 100_003 + epoch).randrange(self.block_size)  # new block edges
            return self.train_ids[offset:].unfold(0, self.block_size + 1, self.block_size)
        return self.train_docs

    def _order(self, epoch: int, n: int) -> list[int]:
        # DistributedSampler seeds its permutation with (seed + epoch); rank r takes every world_size-th
        # index, so the union of the ranks' batch i is exactly batch i of a one-process run
        sampler = DistributedSampler(range(n), num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                     seed=self.seed, drop_last=self.world_size > 1)
        sampler.set_epoch(epoch)
        return list(sampler)

    def steps_per_epoch(self, epoch: int = 0) -> int:
        """Batches this rank reads in ``epoch``."""
        return math.ceil(len(self._order(epoch, len(self._train_samples(epoch)))) / self.batch_size)

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """This rank's batches of ``epoch`` from batch number ``start`` on (to resume mid-epoch)."""
        samples = self._train_samples(epoch)
        order = self._order(epoch, len(samples))
        for first in range(start * self.batch_size, len(order), self.batch_size):
            yield self._batch(samples, order[first: first + self.batch_size], self.block_size)

    def val_batches(self) -> Iterator[dict]:
        if self.packing:
            if self.val_block < 1:
                return
            samples = self.val_ids.unfold(0, self.val_block + 1, self.val_block)
        else:
            samples = self.val_docs
        starts = range(0, len(samples), self.batch_size)
        for start in starts[self.rank::self.world_size]:  # each rank a share; the trainer sums them
            yield self._batch(samples, list(range(start, min(start + self.batch_size, len(samples)))),
                              self.val_block)

    def _batch(self, samples, index: list[int], block: int) -> dict:
        if self.packing:
            chunk = samples[index]
            return {"input_ids": chunk[:, :-1].contiguous(), "labels": chunk[:, 1:].contiguous()}
        rows = [samples[i][: block + 1] for i in index]
        width = max(len(r) for r in rows) - 1
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row) - 1] = torch.tensor(row[:-1])
            labels[i, : len(row) - 1] = torch.tensor(row[1:])
        return {"input_ids": ids, "attention_mask": labels != IGNORE_INDEX, "labels": labels}


def build_text_data(options: dict, seed: int) -> TextDataModule:
    sources = [k for k in ("path", "texts", "corpus") if options.get(k)]
    if len(sources) != 1:
        raise OptionError(sources[-1] if sources else "corpus",
                          f"give exactly one of path, texts or corpus (got {', '.join(sources) or 'none'})")
    if options.get("path"):
        texts = read_texts(options["path"])
    elif options.get("texts"):
        texts = [str(t) for t in options["texts"]]
    else:
        texts = stdlib_docstrings(options["max_chars"])
    if options["max_chars"]:
        texts = _truncate(texts, options["max_chars"])
    packing = options["packing"] if options.get("packing") is not None else not options.get("texts")
    try:
        tokenizer = build_tokenizer(options["tokenizer"], texts, options["bpe_vocab_size"])
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise OptionError("tokenizer", f"cannot load {options['tokenizer']!r}: {exc}") from None
    return TextDataModule(texts, tokenizer, block_size=options["block_size"], batch_size=options["batch_size"],
                          val_fraction=options["val_fraction"], packing=packing, seed=seed)


def _truncate(texts: list[str], max_chars: int) -> list[str]:
    kept, total = [], 0
    for text in texts:
        if total >= max_chars:
            break
        kept.append(text[: max_chars - total])
        total += len(kept[-1])
    return kept
