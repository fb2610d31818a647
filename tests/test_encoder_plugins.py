"""The encoder plugins across each other and the docs: the bad-input table of docs/encoders.md says the messages both
encoders give, and `pip install ./builtin_plugins/apt-plugin-vision` (then the audio one) into an environment
holding only the kernel and the SDK adds the encoder and changes nothing else; `pip uninstall` takes them away.
Each encoder's own tests (its pipeline, its options, the Encoder contract) are in its plugin's tests/, the hub
check's in sdk/tests."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from apt_sdk import UserError
from conftest import REPO, make_env


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
    assert rows[0].split()[:3] == ["apt-plugin-vision", "0.1.1", "installed"] and "encoder: clip" in rows[0]
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
