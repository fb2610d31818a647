"""The four tasks: the manifest-writing command (standard splits), the Sort-of-CLEVR generator's
answers and captions, and each pipeline's tiny configuration learning on CPU (far above chance)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from PIL import Image

from apt_plugin_lm.tokenization import CharTokenizer
from apt_plugin_multimodal import sort_of_clevr
from apt_plugin_multimodal.cli import multimodal
from apt_plugin_multimodal.dataset import MultimodalDataset
from apt_plugin_multimodal.evaluate import accuracy_lines, score
from apt_plugin_multimodal.sort_of_clevr import Thing
from apt_plugin_vision import ImagePreprocessor

REPO = Path(__file__).resolve().parents[3]
FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def prepare(*args: str) -> None:
    result = CliRunner().invoke(multimodal, ["prepare", *args])
    assert result.exit_code == 0, result.output


def test_sort_of_clevr_answers_and_captions():
    things = [Thing("red", "circle", 10, 10), Thing("green", "square", 25, 12), Thing("blue", "square", 60, 60),
              Thing("orange", "circle", 60, 10), Thing("gray", "square", 30, 50), Thing("yellow", "circle", 50, 30)]
    answers = {(q["prompt"], q["text"]) for q in sort_of_clevr.questions(things)}
    assert {("red shape? ", "circle"), ("red left or right? ", "left"), ("red top or bottom? ", "top"),
            ("red nearest shape? ", "square"), ("red farthest shape? ", "square"),
            ("red how many like it? ", "three"), ("blue how many like it? ", "three"),
            ("yellow left or right? ", "right"), ("yellow top or bottom? ", "top")} <= answers
    assert len(sort_of_clevr.questions(things)) == 36
    caption = sort_of_clevr.caption(things)
    assert caption.startswith("a red circle at the top left, a green square at the top left, a blue square at the "
                              "bottom right, an orange circle at the top right")
    assert len(sort_of_clevr.caption_objects(caption)) == 6
    assert sort_of_clevr.object_f1(caption, caption) == (6, 6, 6)
    wrong = caption.replace("a blue square at the bottom right", "a blue circle at the bottom right")
    assert sort_of_clevr.object_f1(wrong.split(", an orange")[0], caption) == (2, 3, 6)
    image = np.asarray(sort_of_clevr.draw(things))
    assert image.shape == (75, 75, 3) and tuple(image[10, 10]) == sort_of_clevr.COLOURS["red"]
    assert tuple(image[14, 5]) == (255, 255, 255)  # outside the circle, inside its box: background


def test_prepare_writes_the_standard_splits(tmp_path):
    prepare("digits", "--out", str(tmp_path / "digits"))
    train, test = (records(tmp_path / "digits" / f"{s}.jsonl") for s in ("train", "test"))
    assert (len(train), len(test)) == (1437, 360)
    from sklearn.datasets import load_digits

    target = load_digits().target  # stratified: each digit's share of the test set is its share of all
    counts = Counter(r["text"] for r in test)
    assert all(abs(counts[w] - 0.2 * (target == i).sum()) < 1 for i, w in enumerate(("zero", "one", "two")))
    from PIL import Image

    assert Image.open(tmp_path / "digits" / test[0]["image_path"]).size == (8, 8)

    fake = tmp_path / "recordings"
    fake.mkdir()
    for name in ("3_alice_0.wav", "3_alice_4.wav", "3_alice_5.wav", "7_bob_49.wav", "notes.wav"):
        sf.write(fake / name, np.zeros(800, np.float32), 8000)
    prepare("fsdd", "--source", str(fake), "--out", str(tmp_path / "fsdd"))
    train, test = (records(tmp_path / "fsdd" / f"{s}.jsonl") for s in ("train", "test"))
    assert sorted(r["text"] for r in test) == ["three", "three"] and sorted(r["text"] for r in train) == ["seven",
                                                                                                         "three"]
    assert (tmp_path / "fsdd" / train[0]["audio_path"]).resolve().parent == fake.resolve()  # relative to the manifest
    missing = CliRunner().invoke(multimodal, ["prepare", "fsdd", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "fsdd needs --source" in missing.output
    (tmp_path / "a-file").write_text("")  # --out under a file was a NotADirectoryError traceback
    blocked = CliRunner().invoke(multimodal, ["prepare", "digits", "--out", str(tmp_path / "a-file" / "digits")])
    assert blocked.exit_code == 2 and "cannot write" in blocked.output and "Not a directory" in blocked.output

    prepare("sort-of-clevr", "--out", str(tmp_path / "clevr"), "--train-images", "3", "--test-images", "2")
    train, test = records(tmp_path / "clevr" / "train.jsonl"), records(tmp_path / "clevr" / "test.jsonl")
    assert (len(train), len(test)) == (108, 72) and Counter(r["kind"] for r in train)["relational"] == 54
    assert Counter(r["question"] for r in test) == {q.removesuffix("? "): 12 for q in sort_of_clevr.NON_RELATIONAL
                                                    + sort_of_clevr.RELATIONAL}
    captions = records(tmp_path / "clevr" / "captions-test.jsonl")
    assert len(captions) == 2 and captions[0]["image_path"] == test[0]["image_path"]
    assert open(tmp_path / "clevr" / train[0]["image_path"], "rb").read() != \
        open(tmp_path / "clevr" / test[0]["image_path"], "rb").read()  # another seed, another image


def test_prepare_leaves_a_folder_it_did_not_write_alone_unless_told(tmp_path):
    """--out DIR silently replaced the user's own DIR/train.jsonl."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.jsonl").write_text('{"text": "my own"}\n')
    args = ["prepare", "sort-of-clevr", "--out", str(out), "--train-images", "1", "--test-images", "1"]
    refused = CliRunner().invoke(multimodal, args)
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert f"--out {out} holds files this command did not write (train.jsonl): choose an empty or new folder, or " \
           "pass --overwrite" in " ".join(refused.output.split()), refused.output
    assert (out / "train.jsonl").read_text() == '{"text": "my own"}\n' and sorted(os.listdir(out)) == ["train.jsonl"]
    prepare(*args[1:], "--overwrite")
    assert len(records(out / "train.jsonl")) == 36
    prepare(*args[1:])  # a folder it wrote itself is written again without asking
    prepare("sort-of-clevr", "--out", str(tmp_path / "new" / "folder"), "--train-images", "1", "--test-images", "1")


