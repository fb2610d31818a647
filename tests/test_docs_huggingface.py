"""docs/huggingface.md run as written: its blocks in order, in one scratch folder, offline. A block titled with a
file name (``title="lora.toml"``) is written to that file; a ``bash`` or ``python`` block is run (one titled
"Illustration: ..." says why it is not); a ``text`` block right after a run block is its expected output: each
of its lines must appear in what the block printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs_tutorials import FENCE

from conftest import REPO

pytestmark = pytest.mark.slow_tier  # in the slow tier (pytest --slow-tier; CI runs it after the README's command)

PAGE = REPO / "docs" / "huggingface.md"
TITLE = re.compile(r'title="([^"]+)"')


def steps(text: str) -> list[tuple[str, str, str, str | None]]:
    """``(kind, name, body, expected)``: kind ``file`` (name: its path) or the block's language."""
    found = FENCE.findall(text)
    out = []
    for i, (language, info, body) in enumerate(found):
        title = TITLE.search(info)
        if title and title.group(1).startswith("Illustration: "):
            continue
        if title:
            out.append(("file", title.group(1), body, None))
        elif language in ("bash", "python"):
            follows = found[i + 1] if i + 1 < len(found) else None
            out.append((language, "", body, follows[2] if follows and follows[0] == "text" else None))
    return out


def test_the_page_writes_its_pipelines_and_runs_blocks():
    kinds = [kind for kind, *_ in steps(PAGE.read_text())]
    assert kinds.count("file") >= 2 and "bash" in kinds and "python" in kinds


@pytest.mark.slow
def test_the_hugging_face_page_runs_as_written(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    work = tmp_path / "work"
    work.mkdir()
    for number, (kind, name, body, expected) in enumerate(steps(PAGE.read_text()), 1):
        if kind == "file":
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(body)
            continue
        command = ["bash", "-euo", "pipefail", "-c", body] if kind == "bash" else [sys.executable, "-c", body]
        block = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        output = block.stdout + block.stderr
        assert block.returncode == 0, f"block {number} ({kind}):\n{body}\n{output[-3000:]}"
        for line in (expected or "").splitlines():
            assert line.strip() in output, f"block {number}: {line!r} not in its output:\n{output[-3000:]}"
