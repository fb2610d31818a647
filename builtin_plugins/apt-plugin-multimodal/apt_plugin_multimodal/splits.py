"""Every split checked against the model before the first step: the model gets a vision tower and an audio
encoder for what the training records have, so a validation or test record with another modality failed at
the first validation (a traceback, the epoch lost) or after training, and records with no media at all are
text, which the multimodal model does not take."""

from __future__ import annotations

from apt_sdk import OptionError

from .records import Record

ENCODER = {"image": "a vision tower", "audio": "an audio encoder"}
PLURAL = {"image": "images", "audio": "audio"}
WHEN = {"val": "at the first validation", "test": "when the test records are scored after training"}


def check_modalities(records: dict[str, list[Record]], keys: dict[str, str]) -> None:
    """``records`` and ``keys`` (the option each came from) by split; the model is built for ``records["train"]``."""
    has = {kind: any(getattr(r, f"{kind}_path") is not None for r in records["train"]) for kind in ENCODER}
    if not any(has.values()):
        raise OptionError(keys["train"], "no training record has an image_path or an audio_path: that is text alone, "
                                         "which the multimodal model does not take. For text use the text data and "
                                         'the APT language model: [data] use = "text" (path = your text) and [model] '
                                         'use = "apt-lm"')
    for split, when in WHEN.items():
        for record in records.get(split, []):
            for kind, encoder in ENCODER.items():
                if getattr(record, f"{kind}_path") is not None and not has[kind]:
                    raise OptionError(keys[split], f"{record.where} has an {kind}_path, but no training record has "
                                                   f"one, so the model is built without {encoder} and would fail on "
                                                   f"it {when}: give some training records {PLURAL[kind]} too, or "
                                                   f"leave the {kind} out of the {split} records")