def test_a_negative_seed_is_refused_by_its_option(tmp_path):
    result = CliRunner().invoke(multimodal, ["prepare", "sort-of-clevr", "--out", str(tmp_path / "x"), "--seed", "-1"])
    assert result.exit_code == 2 and "Traceback" not in result.output and result.exception is not None
    assert "--seed" in result.output and "-1 is not in the range x>=0" in result.output, result.output


def test_fsdd_manifests_still_work_when_their_folder_is_moved(tmp_path):
    """Paths were made from the resolved source: a symlinked recordings folder led outside the project, and moving
    the project broke every record. Now they are relative to the manifest, symlinks kept as they are."""
    store = tmp_path / "store" / "recordings"  # where the files really are
    store.mkdir(parents=True)
    for name in ("3_alice_0.wav", "7_bob_9.wav"):
        sf.write(store / name, 0.1 * np.ones(800, np.float32), 8000)
    project = tmp_path / "a" / "project"
    project.mkdir(parents=True)
    (project / "recordings").symlink_to(store)
    prepare("fsdd", "--source", str(project / "recordings"), "--out", str(project / "data" / "fsdd"))
    train = records(project / "data" / "fsdd" / "train.jsonl")
    assert train[0]["audio_path"] == os.path.join("..", "..", "recordings", "7_bob_9.wav")
    moved = tmp_path / "b" / "c" / "project"  # another depth: a path climbing out of the project would miss
    moved.parent.mkdir(parents=True)
    (project).rename(moved)
    tokenizer = CharTokenizer.train(["which digit? seven", "three"])
    from apt_plugin_audio import AudioPreprocessor

    for split in ("train", "test"):
        data = MultimodalDataset(moved / "data" / "fsdd" / f"{split}.jsonl", tokenizer,
                                 audio_processor=AudioPreprocessor.for_window(1.0))
        assert len(data) == 1 and data[0]["audio"][1].any()


