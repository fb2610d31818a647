"""Records from lists and manifests: every bad one is refused by its record number or manifest line."""

from __future__ import annotations

import pytest

from apt_plugin_multimodal.records import read_records
from apt_sdk import UserError


def test_good_records_keep_their_metadata_and_resolve_media_from_the_manifest(tmp_path):
    manifest = tmp_path / "data" / "train.jsonl"
    manifest.parent.mkdir()
    manifest.write_text('{"text": "four", "prompt": "how many? ", "image_path": "a.png", "kind": "count", '
                        '"mask": "a-mask.png"}\n\n{"text": "tone", "audio_path": "clips/t.wav", "image_id": 7}\n')
    first, second = read_records(manifest)
    assert (first.text, first.prompt, first.where) == ("four", "how many? ", "line 1 of train.jsonl")
    assert first.image_path == tmp_path / "data" / "a.png"
    assert first.extra == {"kind": "count", "mask": "a-mask.png"}  # a second picture beside image_path is metadata
    assert (second.audio_path, second.image_path, second.extra, second.where) == (
        tmp_path / "data" / "clips" / "t.wav", None, {"image_id": 7}, "line 3 of train.jsonl")


@pytest.mark.parametrize("record, message", [
    ({"prompt": "x"}, "record 0: 'text' (the target) must be a non-empty string, got None"),
    ({"text": "a", "prompt": 3}, "record 0: 'prompt' must be a string, got int"),
    ({"text": "a", "image_path": ""}, "record 0: 'image_path' must be a non-empty string path"),
    # the names other datasets use: silently text-only before
    ({"text": "a", "image": "pics/cat.jpg"}, "record 0: field 'image' holds an image file 'pics/cat.jpg', but the "
                                             "image is read only from 'image_path': rename the field"),
    ({"text": "a", "audio": "one.wav"}, "record 0: field 'audio' holds an audio file 'one.wav', but the audio is read "
                                        "only from 'audio_path'"),
])
def test_a_bad_record_is_named(record, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_records([record])


def test_a_bad_manifest_line_is_named(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"text": "a"}\n{"text": "b", "img": "x.png"}\n')
    with pytest.raises(UserError, match="line 2 of m.jsonl: field 'img' holds an image file 'x.png'"):
        read_records(manifest)
    with pytest.raises(UserError, match="manifest '.*nowhere.jsonl': no such file"):
        read_records(tmp_path / "nowhere.jsonl")


def test_a_manifest_with_a_byte_order_mark_is_read(tmp_path):
    """Windows editors save UTF-8 with a BOM; its first line was refused as not JSON."""
    manifest = tmp_path / "train.jsonl"
    manifest.write_bytes('{"text": "drei", "prompt": "wie viele? "}\n{"text": "vier"}\n'.encode("utf-8-sig"))
    assert [(r.text, r.prompt) for r in read_records(manifest)] == [("drei", "wie viele? "), ("vier", "")]


def test_a_manifest_that_is_not_utf8_is_named_by_its_line(tmp_path):
    """A Latin-1 manifest was a UnicodeDecodeError traceback naming neither the file nor the line."""
    manifest = tmp_path / "train.jsonl"
    manifest.write_bytes('{"text": "un"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"train.jsonl: line 2 of train.jsonl: not UTF-8 \(byte 0xe9 at column 14\); "
                                        r"save the manifest as UTF-8"):
        read_records(manifest)


@pytest.mark.parametrize("field", ["kind", "question"])
def test_a_kind_or_question_that_is_not_a_string_is_named(field):
    """The accuracy is counted per kind and question: a list there was an 'unhashable type' traceback after training."""
    with pytest.raises(UserError, match=f"record 1: {field!r} must be a string \\(a name to count the accuracy "
                                        f"under\\), got list"):
        read_records([{"text": "a"}, {"text": "b", field: ["relational"]}])
    assert read_records([{"text": "a", field: "relational"}])[0].extra == {field: "relational"}
