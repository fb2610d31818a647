"""The encoder plugins as a user meets them: a pipeline names `clip` and `whisper` with options checked
like any other, and `pip install ./builtin_plugins/apt-plugin-vision` into an environment holding only the
kernel and the SDK adds the encoder and changes nothing else; `pip uninstall` takes it away again."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from apt_sdk import PipelineError, hookimpl
from apt_sdk.testing import IsolatedKernel
from conftest import REPO, make_env

PIPELINE = """
[pipeline]
name = "encoders"

[data]
use = "probe-data"

[encoders.image]
use = "clip"
size = "tiny"

[encoders.audio]
use = "whisper"
size = "tiny"
max_seconds = 1.0

[model]
use = "probe-model"

[loss]
use = "probe-loss"

[trainer]
use = "probe-trainer"
"""


class ProbeTrainer:
    """A third-party trainer that only encodes one image and one clip with the pipeline's encoders."""

    def fit(self, context) -> dict:
        image, audio = context.encoders["image"], context.encoders["audio"]
        embedding = image.encode_batch([Image.new("RGB", (40, 30), (200, 30, 30))])
        frames = audio.encode([np.zeros(8000, np.float32)])
        fused = context.model(torch.cat([embedding, frames.mean(1)], dim=1))
        return {"embedding": list(embedding.shape), "frames": list(frames.shape), "fused": list(fused.shape)}


class Probe:
    @staticmethod
    @hookimpl
    def register_data(register):
        register("probe-data", lambda options, context: object())

    @staticmethod
    @hookimpl
    def register_models(register):
        # the model reads the encoders built before it, as a multimodal model does
        register("probe-model", lambda options, context: torch.nn.Linear(
            context.encoders["image"].output_dim + context.encoders["audio"].output_dim, 2))

    @staticmethod
    @hookimpl
    def register_losses(register):
        register("probe-loss", lambda options, context: object())

    @staticmethod
    @hookimpl
    def register_trainers(register):
        register("probe-trainer", lambda options, context: ProbeTrainer())


def _kernel() -> IsolatedKernel:
    kernel = IsolatedKernel()  # the installed plugins, and the probe
    kinds = {"data": "probe-data", "model": "probe-model", "loss": "probe-loss", "trainer": "probe-trainer"}
    kernel.add(Probe(), {"kernel_api": "^1.0", "provides": {k: {n: {}} for k, n in kinds.items()}}, name="probe")
    return kernel


def test_a_pipeline_names_the_clip_and_whisper_encoders(run_pipeline):
    result, context = run_pipeline(PIPELINE, kernel=_kernel())
    assert result == {"embedding": [1, 16], "frames": [1, 50, 32], "fused": [1, 2]}
    assert type(context.encoders["image"]).__name__ == "VisionEncoder"
    assert not any(p.requires_grad for p in context.encoders["audio"].parameters())  # freeze_encoder = true


@pytest.mark.parametrize("override, message", [
    ("encoders.audio.max_seconds=0.03", r"\[encoders.audio\] max_seconds.*not a whole number of 20 ms"),
    ("encoders.image.size='huge'", r"\[encoders.image\] size.*'tiny', 'small' or 'base'"),
    ("encoders.image.model_name_or_path='no/such-model'",
     r"\[encoders.image\] model_name_or_path.*cannot load 'no/such-model'.*local folder"),
    ("encoders.image.image_size=36", r"\[encoders.image\] image_size.*must divide by"),
    ("encoders.image.freeze_encoder='yes'", r"\[encoders.image\] freeze_encoder"),
])
def test_bad_encoder_options_are_named(run_pipeline, override, message):
    with pytest.raises(PipelineError, match=message):
        run_pipeline(PIPELINE, overrides=[override], kernel=_kernel())


def _apt(python, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "apt_kernel.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _pip(python, *args: str, cwd) -> subprocess.CompletedProcess:
    done = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_pip_install_adds_the_encoder_and_changes_nothing_else(tmp_path):
    python = make_env(tmp_path / "env", set())  # the kernel and the SDK, no plugin
    before_list = _apt(python, "plugins", "list", cwd=tmp_path).stdout
    before_freeze = _pip(python, "freeze", cwd=tmp_path).stdout
    assert "clip" not in before_list and "apt-plugin-vision" not in before_freeze

    for name in ("apt-plugin-vision", "apt-plugin-audio"):  # a copy: building must not write into the repo
        shutil.copytree(REPO / "builtin_plugins" / name, tmp_path / name, ignore=shutil.ignore_patterns("tests"))
    # --no-index: everything the plugin needs must already be here; nothing may be fetched
    _pip(python, "install", "-q", "--no-index", "--no-build-isolation", "./apt-plugin-vision", cwd=tmp_path)
    listed = _apt(python, "plugins", "list", cwd=tmp_path).stdout
    rows = [line for line in listed.splitlines() if line.startswith("apt-plugin-")]
    assert before_list.strip() == "no plugins installed" and len(rows) == 1, listed
    assert rows[0].split()[:3] == ["apt-plugin-vision", "0.1.0", "installed"] and "encoder: clip" in rows[0]
    frozen = set(_pip(python, "freeze", cwd=tmp_path).stdout.splitlines()) - set(before_freeze.splitlines())
    assert [line.split(" @ ")[0].split("==")[0] for line in frozen] == ["apt-plugin-vision"], frozen
    doctor = _apt(python, "plugins", "doctor", cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    encode = subprocess.run([str(python), "-c", "from PIL import Image; from apt_plugin_vision import VisionEncoder; "
                             "print(tuple(VisionEncoder(size='tiny').encode_image(Image.new('L', (9, 9))).shape))"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert encode.stdout.strip() == "(1, 16)", encode.stderr

    _pip(python, "install", "-q", "--no-index", "--no-build-isolation", "./apt-plugin-audio", cwd=tmp_path)
    listed = _apt(python, "plugins", "list", cwd=tmp_path).stdout
    assert "encoder: whisper" in listed and "encoder: clip" in listed
    assert _apt(python, "plugins", "doctor", cwd=tmp_path).returncode == 0

    _pip(python, "uninstall", "-y", "-q", "apt-plugin-vision", "apt-plugin-audio", cwd=tmp_path)
    assert _apt(python, "plugins", "list", cwd=tmp_path).stdout == before_list
    assert _pip(python, "freeze", cwd=tmp_path).stdout == before_freeze
