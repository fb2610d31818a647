"""Batches: ``multimodal_collate_fn`` pads and stacks a batch's items, ``create_multimodal_dataloader`` makes the
DataLoader whose workers read and preprocess the media (``MultimodalDataset.__getitems__``)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from apt_sdk import UserError, loader_worker_init

IGNORE_INDEX = -100


class Failed:
    """A batch a DataLoader worker could not read: the UserError's message, raised in the training process.
    Raised in the worker, it reached the user as the worker's whole "Original Traceback"."""

    def __init__(self, message: str) -> None:
        self.message = message


def multimodal_collate_fn(items: list[dict], pad_id: int = 0) -> dict:
    """Pad text (``text_attention_mask``) and stack each modality's preprocessed rows: ``image`` (with
    ``image_mask`` when its preprocessor gives a mask) and ``image_present``; ``audio``, ``audio_mask`` (Whisper's
    frame mask) and ``audio_present``. A record without the modality holds zeros there, marked absent.

    Items holding the same image row (``__getitems__`` shares one between records of an image) get one row of
    ``image`` between them and ``image_index [B]``, each record's row in it."""
    if items and isinstance(items[0], Failed):
        return items[0]  # for the loader to raise
    width = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    real = torch.zeros((len(items), width), dtype=torch.bool)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids[row, :n], labels[row, :n] = torch.tensor(item["input_ids"]), torch.tensor(item["labels"])
        real[row, :n] = True
    batch = {"text_input_ids": ids, "text_attention_mask": real, "labels": labels}
    for name in ("image", "audio"):
        media = [item[name] for item in items]
        if all(row is None for row in media):
            continue
        rows = {id(row): row for row in media if row is not None}  # one per distinct row (shared images)
        if name == "image" and len(rows) < sum(row is not None for row in media):
            number = {key: i for i, key in enumerate(rows)}
            batch["image_index"] = torch.tensor([number[id(row)] if row is not None else 0 for row in media])
            media = list(rows.values())
        inputs, mask = _stacked(media)
        batch[name] = inputs
        if mask is not None:
            batch[f"{name}_mask"] = mask
        batch[f"{name}_present"] = torch.tensor([item[name] is not None for item in items])
    return batch


def _stacked(rows: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, mask)`` of rows that are tensors or ``(inputs, mask)`` tuples; a missing row is zeros (an all-False
    mask)."""
    template = next(row for row in rows if row is not None)
    parts = template if isinstance(template, tuple) else (template,)
    stacked = [torch.stack([(row if isinstance(row, tuple) else (row,))[i] if row is not None
                            else torch.zeros_like(part) for row in rows]) for i, part in enumerate(parts)]
    return stacked[0], stacked[1] if len(stacked) > 1 else None


class MultimodalLoader(DataLoader):
    """A DataLoader that raises a record its worker could not read as the one-line UserError it was."""

    def __iter__(self) -> Iterator[dict]:
        return _Raising(super().__iter__())  # at once: start_loader holds signals while the workers start


class _Raising:
    def __init__(self, batches: Iterator) -> None:
        self.batches = batches

    def __iter__(self) -> _Raising:
        return self

    def __next__(self) -> dict:
        batch = next(self.batches)
        if isinstance(batch, Failed):
            raise UserError(batch.message)
        return batch


def create_multimodal_dataloader(dataset: Dataset, batch_size: int = 8, shuffle: bool = True,
                                 num_workers: int = 0, **kwargs: Any) -> DataLoader:
    """A DataLoader whose workers read and preprocess the media; batches as ``multimodal_collate_fn`` makes them.
    The workers leave the caller's process group (``apt_sdk.loader_worker_init``), so Ctrl-C or a SIGTERM to
    the group reaches only the training process, which finishes its step and saves. A record a worker cannot
    read (its file deleted since) is raised here as the ``UserError`` naming it."""
    return MultimodalLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=partial(multimodal_collate_fn, pad_id=dataset.tokenizer.pad_id),
                      persistent_workers=num_workers > 0,
                      worker_init_fn=loader_worker_init(kwargs.pop("worker_init_fn", None)), **kwargs)
