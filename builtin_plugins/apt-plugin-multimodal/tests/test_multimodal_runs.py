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


def test_an_encoder_and_the_data_that_disagree_are_named_by_their_own_keys(run_pipeline, tmp_path):
    write_manifests(tmp_path / "data")
    text = PIPELINE.format(folder=tmp_path / "data") + '\n[encoders.image]\nuse = "clip"\nsize = "tiny"\n'
    with pytest.raises(PipelineError) as error:  # the tiny tower takes 32 px; the data says 16
        run_pipeline(text)
    assert "[data] image_size: is 16, but the [encoders.image] tower takes 32 px images: set image_size = 32" \
        in str(error.value)
    assert "vision_size" not in str(error.value)  # which the pipeline never set
    text = text.replace("image_size = 16", "image_size = 32").replace('audio_size = "tiny"',
                                                                     'audio_size = "tiny"\nfreeze_encoders = true')
    with pytest.raises(PipelineError, match=r"\[model\] freeze_encoders: is true, but \[encoders.image\] sets "
                                            r"freeze_encoder = false: drop one of them"):
        run_pipeline(text + "freeze_encoder = false\n")
