"""The tutorials, run as written: every ``bash`` and ``python`` block of each page under docs/tutorials/,
in order, in one scratch folder per page holding a copy of ``pipelines/``, in a virtual environment of
the tutorials' own that sees every package of this one (so a page's ``pip install`` changes nothing
here), its ``bin`` first on PATH. A ``text`` block right after a block is that block's expected output:
each of its lines must appear in what the block printed. A block titled "Illustration: ..." says on the
page why it is not run (it needs a GPU, the internet); it is skipped."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from apt_sdk.testing import fresh_venv
from conftest import REPO

TUTORIALS = REPO / "docs" / "tutorials"
FSDD = REPO.parent / "shared" / "data" / "fsdd"  # what the multimodal page's `git clone` fetches
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.S | re.M)
ILLUSTRATION = 'title="Illustration: '

PAGES = sorted(p.name for p in TUTORIALS.glob("*.md") if p.name != "index.md")
# the pages that train for 20 s to 2 min run in the slow tier (pytest --slow-tier; CI, after the README's command);
# test_cli's test of the quickstart trains what first-run.md does
SLOW_TIER = {"first-run.md", "multimodal.md", "observe.md", "plugins.md", "resume-distributed.md", "search.md",
             "serve.md"}
# what a page's runs must reach, beyond printing what it says: (pattern with a number, the least it may be)
LEARNED = {"multimodal.md": [  # chance: 10% for the digits
    (r"test accuracy ([\d.]+)% of 360 \(exact match\)", 60.0),   # handwritten digits
    (r"test accuracy ([\d.]+)% of 100 \(exact match\)", 60.0),   # a third of FSDD's test set
]}


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, expected output or None) for each runnable block, in order."""
    found = FENCE.findall(page.read_text())
    runnable = []
    for i, (language, info, body) in enumerate(found):
        if language in ("bash", "python") and ILLUSTRATION not in info:
            follows = found[i + 1] if i + 1 < len(found) else None
            runnable.append((language, body, follows[2] if follows and follows[0] == "text" else None))
    return runnable


def test_every_tutorial_is_in_the_path_and_has_something_to_run():
    index = (TUTORIALS / "index.md").read_text()
    assert PAGES and all(f"]({page})" in index and blocks(TUTORIALS / page) for page in PAGES)
    nav = (REPO / "mkdocs.yml").read_text()
    assert all(f"tutorials/{page}" in nav for page in PAGES)


def page_venv(root: Path) -> Path:
    """A venv linking every package of this one, with this one's commands (apt-kernel, pip, tensorboard,
    torchrun, ...) run by its python; returns its python."""
    python = fresh_venv(root, exclude="^$")
    for command in Path(sys.executable).parent.iterdir():
        shim = python.parent / command.name
        if not shim.exists() and command.is_file() and command.read_bytes()[:2] == b"#!":
            shim.write_text(f'#!/bin/sh\nexec "{python}" "{command}" "$@"\n')
            shim.chmod(0o755)
    return python


@pytest.fixture(scope="module")
def python(tmp_path_factory) -> Path:
    """One venv for the pages (built once: a page's pip install -e of its own plugin harms no other)."""
    return page_venv(tmp_path_factory.mktemp("tutorials") / "venv")


@pytest.mark.slow
@pytest.mark.parametrize("page", [pytest.param(page, marks=pytest.mark.slow_tier) if page in SLOW_TIER else page
                                  for page in PAGES])
def test_a_tutorial_runs_as_written(page, tmp_path, python):
    work = tmp_path / "work"
    shutil.copytree(REPO / "pipelines", work / "pipelines")
    if "free-spoken-digit-dataset" in (TUTORIALS / page).read_text():
        if not FSDD.is_dir():
            pytest.skip("needs the FSDD recordings in ../shared/data")
        (work / "free-spoken-digit-dataset").symlink_to(FSDD)
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "VIRTUAL_ENV": str(python.parent.parent), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    outputs, groups = [], []
    try:
        for number, (language, code, expected) in enumerate(blocks(TUTORIALS / page), 1):
            command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [str(python), "-c", code]
            # each block in a process group of its own: what it leaves running (a server started with &) is
            # stopped when the page ends, also when a later block fails
            block = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
            try:
                stdout, stderr = block.communicate(timeout=600)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(block.pid, 0)  # raises when nothing of the block is left
                    groups.append(block.pid)
            output = stdout + stderr
            assert block.returncode == 0, f"{page}, block {number} ({language}):\n{code}\n{output[-3000:]}"
            for line in (expected or "").splitlines():
                assert line.strip() in output, f"{page}, block {number}: {line!r} not in its output:\n{output[-3000:]}"
            outputs.append(output)
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
    for pattern, least in LEARNED.get(page, []):
        found = re.search(pattern, "\n".join(outputs))
        assert found and float(found.group(1)) >= least, (page, pattern, found and found.group(0))
        print(found.group(0))
