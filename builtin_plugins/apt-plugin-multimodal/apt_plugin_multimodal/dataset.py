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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from apt_sdk import UserError

# the batch side is in .loader; imported from here as it always was
from .loader import IGNORE_INDEX, Failed, create_multimodal_dataloader, multimodal_collate_fn
from .records import Record, read_records

__all__ = ["IGNORE_INDEX", "MultimodalDataset", "create_multimodal_dataloader", "multimodal_collate_fn"]
CUT = ".* is longer than max_seconds = "  # the audio preprocessor's warning for a clip it cuts
FEATURE_CACHE_BYTES = 512 * 2**20  # a data set's audio features kept from the media check, for every epoch
ENCODER = {"image": "VisionEncoder", "audio": "AudioEncoder"}


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
    :param check_media: read every image and clip once now, so a bad file is found before training. The audio
        features made then are kept (up to ``FEATURE_CACHE_BYTES``) and given at every epoch, in every DataLoader
        worker, while the file is unchanged: a clip is decoded once, not once per epoch.
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
        # an audio file's features while it is unchanged: {path: ((mtime_ns, size), features, mask)}
        self._features: dict[Path, tuple[tuple[int, int], torch.Tensor, torch.Tensor]] = {}
        self._kept_bytes = 0
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

    def use_processors(self, image_processor: Any = None, audio_processor: Any = None) -> None:
        """Preprocess with these from now on (an encoder, or its preprocessor); ``None`` keeps the current one.
        Audio features kept from the media check are made again with the new preprocessor."""
        if image_processor is not None:
            self.image_processor = _preprocessor(image_processor)
        new = _preprocessor(audio_processor)
        if new is None or _same_audio(new, self.audio_processor):
            return
        self.audio_processor = new
        kept = {path: None for path in self._features}
        self._features, self._kept_bytes = {}, 0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", CUT)  # said once, when the data set was built
            for record in self.records:
                if record.audio_path in kept and record.audio_path not in self._features:
                    self._audio(record, keep=True)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """The items of a batch (the DataLoader asks for a batch at once); an image two records share is
        read once and is the same tensor in both. In a DataLoader worker a bad record (a file deleted since
        the media check) becomes ``Failed``, which the loader raises in the training process as one line."""
        try:
            return self._items(indices)
        except UserError as exc:
            if get_worker_info() is None:
                raise
            return [Failed(str(exc))]

    def _items(self, indices: list[int]) -> list[dict]:
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
                item["audio"] = self._audio(record)
        return item

    def _audio(self, record: Record, keep: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A record's features and frame mask: kept ones while the file is unchanged, else from the file (and kept
        when ``keep``, within ``FEATURE_CACHE_BYTES``)."""
        path = record.audio_path
        kept, stamp = self._features.get(path), _stamp(path)
        if kept is not None and kept[0] == stamp:
            return kept[1], kept[2]
        features, mask = self.audio_processor([path], where=[record.where])
        features, mask = features[0], mask[0]
        size = features.nbytes + mask.nbytes
        if keep and stamp is not None and self._kept_bytes + size <= FEATURE_CACHE_BYTES:
            self._features[path] = (stamp, features, mask)
            self._kept_bytes += size
        return features, mask

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
                raise UserError(f"{record.where}: has an {kind}_path ({path.name}), but this data set was given no "
                                f"{kind} encoder to prepare it for: pass {kind}_processor= (a {ENCODER[kind]} or its "
                                f"preprocessor), or leave the {kind} out of the record")
            if check_media and path not in readable:
                if kind == "audio":
                    self._audio(record, keep=True)  # a bad file is named with this record
                else:
                    processor([path], where=[record.where])
                readable.add(path)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def _same_audio(new: Any, old: Any) -> bool:
    if old is None or getattr(new, "frames", None) != getattr(old, "frames", None):
        return False
    settings = [getattr(getattr(p, "feature_extractor", None), "to_dict", lambda: None)() for p in (new, old)]
    return settings[0] is not None and settings[0] == settings[1]
