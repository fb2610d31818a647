"""A third party's encoders stand in for CLIP and Whisper: tests/small-encoders, a distribution written from
docs/encoders.md and docs/writing-plugins.md alone (a small CNN over grey images, a 1-D CNN over log-mel
spectrograms; the SDK and its own libraries, no builtin encoder), is pip-installed beside multimodal-apt and used
through [encoders.image] and [encoders.audio] by the multimodal tutorial's tiny digits and spoken-digits runs
(docs/tutorials/multimodal.md): each trains to well above chance (10 classes), and its exported model is rebuilt
with that encoder by MultimodalAPTModel.from_pretrained. Runs are one-threaded, so the accuracies are exact."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, make_env

pytestmark = pytest.mark.slow_tier  # in the slow tier (pytest --slow-tier; CI runs it after the README's command)

# the tutorial's tiny model (docs/tutorials/multimodal.md, tiny.sh)
TINY = ["--no-progress", "--set", "data.num_workers=0", "--set", "trainer.log_every=0", "--set",
        "trainer.learning_rate=3e-3", "--set", "model.d_model=32", "--set", "model.d_ff=64", "--set",
        "model.num_heads=2", "--set", "model.num_layers=1"]
MULTIMODAL = {"apt-plugin-multimodal", "apt-plugin-lm", "apt-plugin-vision", "apt-plugin-audio", "apt-plugin-trainer"}
FSDD = SHARED_DATA / "fsdd" / "recordings"


@pytest.fixture(scope="module")
def python(tmp_path_factory) -> Path:
    """A venv of the kernel, the SDK and multimodal-apt with what it declares, and small-encoders pip-installed (a
    copy: building must not write into the repo; --no-index: nothing is fetched)."""
    root = tmp_path_factory.mktemp("third-party")
    python = make_env(root / "env", MULTIMODAL)
    source = shutil.copytree(REPO / "tests" / "small-encoders", root / "small-encoders")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                              "--no-build-isolation", str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    return python


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same sums in the same order, the same accuracy
    done = subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _tutorial(python: Path, work: Path, pipeline: str, *overrides: str) -> float:
    """The tutorial's run with ``overrides``; its test accuracy."""
    run = _run(python, "-m", "apt_kernel.cli", "run", str(REPO / "pipelines" / pipeline), *TINY, *overrides, cwd=work)
    found = re.search(r"test accuracy\s+([\d.]+)% of (\d+)", run.stdout)
    assert found, run.stdout[-3000:]
    return float(found[1]) / 100


def _rebuilt(python: Path, work: Path, run: str, media: str) -> dict:
    """What from_pretrained rebuilds of the exported model, in the venv that has the plugin."""
    code = ("import json, sys; from apt_plugin_multimodal import MultimodalAPTModel; "
            "m = MultimodalAPTModel.from_pretrained(sys.argv[1]); e = getattr(m, sys.argv[2]); "
            "print(json.dumps({'class': type(e).__module__ + '.' + type(e).__name__, 'frozen': e.frozen}))")
    return json.loads(_run(python, "-c", code, str(work / "runs" / run), media, cwd=work).stdout)


@pytest.mark.slow
def test_a_third_party_image_encoder_trains_the_tiny_digits_tutorial_above_chance(python, tmp_path):
    listed = _run(python, "-m", "apt_kernel.cli", "plugins", "list", cwd=tmp_path).stdout
    assert re.search(r"small-encoders +0\.1\.0 +installed encoder: mel-cnn, small-cnn", listed), listed
    _run(python, "-m", "apt_kernel.cli", "multimodal", "prepare", "digits", "--out", "data/digits", cwd=tmp_path)
    accuracy = _tutorial(python, tmp_path, "multimodal-digits.toml", "--set", "trainer.epochs=8", "--set",
                         "data.image_size=8", "--set", "data.image_shift=0", "--set", 'encoders.image.use="small-cnn"')
    print(f"digits with small-cnn: test accuracy {accuracy:.2%}")
    assert accuracy > 0.2, accuracy  # chance is 0.1; measured 48.33%
    assert _rebuilt(python, tmp_path, "multimodal-digits", "vision") == {"class": "small_encoders.image.SmallCNN",
                                                                         "frozen": False}


@pytest.mark.slow
@pytest.mark.skipif(not FSDD.is_dir(), reason=f"the Free Spoken Digit Dataset is not at {FSDD}")
def test_a_third_party_audio_encoder_trains_the_tiny_spoken_digits_tutorial_above_chance(python, tmp_path):
    _run(python, "-m", "apt_kernel.cli", "multimodal", "prepare", "fsdd", "--source", str(FSDD), "--out", "data/fsdd",
         cwd=tmp_path)
    for split in ("train", "test"):  # the tutorial's first run: every third recording (sed -n '1~3p')
        manifest = tmp_path / "data" / "fsdd" / f"{split}.jsonl"
        manifest.write_text("".join(f"{line}\n" for line in manifest.read_text().splitlines()[::3]))
    accuracy = _tutorial(python, tmp_path, "multimodal-spoken-digits.toml", "--set", "trainer.max_steps=300",
                         "--set", 'encoders.audio.use="mel-cnn"')
    print(f"spoken digits with mel-cnn: test accuracy {accuracy:.2%}")
    assert accuracy > 0.2, accuracy  # chance is 0.1; measured 86.00%
    assert _rebuilt(python, tmp_path, "multimodal-spoken-digits", "audio") == {"class": "small_encoders.audio.MelCNN",
                                                                               "frozen": False}
