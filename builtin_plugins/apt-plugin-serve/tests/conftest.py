"""Tiny models made in seconds, and real servers: ``apt-kernel serve`` in a child process on a free loopback
port, waited for by polling ``/health``.

- ``text_run``: a run folder whose ``model/`` is a character-level APT model (autopoietic attention) trained
  for a few seconds on the standard library's docstrings, so its greedy choices are far from ties;
- ``multimodal_run``: a multimodal APT model with a CLIP-architecture vision tower and a Whisper-architecture
  audio encoder (the multimodal tutorial's tiny shapes), trained for a few seconds to answer "one", "two",
  "three" for a red, blue, green image (far from ties: 4 logits between its first and second choice); it
  also sees three tones with "four", "five", "six", which it does not learn in so few steps: what it says
  about a clip is only compared with what ``generate_from_multimodal`` says;
- ``long_run``: an untrained model with a context of 20,000 tokens, whose streams run long enough for a
  test to act while they do (a new export, a stop signal, a full queue).

A server's process starts before its model is ready (``launch``): it imports what ``apt-kernel serve``
imports (torch, the web stack, the multimodal model's encoders) while the test trains the model, then reads
its command line and runs the command (``Server.start``). Those imports are most of a server's start.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch

from apt_sdk.isolation import apt_isolate_every_test  # noqa: F401  (each test's own APT_KERNEL_HOME)

REPO = Path(__file__).resolve().parents[3]
FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
DIGIT_PROMPT, SPOKEN_PROMPT = "what digit is this? ", "which digit? "
COLOURS = {"red": "one", "blue": "two", "green": "three"}
TONES = {200: "four", 700: "five", 1500: "six"}


LAUNCHER = """
import importlib, json, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:  # only sooner: the command imports what it needs
        pass
command = json.loads(sys.stdin.readline())
from apt_kernel.cli import main
main(command, prog_name="apt-kernel")
"""
SERVE_IMPORTS = ("torch", "apt_kernel.cli", "apt_plugin_serve.app", "apt_plugin_serve.process")
MULTIMODAL_IMPORTS = ("apt_plugin_multimodal", "apt_plugin_vision.encoder", "apt_plugin_audio.encoder")


def launch(*imports: str) -> subprocess.Popen:
    """A python that imports ``SERVE_IMPORTS`` and ``imports``, then waits for the command line that
    ``Server.start`` sends it and runs it as ``apt-kernel`` runs it."""
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, *SERVE_IMPORTS, *imports], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """``apt-kernel serve PATH ARGS`` in a child process: ``process``, one that ``launch`` started, or a new one."""

    path: Path
    args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    port: int = 0
    output: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.port = free_port()
        self.process = self.process or launch()
        self.process.stdin.write(json.dumps(["serve", str(self.path), "--port", str(self.port), *self.args]) + "\n")
        self.process.stdin.close()
        os.set_blocking(self.process.stdout.fileno(), False)
        return self

    def read_output(self) -> str:
        """What it has printed so far (read now, without waiting for more)."""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.process.stdout.fileno(), 1 << 16):
                self.output.append(chunk)
        return b"".join(self.output).decode(errors="replace")

    def ready(self, timeout: float = 120) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {self.read_output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"the server did not answer within {timeout} s")

    def client(self, **options):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=options.pop("api_key", "unused"), max_retries=0,
                             **options)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> str:
        """Stop it (SIGTERM, then SIGKILL after 20 s) and return what it printed."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and not self.process.stdout.closed:
            text = self.read_output()  # all of it: the pipe has ended with the process
            self.process.stdout.close()
            return text
        return b"".join(self.output).decode(errors="replace")


def wait_for(condition, timeout: float = 60, what: str = "a condition"):
    """Poll ``condition()`` until it returns something true (no fixed sleeps in the tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def train_text_model(folder: Path, context: int = 256, steps: int = 120) -> Path:
    """A run folder with ``model/``: a character APT model trained on the stdlib's docstrings."""
    from apt_plugin_lm.corpus import stdlib_docstrings
    from apt_plugin_lm.model import APTConfig, APTLargeModel
    from apt_plugin_lm.tokenization import CharTokenizer

    texts = stdlib_docstrings(max_chars=30_000)
    tokenizer = CharTokenizer.train(texts)
    stream = torch.tensor([i for text in texts for i in (*tokenizer.encode(text), tokenizer.eos_id)])
    torch.manual_seed(0)
    model = APTLargeModel(APTConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_heads=2, num_layers=1, d_ff=64,
                                    max_seq_len=context))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    starts = torch.randint(0, len(stream) - 33, (steps, 16), generator=torch.Generator().manual_seed(0))
    for rows in starts:
        batch = torch.stack([stream[i:i + 33] for i in rows.tolist()])
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_run(folder, model.eval(), tokenizer)
    return folder


def save_run(folder: Path, model, tokenizer) -> None:
    """``folder/model/`` as the trainer exports it (config, weights, tokenizer/), and a pipeline.json."""
    model.save_pretrained(folder / "model")
    tokenizer.save(folder / "model" / "tokenizer")
    (folder / "pipeline.json").write_text(json.dumps({"pipeline": {"name": folder.name}}))


