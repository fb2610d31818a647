"""The ``multimodal`` data component before any training: every split checked against what the model will be,
the tokenizer a resumed run keeps, the encoders' own preprocessing, audio decoded once, and a record a loader
worker cannot read named in one line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from apt_plugin_lm.tokenization import CharTokenizer
from apt_plugin_multimodal.data_module import MultimodalDataModule
from apt_plugin_multimodal.dataset import MultimodalDataset, create_multimodal_dataloader
from apt_sdk import OptionError, UserError

OPTIONS = dict(tokenizer="char", image_size=16, max_audio_seconds=1.0, max_length=32, batch_size=4, num_workers=0,
               on_bad_record="fail", group_by_image=False, image_shift=0)


def manifest(folder: Path, name: str, lines: list[dict]) -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture()
def media(tmp_path) -> Path:
    Image.new("RGB", (20, 20), (200, 30, 30)).save(tmp_path / "red.png")
    sf.write(tmp_path / "tone.wav", 0.3 * np.sin(np.arange(8000) * 0.3), 8000)
    return tmp_path


def module(folder: Path, train: list[dict], context=None, **splits: list[dict]) -> MultimodalDataModule:
    options = {**OPTIONS, "train_manifest": str(manifest(folder, "train.jsonl", train))}
    for split, lines in splits.items():
        options[f"{split}_manifest"] = str(manifest(folder, f"{split}.jsonl", lines))
    return MultimodalDataModule(options, seed=0, context=context)


IMAGE = {"prompt": "colour? ", "text": "red", "image_path": "red.png"}
AUDIO = {"prompt": "sound? ", "text": "tone", "audio_path": "tone.wav"}


@pytest.mark.parametrize("split, line, kind, encoder", [("val", AUDIO, "audio", "an audio encoder"),
                                                         ("test", AUDIO, "audio", "an audio encoder")])
def test_a_split_with_a_modality_the_training_records_lack_is_refused_before_training(media, split, line, kind,
                                                                                        encoder):
    """The model is built for the training records' media: a validation record with audio crashed at the first
    validation (the epoch lost), a test record after training."""
    with pytest.raises(OptionError) as caught:
        module(media, [IMAGE, IMAGE], **{split: [IMAGE, line]})
    assert caught.value.key == f"{split}_manifest"
    assert f"line 2 of {split}.jsonl has an {kind}_path, but no training record has one, so the model is built " \
           f"without {encoder}" in str(caught.value), caught.value


def test_images_in_validation_without_images_in_training_are_refused(media):
    with pytest.raises(OptionError, match="val_manifest: line 1 of val.jsonl has an image_path, but no training "
                                          "record has one, so the model is built without a vision tower and would "
                                          "fail on it at the first validation"):
        module(media, [AUDIO], val=[IMAGE])


def test_text_alone_is_pointed_at_the_text_data_and_model(media):
    """The message said "use APTLargeModel", which a pipeline cannot."""
    with pytest.raises(OptionError, match='train_manifest: no training record has an image_path or an audio_path: '
                                          'that is text alone.*\\[data\\] use = "text".*\\[model\\] use = "apt-lm"'):
        module(media, [{"prompt": "a? ", "text": "b"}])


def test_an_audio_record_without_an_audio_encoder_says_what_to_pass(media):
    """ "the dataset was given no audio processor" said nothing a user had done."""
    records = [{**AUDIO, "audio_path": str(media / "tone.wav")}]
    with pytest.raises(UserError, match=r"record 0: has an audio_path \(tone.wav\), but this data set was given no "
                                        r"audio encoder to prepare it for: pass audio_processor= \(a AudioEncoder or "
                                        r"its preprocessor\), or leave the audio out of the record"):
        MultimodalDataset(records, CharTokenizer.train(["sound? tone"]))


def _run(folder: Path, resume: str | None = "latest") -> SimpleNamespace:
    """What the data component reads of the kernel's BuildContext."""
    return SimpleNamespace(resume=resume, run_dir=folder / "run", config={"trainer": {"checkpoint_dir": None}})


def test_a_resumed_char_run_keeps_its_tokenizer_and_refuses_characters_it_never_saw(media):
    """A resumed run retrained its tokenizer on the manifest as it was now: another vocabulary for the model
    ('tok.weight (11, 16) vs (12, 16)', or the same size and other ids), and the run's saved tokenizer was
    overwritten, so no older checkpoint matched it."""
    first = [IMAGE, {**IMAGE, "text": "crimson"}, {**IMAGE, "prompt": "what? "}]
    trained = module(media, first)
    trained.tokenizer.save(media / "run" / "tokenizer")  # as the trainer does beside each checkpoint
    saved = {p.name: p.read_bytes() for p in (media / "run" / "tokenizer").iterdir()}
    edited = [IMAGE, {**IMAGE, "text": "cos"}]  # fewer letters: retrained, another vocabulary
    assert module(media, edited).tokenizer.itos != trained.tokenizer.itos
    resumed = module(media, edited, context=_run(media))
    assert resumed.tokenizer.itos == trained.tokenizer.itos
    resumed.tokenizer.save(media / "run" / "tokenizer")
    assert {p.name: p.read_bytes() for p in (media / "run" / "tokenizer").iterdir()} == saved
    with pytest.raises(OptionError) as caught:
        module(media, [*first, {**IMAGE, "text": "rouge vif"}], context=_run(media))
    assert caught.value.key == "train_manifest" and str(caught.value).startswith(
        "train_manifest: line 4 of train.jsonl (and perhaps others) has characters the tokenizer of the run being "
        f"resumed ({media / 'run' / 'tokenizer'}) was not trained on: 'g', 'v', 'f'."), caught.value


