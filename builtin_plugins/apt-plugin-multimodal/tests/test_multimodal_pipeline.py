"""The multimodal data and model as pipeline components, trained by the kernel's trainer: a manifest of
coloured squares (and a few tones), a bad record failing or skipped by its line, and the trained run
loaded back with from_pretrained to generate."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from apt_plugin_multimodal import MultimodalAPTModel
from apt_sdk import PipelineError, hookimpl
from apt_sdk.testing import IsolatedKernel

# trains; the plugin's quick tests are the model's and the tasks'. In the slow tier (pytest --slow-tier)
pytestmark = [pytest.mark.slow, pytest.mark.slow_tier]
REPO = Path(__file__).resolve().parents[3]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}

PIPELINE = """
[pipeline]
name = "colours"
seed = 0

[data]
use = "multimodal"
train_manifest = "{folder}/train.jsonl"
val_manifest = "{folder}/val.jsonl"
image_size = 16
batch_size = 8
num_workers = 0
max_length = 24

[model]
use = "multimodal-apt"
d_model = 32
num_heads = 2
num_layers = 1
d_ff = 64
vision_size = "tiny"
audio_size = "tiny"

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
epochs = 1
max_steps = 40
learning_rate = 3e-3
log_every = 20
eval_every = 20
"""


def write_manifests(folder, bad_line: bool = False) -> None:
    rng = np.random.default_rng(0)
    (folder / "media").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 48), ("val", 12)):
        lines = []
        for i in range(n):
            name = list(COLOURS)[i % 3]
            path = folder / "media" / f"{split}{i}.png"
            noise = rng.integers(-20, 20, (24, 24, 3))
            Image.fromarray(np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8)).save(path)
            lines.append({"prompt": "colour? ", "text": name, "image_path": f"media/{path.name}"})
        if split == "train":
            sf.write(folder / "media" / "tone.wav", 0.3 * np.sin(np.arange(8000) * 0.3), 8000)
            lines.append({"prompt": "sound? ", "text": "tone", "audio_path": "media/tone.wav"})
            lines.append({"prompt": "plain? ", "text": "text"})  # text only, in the same batches
            if bad_line:
                (folder / "media" / "broken.png").write_bytes(b"not a picture")
                lines.append({"prompt": "colour? ", "text": "red", "image_path": "media/broken.png"})
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_trains_through_the_kernel_and_generates_from_the_run(run_pipeline, tmp_path):
    write_manifests(tmp_path / "data")
    result, context = run_pipeline(PIPELINE.format(folder=tmp_path / "data"))
    assert result["steps"] == 7 and np.isfinite(result["val_loss"])  # 51 records / 8 = 7 batches, 1 epoch
    model = MultimodalAPTModel.from_pretrained(context.run_dir)
    assert model.vision is not None and model.audio is not None
    answer = model.generate_from_multimodal("colour? ", image=Image.new("RGB", (24, 24), COLOURS["red"]),
                                            max_length=8)
    assert isinstance(answer, str) and len(answer) <= 8
    # a checkpoint file loads too, with the tokenizer the trainer saved beside the checkpoints
    checkpoint = sorted((context.run_dir / "checkpoints").glob("*.pt"))[-1]
    from_checkpoint = MultimodalAPTModel.from_pretrained(checkpoint)
    assert from_checkpoint.generate_from_multimodal("colour? ", image=Image.new("RGB", (24, 24), COLOURS["red"]),
                                                    max_length=8) == answer
    # the example script answers about an image, and generates from text only (captioning is the first
    # without --question)
    Image.new("RGB", (24, 24), COLOURS["red"]).save(tmp_path / "red.png")
    example = [sys.executable, str(REPO / "examples" / "multimodal_inference.py"), str(context.run_dir)]
    for extra, expected in ((["--image", str(tmp_path / "red.png"), "--question", "colour? ", "--max-length", "8"],
                             f"answer: {answer}\n"),
                            (["--prompt", "plain? ", "--max-length", "5"], "text: ")):
        run = subprocess.run(example + extra, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and run.stdout.startswith(expected), run.stderr
    # the benchmark that scores a saved model on a manifest, as the multimodal-accuracy callback does, with the
    # model's own encoders' preprocessing (the run's batches'), also once copied out of its run
    outside = shutil.copytree(context.run_dir / "model", tmp_path / "elsewhere" / "model")
    lines = []
    for model_dir in (context.run_dir / "model", outside):
        scored = subprocess.run([sys.executable, str(REPO / "bench" / "multimodal_score.py"), str(model_dir),
                                 str(tmp_path / "data" / "val.jsonl"), "--max-new-tokens", "8"],
                                capture_output=True, text=True, timeout=120)
        assert scored.returncode == 0, scored.stderr
        assert scored.stdout.startswith("max_length 24 (the model's, unless given); media preprocessed by the "
                                        "model's encoders: image VisionEncoder, audio AudioEncoder\n"), scored.stdout
        found = re.search(r"val.jsonl: 12 examples in \d+ s\n(  accuracy +\d+\.\d\d%\n)$", scored.stdout)
        assert found, scored.stdout
        lines.append(found[1])
    assert lines[0] == lines[1]
    for argv, message in (([str(tmp_path / "nowhere"), "--prompt", "x"], "nowhere: no such folder or checkpoint file"),
                          ([str(context.run_dir), "--image", str(tmp_path / "none.png")], "none.png': no such file")):
        run = subprocess.run([*example[:2], *argv], capture_output=True, text=True, timeout=120)
        assert (run.returncode, run.stdout) == (2, "") and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_sigterm_to_the_process_group_with_loader_workers_saves_and_says_how_to_resume(tmp_path):
    """`timeout`, a batch scheduler or Ctrl-C signal the whole process group, loader workers included; a worker
    that died of the signal made the main process raise mid-step instead of finishing it and saving."""
    write_manifests(tmp_path / "data")
    (tmp_path / "p.toml").write_text(PIPELINE.format(folder=tmp_path / "data"))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "apt_kernel.cli", "run", str(tmp_path / "p.toml"), "--no-progress",
               "--set", "data.num_workers=1", "--set", "trainer.max_steps=100000", "--set", "trainer.epochs=100000",
               "--set", "trainer.eval_every=0", "--set", "trainer.temp_checkpoint_freq=5",
               "--set", f"pipeline.output_dir={str(out)!r}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, APT_KERNEL_HOME=str(tmp_path / "home")))
    deadline = time.time() + 120
    while not list((out / "temp").glob("*.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # well into the steps after that save
    os.killpg(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    assert "interrupted by SIGTERM at step" in output and "Traceback" not in output, output
    step = int(output.split("interrupted by SIGTERM at step ")[1].split(";")[0])
    assert (out / "temp" / f"apt_temp_step{step}.pt").exists(), output
    # the command it prints continues from that step, loader workers and all
    command = shlex.split(re.search(r"resume with: (.+)", output).group(1))
    assert command[-2:] == ["--resume", "latest"], output
    resumed = subprocess.run([sys.executable, "-m", "apt_kernel.cli", *command[1:-2],
                              "--set", f"trainer.max_steps={step + 2}", *command[-2:]], capture_output=True, text=True,
                             env=dict(os.environ, APT_KERNEL_HOME=str(tmp_path / "home")), timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {out / 'temp' / f'apt_temp_step{step}.pt'}" in resumed.stdout + resumed.stderr


def test_a_bad_record_fails_by_its_line_or_is_skipped(run_pipeline, tmp_path):
    write_manifests(tmp_path / "data", bad_line=True)
    text = PIPELINE.format(folder=tmp_path / "data")
    with pytest.raises(PipelineError, match=r"\[data\] train_manifest.*line 51 of train.jsonl.*cannot be read"):
        run_pipeline(text)
    reported = []

    class Listener:  # stands in for the error log: it receives what the run reports
        @hookimpl
        def error_reported(self, error):
            reported.append(error)

    kernel = IsolatedKernel()
    kernel.add(Listener(), {"kernel_api": "^1.0", "version": "1.0.0"}, name="listener")
    result, context = run_pipeline(text, overrides=["data.on_bad_record='skip'", "trainer.max_steps=2"], kernel=kernel)
    assert context.data.skipped == {"train": [("line 51 of train.jsonl", context.data.skipped["train"][0][1])]}
    assert ("skipped records", "1 (train: 1; on_bad_record = 'skip')") in result["summary"]
    assert [(e["type"], e["severity"]) for e in reported] == [("SkippedRecord", "warning")]
    assert "line 51 of train.jsonl" in reported[0]["message"] and reported[0]["run_dir"] == str(context.run_dir)


def test_a_misspelt_encoder_field_is_refused_by_its_option(run_pipeline, tmp_path):
    write_manifests(tmp_path / "data")
    with pytest.raises(PipelineError, match=r"\[model\] vision.*unknown CLIPVisionConfig field 'num_hidden_layer' "
                                            r"\(did you mean 'num_hidden_layers'\?\)"):
        run_pipeline(PIPELINE.format(folder=tmp_path / "data"), overrides=["model.vision={num_hidden_layer=1}"])


def test_train_multimodal_model_runs_through_the_kernel(tmp_path, monkeypatch):
    from apt_plugin_multimodal import train_multimodal_model

    write_manifests(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "data")  # records' media paths are relative to the working folder
    train = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    model, tokenizer, config = train_multimodal_model(
        train, epochs=1, batch_size=8, checkpoint_dir=tmp_path / "run", test_data=tmp_path / "data" / "val.jsonl",
        data={"image_size": 16, "max_length": 24}, trainer={"max_steps": 3},
        model={"d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64, "vision_size": "tiny",
               "audio_size": "tiny"})
    assert config.use_vision and config.use_audio and tokenizer.vocab_size == model.apt_config.vocab_size
    assert (tmp_path / "run" / "checkpoints").is_dir()
    saved = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert saved["data"]["train_records"][0]["image_path"] == str(tmp_path / "data" / "media" / "train0.png")
    with pytest.raises(ValueError, match=r"data_list\[2\]: a record is a dict"):
        train_multimodal_model(train[:2] + ["oops"], checkpoint_dir=tmp_path / "other")


def test_clips_longer_than_the_window_are_reported_once_not_per_clip_and_epoch(tmp_path):
    # FSDD has 20 clips over a second: each was warned about at build and again at every read (hundreds of lines)
    import warnings

    from apt_plugin_audio import AudioPreprocessor
    from apt_plugin_lm.tokenization import CharTokenizer
    from apt_plugin_multimodal.dataset import MultimodalDataset

    records = []
    for i, seconds in enumerate([1.5, 0.5, 2.0, 1.2]):
        sf.write(tmp_path / f"{i}.wav", 0.3 * np.sin(np.arange(int(16000 * seconds)) * 0.3), 16000)
        records.append({"prompt": "digit? ", "text": "one", "audio_path": str(tmp_path / f"{i}.wav")})
    tokenizer = CharTokenizer.train(["digit? one"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = MultimodalDataset(records, tokenizer, audio_processor=AudioPreprocessor.for_window(1.0))
        items = [data[i] for i in range(len(data)) for _ in range(2)]
    about_clips = [str(w.message) for w in caught if "max_seconds" in str(w.message)]
    assert [message.split(", e.g.")[0] for message in about_clips] == \
        ["3 audio clips longer than the audio window are cut to it"]
    assert "0.wav" in about_clips[0] and "1.50 s is longer than max_seconds = 1" in about_clips[0]
    assert len(items) == 8
