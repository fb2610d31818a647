"""docs/marketplace.md, run: every ``bash`` block of the page, in order, as one script in a fresh virtual
environment holding the kernel, the SDK and the marketplace (with ``pip`` and ``twine`` as commands, like
any venv). Two liberties: a free port replaces 8765, and the line that starts the server runs it in the
background until the script ends."""

from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest

from conftest import REPO, make_env

DOC = REPO / "docs" / "marketplace.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.S | re.M)
SERVE = re.compile(r"^(apt-kernel marketplace serve [^#\n]*?)\s*(#.*)?$", re.M)


def script(port: int) -> str:
    body = "\n".join(BLOCK.findall(DOC.read_text())).replace("8765", str(port))
    start = (r"\1 > serve.log 2>&1 & SERVER=$!; trap 'kill $SERVER' EXIT" + "\n"
             f"for i in $(seq 100); do curl -sf http://127.0.0.1:{port}/simple/ > /dev/null && break; sleep 0.2; done")
    return SERVE.sub(start, body, count=1)


def test_the_page_starts_a_server_and_uses_every_command():
    text = script(1234)
    assert "SERVER=$!" in text and "twine upload" in text and "plugins rollback --to" in text


@pytest.mark.slow
def test_every_bash_block_of_the_marketplace_page_runs(tmp_path):
    python = make_env(tmp_path / "venv", {"apt-plugin-marketplace"})
    for tool, module in (("pip", "pip"), ("twine", "twine")):
        shim = python.parent / tool
        shim.write_text(f'#!/bin/sh\nexec "{python}" -m {module} "$@"\n')
        shim.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "APT_KERNEL_HOME": str(home / ".apt"),
           "VIRTUAL_ENV": str(python.parent.parent), "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("APT_MARKETPLACE_URL", None)
    env.pop("APT_MARKETPLACE_TOKEN", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-x", "-c", script(port)], cwd=home, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    assert "apt-plugin-greeter" in done.stdout and "0.2.0" in done.stdout