def test_a_resumed_bpe_run_reads_its_saved_tokenizer_not_a_retrained_one(media):
    OPTIONS["tokenizer"] = "bpe"
    try:
        first = [IMAGE, {**IMAGE, "text": "crimson"}, {**IMAGE, "prompt": "what? "}]
        trained = module(media, first)
        trained.tokenizer.save(media / "run" / "tokenizer")
        before = (media / "run" / "tokenizer" / "tokenizer.json").read_bytes()
        edited = [*first, {**IMAGE, "text": "red red red crimson crimson"}]  # known letters, other merges
        retrained = module(media, edited).tokenizer
        resumed = module(media, edited, context=_run(media)).tokenizer
        text = "what? red red crimson"
        assert retrained.encode(text) != trained.tokenizer.encode(text)  # what a resumed run used to train on
        assert resumed.encode(text) == trained.tokenizer.encode(text)
        resumed.save(media / "run" / "tokenizer")
        assert (media / "run" / "tokenizer" / "tokenizer.json").read_bytes() == before
        with pytest.raises(OptionError, match=r"train_manifest: line 4 of train.jsonl \(and perhaps others\) has "
                                              r"characters the tokenizer of the run being resumed .* was not trained "
                                              r"on: 'g', 'ü'\. A resumed run keeps its tokenizer"):
            module(media, [*first, {**IMAGE, "text": "grün"}], context=_run(media))
        with pytest.raises(OptionError, match="tokenizer: is 'char', but the run being resumed was trained with a "
                                              "bpe tokenizer .*: set tokenizer = 'bpe'"):
            OPTIONS["tokenizer"] = "char"
            module(media, edited, context=_run(media))
    finally:
        OPTIONS["tokenizer"] = "char"


def test_batches_take_the_encoders_own_preprocessing(media):
    """The data always made 80-bin features and CLIP's standard pixels: a 128-mel Whisper (large-v3's layout) and a
    folder's own image processor were ignored."""
    from apt_plugin_audio import AudioEncoder
    from apt_plugin_vision import VisionEncoder

    data = module(media, [IMAGE, AUDIO])
    audio = AudioEncoder(size="tiny", config={"num_mel_bins": 128}, max_seconds=1.0)
    vision = VisionEncoder(size="tiny", config={"image_size": 16})
    vision.preprocessor.processor.image_mean = [0.0, 0.0, 0.0]  # as a saved folder's processor may differ
    vision.preprocessor.processor.image_std = [1.0, 1.0, 1.0]
    data.use_encoders(vision, audio)
    batch = next(iter(data.train_batches(0)))
    assert batch["audio"].shape[1:] == (128, 100)
    torch.testing.assert_close(batch["image"][0], vision.preprocess([media / "red.png"])[0])
    assert audio(batch["audio"]).shape == (2, 50, 32)


def test_audio_is_decoded_once_and_read_again_only_when_its_file_changes(media, monkeypatch):
    """Every epoch decoded and resampled every clip again, in every worker."""
    records = [{**AUDIO, "audio_path": str(media / "tone.wav")}] * 3
    from apt_plugin_audio import AudioPreprocessor

    preprocessor = AudioPreprocessor.for_window(1.0)
    data = MultimodalDataset(records, CharTokenizer.train(["sound? tone"]), audio_processor=preprocessor)
    decoded = []
    real = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: decoded.append(1) or real(*a, **k))
    first = [data[i]["audio"] for i in range(3)] + [data[0]["audio"]]
    assert decoded == []  # the media check's features, for every epoch
    expected = preprocessor([media / "tone.wav"])
    assert all(torch.equal(f, expected[0][0]) and torch.equal(m, expected[1][0]) for f, m in first)
    sf.write(media / "tone.wav", 0.3 * np.sin(np.arange(4000) * 0.2), 8000)  # edited since: read again
    features, mask = data[1]["audio"]
    assert decoded and mask.sum() == 25 and not torch.equal(features, first[0][0])
    (media / "tone.wav").unlink()
    with pytest.raises(UserError, match=r"tone.wav' \(record 2\): no such file"):
        data[2]


@pytest.mark.slow  # a worker process
def test_a_file_deleted_after_the_check_is_one_line_from_a_loader_worker(media):
    """A worker's UserError reached the user as 'Caught UserError in DataLoader worker process 0. Original
    Traceback (most recent call last): ...', the worker's whole traceback."""
    records = [{**IMAGE, "image_path": str(media / "red.png")}, {**IMAGE, "image_path": str(media / "blue.png")}]
    Image.new("RGB", (20, 20), (30, 30, 200)).save(media / "blue.png")
    from apt_plugin_vision import ImagePreprocessor

    data = MultimodalDataset(records, CharTokenizer.train(["colour? red"]), ImagePreprocessor.for_size(16))
    (media / "blue.png").unlink()
    loader = create_multimodal_dataloader(data, batch_size=2, shuffle=False, num_workers=1)
    with pytest.raises(UserError) as caught:
        list(loader)
    assert str(caught.value) == f"image {str(media / 'blue.png')!r} (record 1): no such file"
