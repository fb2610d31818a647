"""Whole runs of the multimodal pipeline, tiny: train_multimodal_model returns and records the test accuracy;
freeze_encoders = true freezes the towers; and what a pipeline whose encoder and data disagree is told."""

from __future__ import annotations

import json

import pytest
import torch
from test_multimodal_pipeline import PIPELINE, write_manifests

from apt_plugin_multimodal import MultimodalAPTModel, train_multimodal_model
from apt_sdk import Callback, PipelineError, hookimpl
from apt_sdk.testing import IsolatedKernel

TINY_MODEL = {"d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64, "vision_size": "tiny", "audio_size": "tiny"}


@pytest.mark.slow
def test_train_multimodal_model_returns_the_test_accuracy_and_records_it(tmp_path, monkeypatch):
    write_manifests(tmp_path / "data")
    monkeypatch.setenv("APT_KERNEL_HOME", str(tmp_path / "home"))
    trained = train_multimodal_model(tmp_path / "data" / "train.jsonl", epochs=1, batch_size=8,
                                     checkpoint_dir=tmp_path / "run", test_data=tmp_path / "data" / "val.jsonl",
                                     data={"image_size": 16, "max_length": 24}, trainer={"max_steps": 2},
                                     model=TINY_MODEL)
    model, tokenizer, config = trained  # the original API's three
    assert config is model.config and tokenizer is model.tokenizer
    assert trained.result["test_examples"] == 12 and 0.0 <= trained.test_accuracy <= 1.0
    recorded = json.loads((tmp_path / "run" / "metadata.json").read_text())["end_of_run"]
    assert recorded["global_step"] == 2 and recorded["result"]["test_accuracy"] == trained.test_accuracy


@pytest.mark.slow
def test_freeze_encoders_true_freezes_the_towers_the_model_builds(run_pipeline, tmp_path):
    write_manifests(tmp_path / "data")
    seen = {}

    class Snapshot(Callback):  # the towers as training starts, and whether the optimizer holds any of them
        def on_fit_start(self, trainer):
            towers = {n: p for n, p in trainer.model.named_parameters() if n.startswith(("vision.", "audio."))}
            optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
            seen.update(before={n: p.detach().clone() for n, p in towers.items()},
                        optimized=[n for n, p in towers.items() if id(p) in optimized],
                        projection=trainer.model.fusion.image.weight.detach().clone())

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("snapshot", lambda options, context: Snapshot())

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "version": "1.0.0",
                          "provides": {"callback": {"snapshot": {"options": {}}}}}, name="snapshot")
    text = PIPELINE.format(folder=tmp_path / "data").replace('audio_size = "tiny"',
                                                             'audio_size = "tiny"\nfreeze_encoders = true')
    result, context = run_pipeline(text + '\n[[callbacks]]\nuse = "snapshot"\n', kernel=kernel,
                                   overrides=["trainer.max_steps=2", "trainer.eval_every=0"])
    assert result["steps"] == 2 and len(seen["before"]) > 10 and seen["optimized"] == []
    after = dict(context.model.named_parameters())
    assert [n for n, value in seen["before"].items() if not torch.equal(after[n].detach().cpu(), value.cpu())] == []
    assert not torch.equal(after["fusion.image.weight"].detach(), seen["projection"])  # what is not frozen trained
    reloaded = MultimodalAPTModel.from_pretrained(context.run_dir).train()
    assert reloaded.vision.frozen and reloaded.audio.frozen and not reloaded.vision.model.training


def test_each_encoders_section_is_checked_for_its_modality_and_against_freeze_encoders(run_pipeline, tmp_path):
    write_manifests(tmp_path / "data")
    text = PIPELINE.format(folder=tmp_path / "data")
    cases = [('[encoders.image]\nuse = "whisper"\nsize = "tiny"\nmax_seconds = 1.0\n',
              r"\[encoders.image\] use: gives an encoder of 'audio' \(AudioEncoder\), and \[encoders.image\] takes an "
              r"encoder of 'image'"),
             ('[encoders.images]\nuse = "clip"\nsize = "tiny"\n',
              r"\[encoders.images\] use: multimodal-apt attends to \[encoders.image\] and \[encoders.audio\] only"),
             ('[encoders.image]\nuse = "clip"\nsize = "tiny"\nfreeze_encoder = false\n',
              r"\[model\] freeze_encoders: is true, but \[encoders.image\] sets freeze_encoder = false: drop one of "
              r"them")]
    for section, message in cases:
        frozen = text.replace('audio_size = "tiny"', 'audio_size = "tiny"\nfreeze_encoders = true')
        with pytest.raises(PipelineError, match=message):
            run_pipeline(frozen + "\n" + section)


@pytest.mark.slow
def test_an_encoders_section_preprocesses_the_batches_whatever_the_data_sizes_say(run_pipeline, tmp_path):
    """[data] image_size and max_audio_seconds size the encoders the model builds; an [encoders.*] encoder's batches
    are its own preprocessor's (any encoder plugin's: the data cannot know its sizes). They had to repeat a CLIP's
    and a Whisper's sizes, an error otherwise ('[data] image_size: is 16, but the [encoders.image] tower takes 32')."""
    write_manifests(tmp_path / "data")
    text = PIPELINE.format(folder=tmp_path / "data") + (
        '\n[encoders.image]\nuse = "clip"\nsize = "tiny"\n'  # 32 px; the data says 16
        '\n[encoders.audio]\nuse = "whisper"\nsize = "tiny"\nmax_seconds = 0.5\n')  # the data says 1.0
    with pytest.warns(UserWarning, match=r"1 audio clip .* 1.00 s is longer than max_seconds = 0.5; the rest is cut"):
        result, context = run_pipeline(text, overrides=["trainer.max_steps=1", "trainer.eval_every=0"])
    batches = list(context.data.train_batches(0))
    assert {tuple(b["image"].shape[-2:]) for b in batches} == {(32, 32)} and result["steps"] == 1
    assert {b["audio_mask"].shape[-1] for b in batches if "audio" in b} == {25}  # 0.5 s of 20 ms frames
    reloaded = MultimodalAPTModel.from_pretrained(context.run_dir)
    assert reloaded.vision.preprocessor.image_size == 32 and reloaded.audio.max_seconds == 0.5
