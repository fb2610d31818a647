"""Multimodal records: ``{"text", "prompt"?, "image_path"?, "audio_path"?}``, from a list or a JSONL
manifest whose media paths are relative to the manifest. Every problem names the record and, from a
manifest, its line."""

from __future__ import annotations

import codecs
import json
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apt_sdk import UserError

FIELDS = ("text", "prompt", "image_path", "audio_path")
GROUPS = ("kind", "question")  # kept as metadata, and multimodal-accuracy counts each one's answers apart


@dataclass
class Record:
    text: str
    prompt: str = ""
    image_path: Path | None = None
    audio_path: Path | None = None
    where: str = ""  # "record 3" or "line 4 of train.jsonl", for messages
    extra: dict[str, Any] = field(default_factory=dict)  # other fields (e.g. a question's kind), kept as they are


def read_records(source: str | Path | list[dict] | list[Record], root: str | Path | None = None) -> list[Record]:
    """Records from a JSONL manifest (one JSON object per line; blank lines skipped) or a list of dicts.

    :param root: the folder relative media paths start from (default: the manifest's folder, or the
        current one for a list).
    """
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"manifest {str(path)!r}: no such file")
        base = Path(root) if root is not None else path.parent
        records = []
        raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # a byte-order mark, as Windows editors save UTF-8
        for number, encoded in enumerate(raw.splitlines(), start=1):
            where = f"line {number} of {path.name}"
            try:
                line = encoded.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}: {where}: not UTF-8 (byte 0x{encoded[exc.start]:02x} at column "
                                f"{exc.start + 1}); save the manifest as UTF-8") from None
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: {where}: not JSON ({exc.msg} at column {exc.colno})") from None
            records.append(_record(data, where, base))
        return records
    if not isinstance(source, list):
        raise UserError(f"expected a manifest path or a list of records, got {type(source).__name__}")
    if all(isinstance(record, Record) for record in source) and source:  # already read
        return source
    base = Path(root) if root is not None else Path.cwd()
    return [_record(data, f"record {index}", base) for index, data in enumerate(source)]


def _record(data: Any, where: str, base: Path) -> Record:
    if not isinstance(data, dict):
        raise UserError(f"{where}: a record is a JSON object with a 'text', got {type(data).__name__}")
    text = data.get("text")
    if not isinstance(text, str) or not text:
        raise UserError(f"{where}: 'text' (the target) must be a non-empty string, got {text!r}")
    prompt = data.get("prompt", "")
    if not isinstance(prompt, str):
        raise UserError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
    paths = {}
    for key in ("image_path", "audio_path"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise UserError(f"{where}: {key!r} must be a non-empty string path, got {value!r}")
        paths[key] = None if value is None else (base / value)
    extra = {k: v for k, v in data.items() if k not in FIELDS}
    for key in GROUPS:
        if extra.get(key) is not None and not isinstance(extra[key], str):
            raise UserError(f"{where}: {key!r} must be a string (a name to count the accuracy under), got "
                            f"{type(extra[key]).__name__}")
    for key, value in extra.items():
        # other fields are kept as metadata, so a record whose picture sits under "image" would silently
        # train as text only; a media file under another name, with no path field of its kind, is refused
        kind = (mimetypes.guess_type(value)[0] or "").split("/")[0] if isinstance(value, str) else ""
        if kind in ("image", "audio") and paths[f"{kind}_path"] is None:
            raise UserError(f"{where}: field {key!r} holds an {kind} file {value!r}, but the {kind} is read only "
                            f"from '{kind}_path': rename the field")
    return Record(text, prompt, paths["image_path"], paths["audio_path"], where, extra)
