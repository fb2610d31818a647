"""``MultimodalDataset``, ``multimodal_collate_fn`` and ``create_multimodal_dataloader``.

An item is the tokens ``<bos> prompt text <eos>`` with labels only on the text (the prompt
conditions, it is not scored), plus the record's pixel values and/or log-mel features. Images and
audio are read and preprocessed in ``__getitems__``, so DataLoader workers do it. A batch pads text
and audio with masks and stacks images; a record without an image or audio is marked absent
(``image_present``, an all-False ``audio_mask``), so batches may mix records with and without them.

Records that share an image (Sort-of-CLEVR asks 36 questions of each) share its pixels: a batch reads
each image once, stacks it once and says which row is whose (``image_index``), so the model encodes it
once too.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from apt_sdk import UserError, loader_worker_init

from .records import Record, read_records

IGNORE_INDEX = -100
CUT = ".* is longer than max_seconds = "  # the audio preprocessor's warning for a clip it cuts


def _preprocessor(processor: Any) -> Callable | None:
    """An encoder's preprocessor, or the callable itself (``ImagePreprocessor``/``AudioPreprocessor``)."""
    return getattr(processor, "preprocessor", processor)


class MultimodalDataset(Dataset):
    """Records as training items.

    :param data_list: a list of records (dicts) or the path of a JSONL manifest.
    :param text_tokenizer: the text tokenizer (``encode``, ``bos_id``, ``eos_id``, ``pad_id``).
    :param image_processor: a ``VisionEncoder`` or its ``ImagePreprocessor`` (needed if any record has an image).
    :param audio_processor: an ``AudioEncoder`` or its ``AudioPreprocessor`` (needed if any has audio).
    :param max_length: the longest ``<bos> prompt text`` in tokens (the model's ``max_seq_len``).
    :param on_bad_record: ``"fail"``: a bad record (unreadable media, too long) is an error naming it;
        ``"skip"``: it is left out and listed in ``skipped``. Media are checked once, here.
    :param check_media: read every image and clip once now, so a bad file is found before training.
    :param image_shift: move each image by up to this many of its own pixels in x and y (0: off), drawn
        from ``(seed, epoch, image)``: the same shifts in a resumed run, different ones each epoch, and the
        same for every record of one image. The uncovered border takes the image's top-left colour (the
        background in these tasks). Set ``epoch`` before each epoch's loader starts its workers.
    """

    def __init__(self, data_list: list[dict] | str | Path, text_tokenizer: Any, image_processor: Any = None,
                 audio_processor: Any = None, max_length: int = 256, on_bad_record: str = "fail",
                 check_media: bool = True, root: str | Path | None = None, image_shift: int = 0, seed: int = 0):
        if on_bad_record not in ("fail", "skip"):
            raise UserError(f"on_bad_record must be 'fail' or 'skip', not {on_bad_record!r}")
        self.image_shift, self.seed, self.epoch = image_shift, seed, 0
        self.tokenizer = text_tokenizer
        self.image_processor = _preprocessor(image_processor)
        self.audio_processor = _preprocessor(audio_processor)
        self.max_length = max_length
        self._encoded: dict[str, list[int]] = {}  # VQA repeats a few dozen prompts and answers over 10^5 records
        self.skipped: list[tuple[str, str]] = []  # (where, why)
        self.media_checked = check_media  # then a cut clip was reported here, once
        readable: set[Path] = set()  # media read once, however many records share them
        self.records: list[Record] = []
        with warnings.catch_warnings(record=True) as cut:
            warnings.filterwarnings("always", CUT)
            for record in read_records(data_list, root):
                try:
                    self._check(record, check_media, readable)
                except UserError as exc:
                    if on_bad_record == "fail":
                        raise
                    self.skipped.append((record.where, str(exc)))
                    continue
                self.records.append(record)
        clips: dict[str, None] = {}  # the cut clips' messages, once each, in order
        for caught in cut:
            if re.match(CUT, str(caught.message)):
                clips[str(caught.message)] = None
            else:  # not ours to hold back
                warnings.warn_explicit(caught.message, caught.category, caught.filename, caught.lineno)
        if clips:  # one line for the data set, not one per clip and again at every epoch
            warnings.warn(f"{len(clips)} audio clip{'s' if len(clips) > 1 else ''} longer than the audio window "
                          f"{'are' if len(clips) > 1 else 'is'} cut to it, e.g. {next(iter(clips))}", stacklevel=2)
        if not self.records:
            raise UserError("no usable records" + (f" ({len(self.skipped)} skipped)" if self.skipped else ""))
        self.images: dict[Path, int] = {}  # each image's number, in order of first use
        for record in self.records:
            if record.image_path is not None:
                self.images.setdefault(record.image_path, len(self.images))

    def __len__(self) -> int:
        return len(self.records)

    def tokens(self, record: Record) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of a record: labels are -100 where the next token is prompt."""
        prompt = [self.tokenizer.bos_id, *self._encode(record.prompt)]
        sequence = [*prompt, *self._encode(record.text), self.tokenizer.eos_id]
        labels = [IGNORE_INDEX] * (len(prompt) - 1) + sequence[len(prompt):]
        return sequence[:-1], labels

    def _encode(self, text: str) -> list[int]:
        if text not in self._encoded:
            self._encoded[text] = self.tokenizer.encode(text)
        return self._encoded[text]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """The items of a batch (the DataLoader asks for a batch at once); an image two records share is
        read once and is the same tensor in both."""
        pixels: dict[Path, torch.Tensor] = {}
        items = []
        for index in indices:
            record = self.records[index]
            item = self._item(record)
            if record.image_path is not None:
                if record.image_path not in pixels:
                    image = record.image_path if not self.image_shift else self._shifted(record)
                    pixels[record.image_path] = self.image_processor([image], where=[record.where])[0]
                item["image"] = pixels[record.image_path]
            items.append(item)
        return items

    def _item(self, record: Record) -> dict:
        input_ids, labels = self.tokens(record)
        item: dict = {"input_ids": input_ids, "labels": labels, "image": None, "audio": None}
        if record.audio_path is not None:
            with warnings.catch_warnings():
                if self.media_checked:
                    warnings.filterwarnings("ignore", CUT)  # said once, when the data set was built
                features, mask = self.audio_processor([record.audio_path], where=[record.where])
            item["audio"] = (features[0], mask[0])
        return item

    def _shifted(self, record: Record):
        from PIL import Image

        from apt_plugin_vision import load_image

        image = load_image(record.image_path, record.where)
        number = self.images[record.image_path]
        dx, dy = np.random.default_rng((self.seed, self.epoch, number)).integers(-self.image_shift,
                                                                                 self.image_shift + 1, 2)
        # output pixel (x, y) takes input pixel (x - dx, y - dy): the content moves by (dx, dy)
        return image.transform(image.size, Image.Transform.AFFINE, (1, 0, -int(dx), 0, 1, -int(dy)),
                               fillcolor=image.getpixel((0, 0)))

    def _check(self, record: Record, check_media: bool, readable: set[Path]) -> None:
        length = len(self.tokens(record)[0])
        if length > self.max_length:
            raise UserError(f"{record.where}: prompt and text are {length} tokens with <bos>; the model takes "
                            f"{self.max_length}")
        for path, processor, kind in ((record.image_path, self.image_processor, "image"),
                                      (record.audio_path, self.audio_processor, "audio")):
            if path is None:
                continue
            if processor is None:
                raise UserError(f"{record.where}: has an {kind} but the dataset was given no {kind} processor")
            if check_media and path not in readable:
                processor([path], where=[record.where])  # a bad file is named with this record
                readable.add(path)


def multimodal_collate_fn(items: list[dict], pad_id: int = 0) -> dict:
    """Pad text (``text_attention_mask``), stack images (``image_present``) and audio (``audio_mask``).

    Items holding the same image tensor (``__getitems__`` shares one between records of an image) get
    one row of ``image`` between them and ``image_index [B]``, each record's row in it."""
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


def create_multimodal_dataloader(dataset: MultimodalDataset, batch_size: int = 8, shuffle: bool = True,
                                 num_workers: int = 0, **kwargs: Any) -> DataLoader:
    """A DataLoader whose workers read and preprocess the media; batches as ``multimodal_collate_fn`` makes them.
    The workers leave the caller's process group (``apt_sdk.loader_worker_init``), so Ctrl-C or a SIGTERM to
    the group reaches only the training process, which finishes its step and saves."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=partial(multimodal_collate_fn, pad_id=dataset.tokenizer.pad_id),
                      persistent_workers=num_workers > 0,
                      worker_init_fn=loader_worker_init(kwargs.pop("worker_init_fn", None)), **kwargs)
