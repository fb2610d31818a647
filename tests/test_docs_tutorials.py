"""The tutorials, run as written: every ``bash`` and ``python`` block of each page under docs/tutorials/,
in order, in one scratch folder per page holding a copy of ``pipelines/``, with this environment's
``apt-kernel`` first on PATH. A ``text`` block right after a block is that block's expected output:
each of its lines must appear in what the block printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

TUTORIALS = REPO / "docs" / "tutorials"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```$", re.S | re.M)
PAGES = sorted(p.name for p in TUTORIALS.glob("*.md") if p.name != "index.md")


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, expected output or None) for each runnable block, in order."""
    found = FENCE.findall(page.read_text())
    runnable = []
    for i, (language, body) in enumerate(found):
        if language in ("bash", "python"):
            follows = found[i + 1] if i + 1 < len(found) else None
            runnable.append((language, body, follows[1] if follows and follows[0] == "text" else None))
    return runnable


def test_every_tutorial_is_in_the_path_and_has_something_to_run():
    index = (TUTORIALS / "index.md").read_text()
    assert PAGES and all(f"]({page})" in index and blocks(TUTORIALS / page) for page in PAGES)
    nav = (REPO / "mkdocs.yml").read_text()
    assert all(f"tutorials/{page}" in nav for page in PAGES)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_a_tutorial_runs_as_written(page, tmp_path):
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    for number, (language, code, expected) in enumerate(blocks(TUTORIALS / page), 1):
        command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{page}, block {number} ({language}):\n{code}\n{output[-3000:]}"
        for line in (expected or "").splitlines():
            assert line.strip() in output, f"{page}, block {number}: {line!r} not in its output:\n{output[-3000:]}"
