"""Manifests of the standard splits of the four tasks, as JSONL records the ``multimodal`` data reads.

- ``fsdd``: the Free Spoken Digit Dataset's usual split (recordings with index 0-4 test, the rest
  train); audio -> the digit's word.
- ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 scans), stratified 80/20 with seed 0;
  the images are written as PNG files.
- ``sort-of-clevr``: generated images, VQA records (train, and test from another seed) and caption
  records (``captions-train``/``captions-test``).

Media paths in a manifest are relative to it, so a prepared folder can be moved (FSDD's, with the recordings
beside it as they were: its paths lead to the source folder as the command was given it, symlinks unresolved).

A folder that holds files this command did not write is refused (``claim``), unless told to overwrite: a
user's own ``train.jsonl`` there was silently replaced. What it wrote it records in ``MARKER``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from apt_sdk import UserError

from . import sort_of_clevr

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
DIGIT_PROMPT = "what digit is this? "
SPOKEN_PROMPT = "which digit? "


MARKER = ".apt-multimodal-prepare"  # in a folder this command wrote: the task that wrote it


def claim(out: Path, task: str, overwrite: bool) -> None:
    """Refuse ``out`` if it holds files this command did not write, unless ``overwrite``; then mark it as ours."""
    if out.is_dir() and not (out / MARKER).is_file() and not overwrite:
        theirs = sorted(p.name for p in out.iterdir())
        if theirs:
            shown = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
            raise UserError(f"--out {out} holds files this command did not write ({shown}): choose an empty or new "
                            f"folder, or pass --overwrite to write the {task} manifests into it (files of the same "
                            f"names are replaced, the others kept)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"task": task}) + "\n", encoding="utf-8")


def write_manifest(path: Path, records: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return len(records)


def recordings(source: Path) -> list[Path]:
    """The FSDD recordings (``{digit}_{speaker}_{index}.wav``) in ``source``; none is an error."""
    files = sorted(p for p in Path(source).glob("*.wav") if FSDD_NAME.match(p.name))
    if not files:
        raise UserError(f"{source}: no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) found")
    return files


def fsdd(source: Path, out: Path) -> dict[str, int]:
    """``{index 0-4: test, 5-49: train}`` of ``{digit}_{speaker}_{index}.wav`` files in ``source``."""
    files = recordings(source)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for path in files:
        digit, speaker, index = FSDD_NAME.match(path.name).groups()
        split = "test" if int(index) < 5 else "train"
        # relative to the manifest, through the folders as given: a symlinked source stays where the user put it,
        # so the project moved as a whole (recordings, or the link to them, beside the data) still finds them
        splits[split].append({"prompt": SPOKEN_PROMPT, "text": WORDS[int(digit)], "speaker": speaker,
                              "audio_path": os.path.relpath(os.path.abspath(path), os.path.abspath(out))})
    return {split: write_manifest(out / f"{split}.jsonl", records) for split, records in splits.items()}


def digits(out: Path) -> dict[str, int]:
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    index = np.arange(len(data.target))
    train, test = train_test_split(index, test_size=0.2, random_state=0, stratify=data.target)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, rows in (("train", train), ("test", test)):
        records = []
        for i in rows:
            name = f"images/{i:04d}.png"
            pixels = (data.images[i] * (255 / 16)).round().astype(np.uint8)  # 0-16 ink -> 8-bit grey
            Image.fromarray(255 - pixels, "L").save(out / name)  # dark ink on white, as scanned
            records.append({"prompt": DIGIT_PROMPT, "text": WORDS[int(data.target[i])], "image_path": name})
        counts[split] = write_manifest(out / f"{split}.jsonl", records)
    return counts


def sort_of_clevr_sets(out: Path, train_images: int, test_images: int, seed: int = 0) -> dict[str, int]:
    """Train images from ``seed``, test images from ``seed + 1``: a different generator stream."""
    counts = {}
    for split, count, stream in (("train", train_images, seed), ("test", test_images, seed + 1)):
        rng = np.random.default_rng(stream)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        vqa, captions = [], []
        for i in range(count):
            things = sort_of_clevr.scene(rng)
            name = f"images/{split}/{i:05d}.png"
            sort_of_clevr.draw(things).save(out / name)
            vqa += [{**q, "image_path": name} for q in sort_of_clevr.questions(things)]
            captions.append({"prompt": "", "text": sort_of_clevr.caption(things), "kind": "caption",
                             "image_path": name})
        counts[split] = write_manifest(out / f"{split}.jsonl", vqa)
        counts[f"captions-{split}"] = write_manifest(out / f"captions-{split}.jsonl", captions)
    return counts
