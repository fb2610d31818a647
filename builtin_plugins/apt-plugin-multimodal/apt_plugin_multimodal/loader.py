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
    """Pad text (``text_attention_mask``), stack images (``image_present``) and audio (``audio_mask``).

    Items holding the same image tensor (``__getitems__`` shares one between records of an image) get
    one row of ``image`` between them and ``image_index [B]``, each record's row in it."""
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
    images = [item["image"] for item in items]
    if any(image is not None for image in images):
        shape = next(image for image in images if image is not None).shape
        rows = {id(image): image for image in images if image is not None}  # one per distinct tensor
        if len(rows) < sum(image is not None for image in images):
            number = {key: i for i, key in enumerate(rows)}
            batch["image"] = torch.stack(list(rows.values()))
            batch["image_index"] = torch.tensor([number[id(image)] if image is not None else 0 for image in images])
        else:
            batch["image"] = torch.stack([image if image is not None else torch.zeros(shape) for image in images])
        batch["image_present"] = torch.tensor([image is not None for image in images])
    clips = [item["audio"] for item in items]
    if any(clip is not None for clip in clips):
        features, mask = next(clip for clip in clips if clip is not None)
        batch["audio"] = torch.stack([c[0] if c is not None else torch.zeros_like(features) for c in clips])
        batch["audio_mask"] = torch.stack([c[1] if c is not None else torch.zeros_like(mask) for c in clips])
    return batch


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
