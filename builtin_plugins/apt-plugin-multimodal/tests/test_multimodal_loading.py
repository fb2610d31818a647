"""Saving and loading the multimodal model: a run folder is read by its metadata.json and temp/ (as --resume
latest reads it), encoders come back frozen or trainable as they were saved, unfreezing is one call that
gives gradients, and what loading says when something is missing."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from apt_plugin_lm.model import APTConfig
from apt_plugin_lm.tokenization import CharTokenizer
from apt_plugin_multimodal import MultimodalAPTModel
from apt_plugin_trainer import CheckpointManager
from apt_plugin_vision import VisionEncoder
from apt_sdk import UserError

TINY = {"size": "tiny"}


def tiny_model(**kwargs) -> MultimodalAPTModel:
    tokenizer = CharTokenizer.train(["what colour? red blue"])
    config = APTConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_heads=2, num_layers=1, max_seq_len=32)
    model = MultimodalAPTModel(config, **{"vision_config": TINY, **kwargs})
    model.tokenizer = tokenizer
    return model


def weights_like(model: MultimodalAPTModel, seed: int) -> dict:
    torch.manual_seed(seed)
    return {name: torch.randn_like(value) if value.is_floating_point() else value
            for name, value in model.state_dict().items()}


def test_a_run_folder_loads_the_state_resume_latest_would_take_not_the_newest_file(tmp_path):
    model = tiny_model()
    run = tmp_path / "run"
    manager = CheckpointManager(run)
    states = {step: weights_like(model, step) for step in (5, 10, 12)}
    for step in (5, 10):
        model.load_state_dict(states[step])
        manager.save_checkpoint(model, None, None, 0, step, [], tokenizer=model.tokenizer, config=model.config)
    # the older checkpoint was copied or restored last: its file time says nothing about which is newer
    older = run / "checkpoints" / "apt_model_epoch0_step5.pt"
    os.utime(older, (older.stat().st_atime, older.stat().st_mtime + 3600))
    model.load_state_dict(states[12])
    manager.save_temp({"model_state_dict": model.state_dict(), "config": model.config.to_dict(), "global_step": 12})

    def loaded_from(path) -> int:
        loaded = MultimodalAPTModel.from_pretrained(path)
        step = next(s for s, weights in states.items() if torch.equal(loaded.nothing, weights["nothing"]))
        assert loaded.tokenizer is not None  # the run's tokenizer/, beside checkpoints/ and temp/
        return step

    assert loaded_from(run) == 12  # a killed run's temp state is its newest
    manager.clear_temp()
    assert loaded_from(run) == 10  # metadata.json's newest, though step 5's file is newer
    assert loaded_from(older) == 5  # a file is that file

    (run / "metadata.json").unlink()
    with pytest.raises(Exception, match=r"metadata.json is missing, so which of the 2 checkpoint\(s\) .* is the "
                                        r"newest is not recorded; load one by its file: from_pretrained\('"):
        MultimodalAPTModel.from_pretrained(run)


def test_encoders_come_back_frozen_or_trainable_as_saved_and_unfreeze_with_one_call(tmp_path):
    # a tower given frozen (as [encoders.image] gives it) beside an audio encoder the model builds trainable
    frozen_tower = VisionEncoder(size="tiny", freeze_encoder=True)
    model = tiny_model(use_audio=True, vision_encoder=frozen_tower, audio_config=TINY, freeze_encoders=False)
    model.save_pretrained(tmp_path / "saved")
    manager = CheckpointManager(tmp_path / "run")
    checkpoint = manager.save_checkpoint(model, None, None, 0, 1, [], tokenizer=model.tokenizer, config=model.config)
    ids = torch.randint(4, model.apt_config.vocab_size, (1, 8))
    image = [Image.new("RGB", (32, 32), "red")]
    for source in (tmp_path / "saved", checkpoint):
        loaded = MultimodalAPTModel.from_pretrained(source)
        loaded.train()
        assert loaded.vision.frozen and not loaded.vision.model.training  # frozen: eval even under .train()
        assert not any(p.requires_grad for p in loaded.vision.parameters())
        assert not loaded.audio.frozen and loaded.audio.encoder.training
        loaded(ids, image=image).sum().backward()
        assert all(p.grad is None for p in loaded.vision.parameters())

        loaded.freeze_encoders(False)  # one call: gradients reach the tower, and it follows .train()/.eval()
        assert loaded.vision.model.training and not loaded.vision.frozen
        loaded(ids, image=image).sum().backward()
        assert loaded.vision.model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
        assert not loaded.audio.encoder.embed_positions.weight.requires_grad  # Whisper's fixed positions stay so
        loaded.eval()
        assert not loaded.vision.model.training
        loaded.train().freeze_encoders()
        assert loaded.vision.frozen and loaded.audio.frozen and not loaded.audio.encoder.training
        assert loaded.config.frozen == {"vision": True, "audio": True}
    loaded.unfreeze_encoders().save_pretrained(tmp_path / "unfrozen")
    again = MultimodalAPTModel.from_pretrained(tmp_path / "unfrozen")
    assert not again.vision.frozen and not again.audio.frozen


def test_a_model_saved_before_encoders_were_recorded_loads_and_an_encoder_not_installed_is_named(tmp_path):
    """A config.json written before each encoder's class was recorded (``vision``: the CLIP tower's fields, ``audio``:
    Whisper's and max_seconds) loads as it did; one whose encoder's class cannot be imported says what to install."""
    model = tiny_model(use_audio=True, audio_config={**TINY, "max_seconds": 0.5}).eval()
    model.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())["multimodal"]
    records = saved.pop("encoders")
    assert records["image"]["class"] == "apt_plugin_vision.encoder:VisionEncoder"
    assert records["audio"]["distribution"] == "apt-plugin-audio"
    old = {**saved, "vision": records["image"]["config"]["model"],
           "audio": {**records["audio"]["config"]["model"], "max_seconds": 0.5}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"multimodal": old}))
    os.link(tmp_path / "new" / "model.safetensors", tmp_path / "old" / "model.safetensors")
    loaded = MultimodalAPTModel.from_pretrained(tmp_path / "old").eval()
    ids = torch.randint(4, model.apt_config.vocab_size, (1, 8))
    inputs = dict(image=[Image.new("RGB", (32, 32), "red")], audio=[np.zeros(4000, np.float32)])
    torch.testing.assert_close(loaded(ids, **inputs), model(ids, **inputs))
    assert loaded.audio.max_seconds == 0.5 and loaded.config.encoders == records  # saved again in the new form

    gone = {**saved, "encoders": {**records, "image": {**records["image"], "class": "apt_plugin_gone.tower:Tower",
                                                       "distribution": "apt-plugin-gone"}}}
    (tmp_path / "new" / "config.json").write_text(json.dumps({"multimodal": gone}))
    with pytest.raises(UserError, match=r"config.json, encoders.image: the encoder 'apt_plugin_gone.tower:Tower' "
                                        r"cannot be imported \(No module named 'apt_plugin_gone'\); install "
                                        r"apt-plugin-gone"):
        MultimodalAPTModel.from_pretrained(tmp_path / "new")


def test_a_lone_checkpoint_says_where_its_tokenizer_was_looked_for(tmp_path):
    model = tiny_model()
    path = CheckpointManager(tmp_path / "copied").save_checkpoint(model, None, None, 0, 3, [], config=model.config)
    loaded = MultimodalAPTModel.from_pretrained(path)
    with pytest.raises(Exception, match="no tokenizer") as error:
        loaded.generate_from_multimodal("what colour? ", max_length=4)
    message = str(error.value)
    assert "load it with from_pretrained" not in message  # it was
    assert f"from_pretrained found none with {path}" in message and "tokenizer/" in message


def test_saving_prints_no_progress_bars_and_loading_warns_in_one_line(tmp_path, capfd):
    model = tiny_model(use_audio=True, audio_config=TINY)
    model.save_pretrained(tmp_path / "saved")
    model.vision.save_pretrained(tmp_path / "vision")
    model.audio.save_pretrained(tmp_path / "audio")
    assert capfd.readouterr().err == ""  # transformers' "Writing model shards" bars were here
    shown = []
    with warnings.catch_warnings():  # shown as the default showwarning shows them: through formatwarning
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: shown.append(
            warnings.formatwarning(message, category, filename, lineno, line))
        model.generate_from_multimodal("what ", audio=np.zeros(40000, np.float32), max_length=2)
    assert shown == ["warning: audio array (clip 0 of the batch): 2.50 s is longer than max_seconds = 1; the rest is "
                     "cut\n"]
