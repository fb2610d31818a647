"""The ``multimodal`` data component: manifests as the kernel's DataModule, so the kernel's trainer
(checkpoints, exact resume, accumulation, AMP, DDP, callbacks) trains the multimodal model unchanged.

Batches come from a DataLoader whose workers read and preprocess the media; the order of an epoch is
drawn from (seed, epoch) and split across ranks as the text data does, so a resumed run continues
with exactly the batches it would have seen. With ``group_by_image`` the draw is of images, each
followed by all its records: a batch of many questions about few images reads and encodes each image
once (Sort-of-CLEVR's 36 questions per image make that 36 times fewer images to encode).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from apt_sdk import OptionError, UserError, start_loader

from .dataset import MultimodalDataset, create_multimodal_dataloader
from .records import read_records
from .run_tokenizer import run_tokenizer
from .splits import check_modalities


class MultimodalDataModule:
    """The ``multimodal`` data: ``options`` as the manifest declares them. ``context`` (the kernel's
    ``BuildContext``) says whether the run resumes, whose saved tokenizer it then keeps; the model's factory
    hands over the encoders it uses (``use_encoders``), whose own preprocessing the batches then get."""

    def __init__(self, options: dict, seed: int, report_error: Callable[[dict], None] | None = None,
                 context: Any = None):
        from apt_plugin_vision import ImagePreprocessor

        self.seed, self.rank, self.world_size = seed, 0, 1
        self.batch_size, self.num_workers = options["batch_size"], options["num_workers"]
        self.image_size, self.max_audio_seconds = options["image_size"], options["max_audio_seconds"]
        self.block_size = options["max_length"]
        self.group_by_image = options.get("group_by_image", False)
        sources = {}
        for split in ("train", "val", "test"):
            manifest, records = options.get(f"{split}_manifest"), options.get(f"{split}_records")
            if manifest and records is not None:
                raise OptionError(f"{split}_records", f"give {split}_manifest or {split}_records, not both")
            if manifest or records is not None:
                sources[split] = (f"{split}_manifest" if manifest else f"{split}_records", manifest or records)
        if "train" not in sources:
            raise OptionError("train_manifest", "the training records are missing: give train_manifest (a JSONL "
                                                "file) or train_records (a list)")
        records = {}
        for split, (key, source) in sources.items():
            try:
                records[split] = read_records(source)
            except UserError as exc:
                raise OptionError(key, str(exc)) from None
        self.keys = {split: key for split, (key, _) in sources.items()}
        train = records["train"]
        check_modalities(records, self.keys)  # a modality the model will not have, found now, not at validation
        self.tokenizer = run_tokenizer(options["tokenizer"], train, self.keys["train"], context)
        audio = None
        if any(r.audio_path for r in train):  # librosa and the feature extractor only when there is audio
            from apt_plugin_audio import AudioPreprocessor

            try:
                audio = AudioPreprocessor.for_window(self.max_audio_seconds)
            except ValueError as exc:
                raise OptionError("max_audio_seconds", str(exc)) from None
        common = dict(text_tokenizer=self.tokenizer, image_processor=ImagePreprocessor.for_size(self.image_size),
                      audio_processor=audio, max_length=self.block_size, on_bad_record=options["on_bad_record"])
        self.datasets: dict[str, MultimodalDataset] = {}
        for split, (key, _) in sources.items():
            # only training images are shifted: validation and test see the images as they are
            shift = options["image_shift"] if split == "train" else 0
            try:
                self.datasets[split] = MultimodalDataset(records[split], **common, image_shift=shift, seed=seed)
            except UserError as exc:
                raise OptionError(key, str(exc)) from None
        self.skipped = {split: data.skipped for split, data in self.datasets.items() if data.skipped}
        self.summary: list[tuple[str, str]] = []
        if self.skipped:  # counted in the run's summary, each one in the error log
            counts = ", ".join(f"{split}: {len(bad)}" for split, bad in self.skipped.items())
            total = sum(len(bad) for bad in self.skipped.values())
            self.summary.append(("skipped records", f"{total} ({counts}; on_bad_record = 'skip')"))
            for split, bad in self.skipped.items():
                for _where, why in bad:  # why names the record
                    if report_error is not None:
                        report_error({"type": "SkippedRecord", "severity": "warning", "plugin": "apt-plugin-multimodal",
                                      "message": f"{split}_manifest: {why}", "hook": "data"})
        self.groups = _image_groups(self.datasets["train"].records) if self.group_by_image else []
        # what the model is built for; skipped records may have taken a modality away: checked again
        check_modalities({split: data.records for split, data in self.datasets.items()}, self.keys)
        self.uses_image = any(r.image_path for r in self.datasets["train"].records)
        self.uses_audio = any(r.audio_path for r in self.datasets["train"].records)

    def use_encoders(self, image: Any = None, audio: Any = None) -> None:
        """Batches get these encoders' own preprocessing (a loaded folder's image processor, a 128-mel Whisper's
        features) instead of the standard one built from ``image_size`` and ``max_audio_seconds``."""
        for data in self.datasets.values():
            data.use_processors(image, audio)

    def configure_distributed(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def _order(self, epoch: int) -> list[int]:
        if self.group_by_image:
            return self._grouped_order(epoch)
        sampler = DistributedSampler(range(len(self.datasets["train"])), num_replicas=self.world_size,
                                     rank=self.rank, shuffle=True, seed=self.seed, drop_last=self.world_size > 1)
        sampler.set_epoch(epoch)
        return list(sampler)

    def _grouped_order(self, epoch: int) -> list[int]:
        """Images in an order drawn from (seed, epoch), each followed by all its records; every rank takes an
        equal run of it (so no rank has a batch more than another), which splits at most one image per rank.
        Not DistributedSampler over images: ranks would get unequal numbers of records, hence of steps."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        draw = torch.randperm(len(self.groups), generator=generator).tolist()
        order = [index for g in draw for index in self.groups[g]]
        if self.world_size == 1:
            return order
        share = len(order) // self.world_size
        return order[self.rank * share:(self.rank + 1) * share]

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return math.ceil(len(self._order(epoch)) / self.batch_size)

    def _loader(self, split: str, indices: list[int]) -> DataLoader:
        return create_multimodal_dataloader(self.datasets[split], self.batch_size, shuffle=False,
                                            num_workers=self.num_workers, sampler=indices)

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """This rank's batches of ``epoch`` from batch number ``start`` on (to resume mid-epoch)."""
        order = self._order(epoch)[start * self.batch_size:]
        self.datasets["train"].epoch = epoch  # before the loader's workers start: they take a copy
        if order:
            yield from start_loader(self._loader("train", order))

    def val_batches(self) -> Iterator[dict]:
        if "val" not in self.datasets:
            return
        indices = list(range(len(self.datasets["val"])))[self.rank::self.world_size]
        if indices:
            yield from start_loader(self._loader("val", indices))


def _image_groups(records: list) -> list[list[int]]:
    """The indices of each image's records, images in order of first use; a record without an image alone."""
    groups: dict[object, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record.image_path if record.image_path is not None else ("record", index), []).append(index)
    return list(groups.values())
