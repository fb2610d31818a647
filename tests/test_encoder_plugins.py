"""The encoder plugins as a user meets them: a pipeline names `clip` and `whisper` with options checked
like any other, and `pip install ./builtin_plugins/apt-plugin-vision` into an environment holding only the
kernel and the SDK adds the encoder and changes nothing else; `pip uninstall` takes it away again."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from apt_sdk import PipelineError, UserError, hookimpl
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


class ProbeData:
    """No batches: the probe trainer encodes its own image and clip (the kernel checks the data protocol)."""

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return 0

    def train_batches(self, epoch: int, start: int = 0):
        return iter(())

    def val_batches(self):
        return iter(())


class Probe:
    @staticmethod
    @hookimpl
    def register_data(register):
        register("probe-data", lambda options, context: ProbeData())

    @staticmethod
    @hookimpl
    def register_models(register):
        # the model reads the encoders built before it, as a multimodal model does
        register("probe-model", lambda options, context: torch.nn.Linear(
            context.encoders["image"].output_dim + context.encoders["audio"].output_dim, 2))

    @staticmethod
    @hookimpl
    def register_losses(register):
        register("probe-loss", lambda options, context: torch.nn.functional.mse_loss)

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
    # what to run and what to set in the pipeline, not the Python API's "model_name_or_path=None"
    ("encoders.image.model_name_or_path='no/such-model'",
     r"\[encoders.image\] model_name_or_path.*cannot load 'no/such-model': there is no folder by that name, and as "
     r"a hub id .*\. Download it where there is a network \(hf download no/such-model --local-dir models/such-model\), "
     r"bring that folder here and set model_name_or_path = \"models/such-model\"; or leave model_name_or_path out "
     r"to train a new encoder of size = \"tiny\", \"small\" or \"base\"$"),
    ("encoders.audio.model_name_or_path='no/such-whisper'",
     r"\[encoders.audio\] model_name_or_path.*hf download no/such-whisper --local-dir models/such-whisper\)"),
    ("encoders.image.image_size=36", r"\[encoders.image\] image_size.*must divide by"),
    ("encoders.image.freeze_encoder='yes'", r"\[encoders.image\] freeze_encoder"),
])
def test_bad_encoder_options_are_named(run_pipeline, override, message):
    with pytest.raises(PipelineError, match=message):
        run_pipeline(PIPELINE, overrides=[override], kernel=_kernel())


class SilentProxy:
    """A proxy that accepts connections and never answers (a hung corporate proxy); it counts the connections."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self.server.accept()[0])
            except OSError:  # closed
                return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture()
def hub_behind(monkeypatch):
    """The hub's client, made again through a proxy (or offline); the shared client is dropped after the test."""
    import huggingface_hub
    from huggingface_hub import constants

    proxy = SilentProxy()
    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(variable, proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)  # the hub's own setting: how long one request waits
    huggingface_hub.close_session()
    yield proxy, constants
    huggingface_hub.close_session()
    proxy.close()


@pytest.mark.parametrize("offline", [False, True])
def test_a_hub_id_without_a_hub_fails_after_one_request_or_none(hub_behind, monkeypatch, offline):
    """Behind a proxy that never answers, a hub id hung for ten minutes (transformers' five retries of each file);
    offline it took 23-31 s of retries. Now: one request within the hub's metadata timeout, or none offline."""
    from apt_plugin_audio import AudioEncoder
    from apt_plugin_vision import VisionEncoder

    proxy, constants = hub_behind
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    for encoder, name in ((VisionEncoder, "apt-kernel-tests/no-clip"), (AudioEncoder, "apt-kernel-tests/no-whisper")):
        before = len(proxy.connections)
        with pytest.raises(UserError) as caught:
            encoder(model_name_or_path=name)
        reason = ("it is not in the Hugging Face cache and HF_HUB_OFFLINE is set" if offline else
                  "the Hugging Face hub could not be reached within 1 s")
        assert f"cannot load {name!r}" in str(caught.value) and reason in str(caught.value), caught.value
        assert f"hf download {name} --local-dir DIR" in str(caught.value)
        assert len(proxy.connections) - before == (0 if offline else 1), encoder


def _bad_inputs(folder, monkeypatch) -> dict:
    """Each row of docs/encoders.md's "Bad input" table: how to make that input, for which preprocessor."""
    import io

    import soundfile as sf

    png = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(png, format="PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[:len(png.getvalue()) // 2])
    (folder / "notes.png").write_text("my notes, not a picture\n" * 20)
    (folder / "big.png").write_bytes(png.getvalue())
    (folder / "empty.wav").write_bytes(b"")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)))
    sf.write(folder / "none.wav", np.zeros(0, np.float32), 16_000)
    nan = np.zeros(800, np.float32)
    nan[7] = np.nan
    sf.write(folder / "nan.wav", nan, 8000, subtype="FLOAT")

    def big():
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)
        return folder / "big.png"

    return {"a missing file": ("image", lambda: folder / "missing.png"),
            "a corrupt or truncated image": ("image", lambda: folder / "truncated.png"),
            "a file that is not an image": ("image", lambda: folder / "notes.png"),
            "an image of zero width or height": ("image", lambda: Image.new("RGB", (0, 0))),
            "more pixels than Pillow's limit": ("image", big),
            "an empty audio file": ("audio", lambda: folder / "empty.wav"),
            "a corrupt or non-audio file": ("audio", lambda: folder / "corrupt.wav"),
            "a WAV with no samples, an empty array": ("audio", lambda: folder / "none.wav"),
            "NaN or infinite samples": ("audio", lambda: folder / "nan.wav")}


def test_the_bad_input_table_of_the_encoders_guide_says_the_real_messages(tmp_path, monkeypatch):
    """The guide's table said `contains NaN or infinite samples` where a NaN file said librosa's "Audio buffer is
    not finite everywhere"; every row is now made and its message compared with the table."""
    import re

    from apt_plugin_audio import AudioPreprocessor
    from apt_plugin_vision import ImagePreprocessor

    text = (REPO / "docs" / "encoders.md").read_text()
    table = [line for line in text.split("## Bad input", 1)[1].split("\n## ")[0].splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    inputs = _bad_inputs(tmp_path, monkeypatch)
    preprocess = {"image": ImagePreprocessor.for_size(32), "audio": AudioPreprocessor.for_window(1.0)}
    assert len(rows) == len(inputs)
    for cell, ends in rows:
        kind, make = next(value for key, value in inputs.items() if cell.startswith(key))
        with pytest.raises(UserError) as caught:
            preprocess[kind]([make()], where=["record 3"])
        endings = [re.escape(e).replace(re.escape("(...)"), ".*") for e in re.findall(r"`([^`]+)`", ends)]
        assert any(re.search(f"{e}$", str(caught.value)) for e in endings), (cell, str(caught.value))


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
