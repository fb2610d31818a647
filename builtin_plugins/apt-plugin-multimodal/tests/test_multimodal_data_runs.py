"""The ``multimodal`` data in whole tiny runs: a resumed run keeps the tokenizer its checkpoints were trained
with, a 128-mel Whisper from a folder trains, and a media file deleted during training stops the run with one
line naming the record and the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from test_multimodal_pipeline import PIPELINE, write_manifests

from apt_sdk import Callback, PipelineError, UserError, hookimpl, run_pipeline
from apt_sdk.testing import IsolatedKernel

pytestmark = pytest.mark.slow  # each trains a few steps


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("APT_KERNEL_HOME", str(tmp_path / "home"))
    write_manifests(tmp_path / "data")
    return tmp_path / "data"


def _run(data, *overrides: str, resume: str | None = None, kernel=None):
    return run_pipeline(PIPELINE.format(folder=data), [f"pipeline.output_dir={str(data.parent / 'run')!r}",
                                                       "trainer.eval_every=0", *overrides], resume=resume,
                        kernel=kernel)


def test_a_resumed_bpe_run_keeps_its_tokenizer_after_the_manifest_changed(data):
    """The tokenizer was trained again on the edited manifest (same size, other ids), the model read scrambled
    tokens with exit 0, and run/tokenizer was overwritten so the older checkpoints no longer matched it."""
    _, first = _run(data, "data.tokenizer='bpe'", "trainer.max_steps=2")
    saved = data.parent / "run" / "tokenizer" / "tokenizer.json"
    before = saved.read_bytes()
    with (data / "train.jsonl").open("a") as manifest:  # the same letters, far more often: other merges
        for _ in range(20):
            manifest.write(json.dumps({"prompt": "colour? ", "text": "red red green", "image_path": "media/train0.png"})
                           + "\n")
    result, resumed = _run(data, "data.tokenizer='bpe'", "trainer.max_steps=4", resume="latest")
    assert result["steps"] == 4 and saved.read_bytes() == before
    text = "colour? red red green"
    assert resumed.data.tokenizer.encode(text) == first.data.tokenizer.encode(text)


def test_a_resumed_run_with_new_characters_names_the_manifest_line_and_them(data):
    """It failed loading the checkpoint: 'tok.weight ... (11, 16) vs (12, 16)', naming nothing the user changed."""
    _run(data, "trainer.max_steps=2")
    with (data / "train.jsonl").open("a") as manifest:
        manifest.write(json.dumps({"prompt": "colour? ", "text": "jaune", "image_path": "media/train0.png"}) + "\n")
    with pytest.raises(PipelineError, match=r"\[data\] train_manifest.*line 51 of train.jsonl \(and perhaps others\) "
                                            r"has characters the tokenizer of the run being resumed .* was not trained "
                                            r"on: 'j'\."):
        _run(data, "trainer.max_steps=4", resume="latest")


def test_a_128_mel_whisper_from_a_folder_trains(data, tmp_path):
    """The data made 80-bin features whatever the encoder: Whisper large-v3's layout failed at the first step."""
    from apt_plugin_audio import AudioEncoder

    AudioEncoder(size="tiny", config={"num_mel_bins": 128}, max_seconds=1.0).save_pretrained(tmp_path / "whisper")
    lines = [{"prompt": "sound? ", "text": "tone", "audio_path": "media/tone.wav"}] * 16  # audio in every batch
    for split in ("train", "val"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    pipeline = PIPELINE.format(folder=data) + (f'\n[encoders.audio]\nuse = "whisper"\nmodel_name_or_path = '
                                               f'{str(tmp_path / "whisper")!r}\nmax_seconds = 1.0\n')
    result, context = run_pipeline(pipeline, [f"pipeline.output_dir={str(tmp_path / 'run')!r}",
                                              "trainer.max_steps=2", "trainer.eval_every=0"])
    assert result["steps"] == 2 and np.isfinite(result["train_loss"])
    assert context.model.audio.encoder.config.num_mel_bins == 128


class DeleteMedia(Callback):
    """Takes a training image away once the data is checked and training starts."""

    def __init__(self, path) -> None:
        self.path = path

    def on_fit_start(self, trainer) -> None:
        self.path.unlink()


def test_a_media_file_deleted_during_training_is_one_line_naming_the_record_and_file(data):
    """From a DataLoader worker it was the worker's whole 'Original Traceback' after the message."""
    sf.write(data / "media" / "tone.wav", 0.3 * np.sin(np.arange(8000) * 0.3), 8000)
    gone = data / "media" / "train0.png"

    class Plugin:
        @staticmethod
        @hookimpl
        def register_callbacks(register):
            register("delete-media", lambda options, context: DeleteMedia(gone))

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"callback": {"delete-media": {}}}}, name="deleter")
    pipeline = PIPELINE.format(folder=data) + '\n[[callbacks]]\nuse = "delete-media"\n'
    with pytest.raises(UserError) as caught:
        run_pipeline(pipeline, [f"pipeline.output_dir={str(data.parent / 'run')!r}", "data.num_workers=1",
                                "trainer.eval_every=0"], kernel=kernel)
    assert str(caught.value).endswith(f"image {str(gone)!r} (line 1 of train.jsonl): no such file"), caught.value
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)
