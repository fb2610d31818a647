"""``MultimodalDataset``, ``multimodal_collate_fn`` and ``create_multimodal_dataloader``.

An item is the tokens ``<bos> prompt text <eos>`` with labels only on the text (the prompt
conditions, it is not scored), plus the record's image and/or audio as its encoder's preprocessor makes
them (the ``Encoder`` contract's ``preprocessor``: CLIP's pixel values, Whisper's log-mel features and frame
mask). Images and audio are read and preprocessed in ``__getitems__``, so DataLoader workers do it. A batch
pads text with a mask and stacks the media; a record without an image or audio is marked absent
(``image_present``, ``audio_present``), so batches may mix records with and without them.

Records that share an image (Sort-of-CLEVR asks 36 questions of each) share its pixels: a batch reads
each image once, stacks it once and says which row is whose (``image_index``), so the model encodes it
once too.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
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
    """An encoder's ``preprocessor`` (the ``Encoder`` contract's), or the callable itself (``ImagePreprocessor``)."""
    return getattr(processor, "preprocessor", processor)


class MultimodalDataset(Dataset):
    """Records as training items.

    :param data_list: a list of records (dicts) or the path of a JSONL manifest.
    :param text_tokenizer: the text tokenizer (``encode``, ``bos_id``, ``eos_id``, ``pad_id``).
    :param image_processor: an image encoder (``VisionEncoder``, any ``apt_sdk.Encoder`` of images) or its
        ``preprocessor`` (needed if any record has an image).
    :param audio_processor: an audio encoder or its ``preprocessor`` (needed if any has audio).
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
        self._features: dict[Path, tuple[tuple[int, int], Any]] = {}
        self._kept_bytes = 0
        self.skipped: list[tuple[str, str]] = []  # (where, why)
        self.media_checked = check_media  # then a cut clip was reported here, once
        readable: set[Path] = set()  # media read once, however many records share them
        self.records: list[Record] = []
        with _cut_clips_said_once():
            for record in read_records(data_list, root):
                try:
                    self._check(record, check_media, readable)
                except UserError as exc:
                    if on_bad_record == "fail":
                        raise
                    self.skipped.append((record.where, str(exc)))
                    continue
                self.records.append(record)
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
        Audio features kept from the media check are made again with the new preprocessor (a clip it cuts is
        said, once)."""
        if image_processor is not None:
            self.image_processor = _preprocessor(image_processor)
        new = _preprocessor(audio_processor)
        if new is None or (self.audio_processor is not None and (new is self.audio_processor
                                                                  or new == self.audio_processor)):
            return
        self.audio_processor = new
        kept = {path: None for path in self._features}
        self._features, self._kept_bytes = {}, 0
        with _cut_clips_said_once():
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
        pixels: dict[Path, Any] = {}
        items = []
        for index in indices:
            record = self.records[index]
            item = self._item(record)
            if record.image_path is not None:
                if record.image_path not in pixels:
                    image = record.image_path if not self.image_shift else self._shifted(record)
                    pixels[record.image_path] = first_row(self.image_processor([image], where=[record.where]))
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

    def _audio(self, record: Record, keep: bool = False) -> Any:
        """A record's preprocessed audio (Whisper's: features and frame mask): kept while the file is unchanged, else
        from the file (and kept when ``keep``, within ``FEATURE_CACHE_BYTES``)."""
        path = record.audio_path
        kept, stamp = self._features.get(path), _stamp(path)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        row = first_row(self.audio_processor([path], where=[record.where]))
        size = sum(part.nbytes for part in (row if isinstance(row, tuple) else (row,)))
        if keep and stamp is not None and self._kept_bytes + size <= FEATURE_CACHE_BYTES:
            self._features[path] = (stamp, row)
            self._kept_bytes += size
        return row

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


def first_row(prepared: Any) -> Any:
    """Item 0 of what a preprocessor made for one item: a tensor's first row, or a tuple of them (inputs, mask)."""
    return tuple(part[0] for part in prepared) if isinstance(prepared, tuple) else prepared[0]


@contextlib.contextmanager
def _cut_clips_said_once() -> Iterator[None]:
    """The clips the audio preprocessor cuts to its window, said in one warning for the data set (not one per clip
    and again at every epoch); other warnings pass as they are."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", CUT)
        yield
    clips: dict[str, None] = {}  # the cut clips' messages, once each, in order
    for warning in caught:
        if re.match(CUT, str(warning.message)):
            clips[str(warning.message)] = None
        else:  # not ours to hold back
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if clips:
        warnings.warn(f"{len(clips)} audio clip{'s' if len(clips) > 1 else ''} longer than the audio window "
                      f"{'are' if len(clips) > 1 else 'is'} cut to it, e.g. {next(iter(clips))}", stacklevel=4)