def png(colour: str, size: int = 8) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def tone(hertz: float, seconds: float = 0.5, rate: int = 8000) -> bytes:
    """A WAV file's bytes (16-bit mono), written with the standard library."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * hertz * i / rate)))
                                 for i in range(int(seconds * rate))))
    return buffer.getvalue()


def train_multimodal_model(folder: Path, steps: int = 40) -> Path:
    from apt_plugin_lm.model import APTConfig
    from apt_plugin_lm.tokenization import CharTokenizer
    from apt_plugin_multimodal import MultimodalAPTModel

    tokenizer = CharTokenizer.train([DIGIT_PROMPT, SPOKEN_PROMPT, "zero one two three four five six seven eight nine"])
    torch.manual_seed(0)
    model = MultimodalAPTModel(APTConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_heads=2, num_layers=1,
                                         d_ff=64, max_seq_len=64), use_vision=True, use_audio=True,
                               vision_config={"size": "tiny", "image_size": 16, "patch_size": 4},
                               audio_config={"size": "tiny", "max_seconds": 1.0})
    model.tokenizer = tokenizer
    clips = folder / "clips"
    clips.mkdir(parents=True)
    for hertz in TONES:
        (clips / f"{hertz}.wav").write_bytes(tone(hertz))
    pixels = model.vision.preprocess([png(c) for c in COLOURS])
    features, frames = model.audio.preprocess([str(clips / f"{h}.wav") for h in TONES])

    def batch(prompt: str, answers) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[tokenizer.bos_id, *tokenizer.encode(prompt + a), tokenizer.eos_id] for a in answers]
        width, start = max(map(len, rows)), len(tokenizer.encode(prompt))
        ids, labels = torch.zeros(len(rows), width, dtype=torch.long), torch.full((len(rows), width), -100)
        for i, row in enumerate(rows):
            ids[i, :len(row)], labels[i, start:len(row) - 1] = torch.tensor(row), torch.tensor(row[start + 1:])
        return ids, labels

    (image_ids, image_labels), (audio_ids, audio_labels) = batch(DIGIT_PROMPT, COLOURS.values()), \
        batch(SPOKEN_PROMPT, TONES.values())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(image_ids, image=pixels).flatten(0, 1), image_labels.flatten()) \
            + torch.nn.functional.cross_entropy(model(audio_ids, audio=features, audio_mask=frames).flatten(0, 1),
                                                audio_labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder / "model")
    (folder / "pipeline.json").write_text(json.dumps({"pipeline": {"name": "digits"},
                                                      "tool": {"serve": {"transcription_prompt": SPOKEN_PROMPT}}}))
    return folder


def long_model(folder: Path, seed: int = 0) -> Path:
    """An untrained model with a context of 20,000 tokens (a char tokenizer of the alphabet)."""
    from apt_plugin_lm.model import APTConfig, APTLargeModel
    from apt_plugin_lm.tokenization import CharTokenizer

    tokenizer = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz "])
    torch.manual_seed(seed)
    model = APTLargeModel(APTConfig(vocab_size=tokenizer.vocab_size, d_model=16, num_heads=2, num_layers=1, d_ff=32,
                                    max_seq_len=20_000))
    save_run(folder, model.eval(), tokenizer)
    return folder


@pytest.fixture(scope="session")
def text_run(tmp_path_factory) -> Path:
    return train_text_model(tmp_path_factory.mktemp("text") / "docs")


@pytest.fixture(scope="session")
def text_model(text_run):
    from apt_plugin_lm.model import APTLargeModel
    from apt_plugin_lm.tokenization import load_tokenizer

    return APTLargeModel.from_pretrained(text_run / "model").eval(), load_tokenizer(text_run / "model" / "tokenizer")


def serving(request, run: str, args: tuple[str, ...] = (), imports: tuple[str, ...] = ()) -> Iterator[Server]:
    """A server of the run that fixture ``run`` trains, launched first so its imports overlap the training."""
    server = Server(Path(), args, launch(*imports))
    try:
        server.path = request.getfixturevalue(run)
        server.start().ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def text_server(request) -> Iterator[Server]:
    yield from serving(request, "text_run")


@pytest.fixture(scope="session")
def multimodal_run(tmp_path_factory) -> Path:
    pytest.importorskip("apt_plugin_multimodal", reason="needs apt-plugin-multimodal (the [multimodal] extra)")
    return train_multimodal_model(tmp_path_factory.mktemp("multimodal") / "digits")


@pytest.fixture(scope="session")
def multimodal_model(multimodal_run):
    from apt_plugin_multimodal import MultimodalAPTModel

    return MultimodalAPTModel.from_pretrained(multimodal_run).eval()


@pytest.fixture(scope="session")
def multimodal_server(request) -> Iterator[Server]:
    pytest.importorskip("apt_plugin_multimodal", reason="needs apt-plugin-multimodal (the [multimodal] extra)")
    limits = ("--allow-image-urls", "--max-media-mb", "0.05", "--max-body-mb", "0.5")
    yield from serving(request, "multimodal_run", limits, MULTIMODAL_IMPORTS)


def greedy(model, tokenizer, prompt: str, max_new: int) -> str:
    """What ``APTLargeModel.generate`` answers alone: the prompt after <bos>, greedy, up to <eos>."""
    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(prompt)]])
    out = model.generate(ids, max_length=ids.shape[1] + max_new, do_sample=False, eos_token_id=tokenizer.eos_id)
    new = out[0, ids.shape[1]:].tolist()
    return tokenizer.decode(new[:new.index(tokenizer.eos_id)] if tokenizer.eos_id in new else new)


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