@pytest.mark.skipif(not FSDD.is_dir(), reason="needs the FSDD recordings in ../shared/data")
def test_fsdd_split_is_index_0_to_4_for_test(tmp_path):
    prepare("fsdd", "--source", str(FSDD), "--out", str(tmp_path))
    train, test = records(tmp_path / "train.jsonl"), records(tmp_path / "test.jsonl")
    assert (len(train), len(test)) == (2700, 300)
    assert all(int(os.path.basename(r["audio_path"]).split("_")[2][:-4]) < 5 for r in test)


class Answerer(torch.nn.Module):
    """Answers every question right except those whose prompt contains ``wrong``: what score is given."""

    def __init__(self, truth: list[str], wrong: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # score asks a parameter for the device
        self.truth, self.wrong, self.asked = iter(truth), wrong, 0

    def generate_batch(self, prompts: list[str], max_length: int, **media) -> list[str]:
        assert media["image_index"].shape[0] == len(prompts)  # one image per record, each stored once
        self.asked += len(prompts)
        return ["nope" if self.wrong in p else next(self.truth) for p in prompts]


def test_score_breaks_exact_match_down_by_kind_and_question(tmp_path):
    prepare("sort-of-clevr", "--out", str(tmp_path), "--train-images", "1", "--test-images", "2")
    test = records(tmp_path / "test.jsonl")
    tokenizer = CharTokenizer.train(r["prompt"] + r["text"] for r in test)
    dataset = MultimodalDataset(tmp_path / "test.jsonl", tokenizer, ImagePreprocessor.for_size(75), max_length=32)
    wrong = "nearest"
    model = Answerer([r["text"] for r in test if wrong not in r["prompt"]], wrong)
    scores = score(dataset, model, batch_size=16)
    assert model.asked == scores["examples"] == 72
    assert scores["accuracy_nearest shape"] == 0 and scores["accuracy_farthest shape"] == 1
    assert scores["accuracy_non-relational"] == scores["accuracy_shape"] == 1
    assert scores["accuracy_relational"] == pytest.approx(2 / 3) and scores["accuracy"] == pytest.approx(5 / 6)
    # the summary: each kind with its questions indented under it
    assert [label for label, _ in accuracy_lines(scores, dataset.records)] == [
        "  non-relational", "    shape", "    left or right", "    top or bottom",
        "  relational", "    nearest shape", "    farthest shape", "    how many like it"]


def test_a_question_named_like_a_kind_is_counted_apart_from_it(tmp_path):
    """A kind and a question of the same name shared one count, so each reported the other's records too."""
    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(image)
    lines = [{"prompt": f"{p}? ", "text": "red", "image_path": image.name, "kind": "colour", "question": q}
             for p, q in (("colour", "colour"), ("hue", "hue"), ("hue", "hue"), ("tint", "tint"))]
    lines.append({"prompt": "plain? ", "text": "red", "image_path": image.name, "question": "colour"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    tokenizer = CharTokenizer.train(r["prompt"] + r["text"] for r in lines)
    dataset = MultimodalDataset(tmp_path / "m.jsonl", tokenizer, ImagePreprocessor.for_size(8), max_length=16)
    scores = score(dataset, Answerer(["red"] * 3, "hue"), batch_size=8)
    assert scores["accuracy_colour"] == 0.5 and scores["accuracy_colour (question)"] == 1  # 2 of 4; 2 of 2
    assert scores["accuracy_hue"] == 0 and scores["accuracy_tint"] == 1 and scores["accuracy"] == 0.6
    assert accuracy_lines(scores, dataset.records) == [("  colour", "50.00%"), ("    hue", "0.00%"),
                                                       ("    tint", "100.00%"), ("  colour (question)", "100.00%")]
