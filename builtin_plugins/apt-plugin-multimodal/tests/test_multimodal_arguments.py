"""Wrong arguments are said, by name, before anything runs: generation's lengths, temperature and top_k, media
whose batch or size does not fit, the inference example's flags and files, train_multimodal_model's arguments
(named as a Python caller wrote them, not as pipeline tables and command-line flags). Also the defaults the
original plan's code relies on: a 224 px ViT-B/32 tower, and audio under CPU bf16 autocast."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apt_plugin_lm.model import APTConfig
from apt_plugin_lm.tokenization import CharTokenizer
from apt_plugin_multimodal import MultimodalAPTModel, train_multimodal_model

REPO = Path(__file__).resolve().parents[3]
TINY = {"size": "tiny"}


@pytest.fixture(scope="module")
def model() -> MultimodalAPTModel:
    tokenizer = CharTokenizer.train(["what colour? red blue"])
    config = APTConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_heads=2, num_layers=1, max_seq_len=32)
    torch.manual_seed(0)
    built = MultimodalAPTModel(config, use_audio=True, vision_config=TINY, audio_config=TINY).eval()
    built.tokenizer = tokenizer
    return built


@pytest.mark.parametrize(("arguments", "named"), [
    (dict(max_length=-1), "max_length must be a positive number of new tokens, got -1"),
    (dict(max_length=0), "max_length"),
    (dict(do_sample=True, temperature=-1), "temperature must be a positive number"),
    (dict(do_sample=True, temperature=float("nan")), "temperature"),
    (dict(do_sample=True, top_k=-3), "top_k must be None, 0 .no limit. or a positive number of tokens, got -3"),
    (dict(image=torch.randn(1, 3, 224, 224)), "image: pixel values are 224x224 but this vision tower takes "
                                              "32x32"),
    (dict(image=torch.randn(2, 3, 32, 32)), "image has 2 rows but the text has 1"),
    (dict(image=torch.randn(3, 32, 32)), r"image: pixel values must be \[batch, 3, height, width\], got \[3, 32, 32\]"),
])
def test_generation_refuses_an_argument_that_cannot_mean_anything(model, arguments, named):
    with pytest.raises(ValueError, match=named):
        model.generate_from_multimodal("what colour? ", **arguments)


def test_forward_refuses_text_and_media_that_do_not_fit(model):
    ids = torch.randint(4, model.apt_config.vocab_size, (2, 6))
    wave = np.zeros(16000, np.float32)
    cases = [
        (dict(text_input_ids=ids[:, :0]), r"text_input_ids is empty \(\[2, 0\]\)"),
        (dict(text_input_ids=ids[0]), r"text_input_ids must be token ids \[batch, length\], got \[6\]"),
        (dict(text_input_ids=ids, image=torch.randn(3, 3, 32, 32)), "image has 3 rows but the text has 2"),
        (dict(text_input_ids=ids, image=[Image.new("RGB", (8, 8))]), "image has 1 rows but the text has 2"),
        (dict(text_input_ids=ids, audio=[wave]), "audio has 1 rows but the text has 2"),
        (dict(text_input_ids=ids, image=torch.randn(2, 3, 32, 32), image_present=torch.ones(3, dtype=torch.bool)),
         "image_present has 3 rows but the text has 2"),
        (dict(text_input_ids=ids, image=torch.randn(2, 3, 64, 64)), "64x64 but this vision tower takes 32x32"),
    ]
    for arguments, named in cases:
        with pytest.raises(ValueError, match=named):
            model(**arguments)
    assert model(ids, image=torch.randn(2, 3, 32, 32), audio=[wave, wave]).shape == (2, 6, model.apt_config.vocab_size)


def test_audio_under_cpu_bf16_autocast(model):
    ids = torch.randint(4, model.apt_config.vocab_size, (1, 6))
    wave = np.sin(np.arange(16000, dtype=np.float32) * 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, audio=[wave])  # the features were computed in bf16 and handed to numpy
        answer = model.generate_from_multimodal("what ", audio=wave, max_length=3)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all() and isinstance(answer, str)
    torch.testing.assert_close(logits.float(), model(ids, audio=[wave]), atol=0.1, rtol=0.1)


def test_the_original_plans_call_gets_a_224_px_vit_b32_tower():
    torch.manual_seed(0)
    model = MultimodalAPTModel(APTConfig(), use_vision=True, use_audio=False)
    config = model.vision.model.config  # VisionEncoder()'s: the shape of openai/clip-vit-base-patch32's tower
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (224, 32, 768, 12)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert model(ids, image=torch.randn(2, 3, 224, 224)).shape == (2, 16, 256)
    with pytest.raises(ValueError, match="pixel values are 32x32 but this vision tower takes 224x224"):
        model(ids, image=torch.randn(2, 3, 32, 32))


def example():
    spec = importlib.util.spec_from_file_location("multimodal_inference", REPO / "examples" / "multimodal_inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_inference_example_refuses_flags_it_would_ignore_and_files_that_are_no_model(model, tmp_path, capsys):
    model.save_pretrained(tmp_path / "saved")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    saved, image = str(tmp_path / "saved"), str(tmp_path / "red.png")
    main = example().main
    for argv, named in (([saved, "--question", "red? "], "--question asks about an --image or --audio"),
                        ([saved, "--image", image, "--question", "red? ", "--prompt", "x"],
                         "give --question or --prompt, not both"),
                        ([saved, "--prompt", "x", "--max-length", "-5"], "--max-length must be at least 1, got -5")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and named in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    for path, named in ((tmp_path / "notes.txt", "notes.txt: torch's safe loader refused it"),
                        (tmp_path / "empty", "empty holds no saved multimodal model")):
        assert main([str(path), "--prompt", "x"]) == 2
        error = capsys.readouterr().err
        assert named in error and "Traceback" not in error
    assert main([saved, "--image", image, "--question", "red? ", "--max-length", "3"]) == 0
    assert capsys.readouterr().out.startswith("answer: ")


def test_train_multimodal_model_names_its_own_arguments_not_pipeline_tables_and_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("APT_KERNEL_HOME", str(tmp_path / "home"))
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    records = [{"prompt": "colour? ", "text": "red", "image_path": str(tmp_path / "red.png")}] * 4
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metadata.json").write_text('{"checkpoints": []}')
    cases = [(dict(checkpoint_dir=tmp_path / "old"), "already holds a run (metadata.json); continue it with "
                                                     "resume_from='latest', replace it with overwrite=True"),
             (dict(checkpoint_dir=tmp_path / "old", resume_from="latest", overwrite=True),
              "resume_from continues the run in the folder and overwrite=True replaces it: give one"),
             (dict(data={"image_sz": 16}), "data['image_sz']: unknown option for data 'multimodal' (did you mean "
                                           "'image_size'?)"),
             (dict(epochs=0), "epochs: Input should be greater than or equal to 1"),
             (dict(model={"d_model": 30}), "model['num_heads']: d_model = 30 is not divisible by num_heads = 4"),
             (dict(test_data=tmp_path / "none.jsonl"), "test_data: file or folder not found"),
             (dict(data_list=records[:2] + ["oops"]), "data_list[2]: a record is a dict with a 'text', got str")]
    for arguments, named in cases:
        arguments = {"data_list": records, "checkpoint_dir": tmp_path / "new", **arguments}
        with pytest.raises(ValueError, match=re.escape(named)) as error:
            train_multimodal_model(**arguments)
        assert "--" not in str(error.value) and "[data]" not in str(error.value) and "<pipeline" not in str(error.value)
