"""A kernel-only install: ``pip install apt-plugin-serve`` into an environment holding the kernel, the SDK and
the LM plugin adds ``apt-kernel serve``; ``pip uninstall`` removes it. Nothing is downloaded (--no-index)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from apt_sdk.testing import fresh_venv
from conftest import REPO

pytestmark = pytest.mark.slow_tier  # in the slow tier (pytest --slow-tier; CI runs it after the README's command)


def run(python, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_pip_install_adds_the_command_and_uninstall_removes_it(tmp_path):
    python = fresh_venv(tmp_path / "env", editable=(REPO, REPO / "sdk", REPO / "builtin_plugins" / "apt-plugin-lm"))
    before = run(python, "-m", "apt_kernel.cli", "serve", "--help", cwd=tmp_path)
    assert before.returncode == 2 and "No such command 'serve'" in before.stderr
    # a copy without its tests: building must not write into the repository
    shutil.copytree(REPO / "builtin_plugins" / "apt-plugin-serve", tmp_path / "apt-plugin-serve",
                    ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__"))
    install = run(python, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", "./apt-plugin-serve",
                  cwd=tmp_path)
    assert install.returncode == 0, install.stderr
    listed = run(python, "-m", "apt_kernel.cli", "plugins", "list", cwd=tmp_path).stdout
    assert any(line.startswith("apt-plugin-serve") and "commands: serve" in line for line in listed.splitlines())
    usage = run(python, "-m", "apt_kernel.cli", "serve", "--help", cwd=tmp_path)
    assert usage.returncode == 0 and "OpenAI API" in usage.stdout
    missing = run(python, "-m", "apt_kernel.cli", "serve", str(tmp_path / "nothing"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such run or model folder" in missing.stderr
    assert run(python, "-m", "pip", "uninstall", "-y", "-q", "apt-plugin-serve", cwd=tmp_path).returncode == 0
    after = run(python, "-m", "apt_kernel.cli", "serve", "--help", cwd=tmp_path)
    assert after.returncode == 2 and "No such command 'serve'" in after.stderr
