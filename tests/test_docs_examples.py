"""The plugin examples in docs/writing-plugins.md, extracted from the markdown, installed with pip into a
temporary site folder and used: a pipeline trains with the data, model, loss and callback examples, and
the encoder example encodes a batch. The docs cannot drift from what works."""

import os
import re
import subprocess
import sys

import pytest

from apt_kernel.hookspecs import REGISTRATION_HOOKS
from conftest import REPO, cli

DOC = REPO / "docs" / "writing-plugins.md"
BLOCK = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```$', re.S | re.M)


def doc_files() -> dict[str, str]:
    """Every titled code block of the page: its title is the file's path."""
    return {path: body for _, path, body in BLOCK.findall(DOC.read_text())}


def test_the_page_has_a_complete_example_of_each_kind():
    files = doc_files()
    for kind, package in [("data", "example_data"), ("model", "example_model"), ("loss", "example_loss"),
                          ("callback", "example_callback"), ("encoder", "example_encoder")]:
        folder = f"example-{kind}"
        assert {f"{folder}/pyproject.toml", f"{folder}/{package}/apt-plugin.toml",
                f"{folder}/{package}/plugin.py"} <= set(files), kind
        assert f"def {REGISTRATION_HOOKS[kind]}(" in files[f"{folder}/{package}/plugin.py"]


@pytest.mark.slow
def test_the_documented_plugins_install_with_pip_and_train(tmp_path):
    work, site = tmp_path / "examples", tmp_path / "site"
    for path, body in doc_files().items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(body)
    packages = sorted(str(p) for p in work.glob("example-*"))
    assert len(packages) == 5
    # the page's `pip install ./example-...`, into a temporary site folder so this environment is untouched
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), *packages], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = cli("plugins", "list", env_extra=env)
    for name in ("counting", "gru-lm", "summed-cross-entropy", "loss-csv", "grey-patches"):
        assert name in listed.stdout, listed.stdout

    run = cli("run", "counting.toml", "--no-progress", env_extra=env, cwd=work)
    assert run.returncode == 0, run.stderr
    val_loss = float(re.search(r"val loss\s+([\d.]+)", run.stdout).group(1))
    assert val_loss < 1.0, run.stdout  # from ln 20 = 3.0 towards ln 2 = 0.69: it learned the counting
    rows = (work / "runs" / "counting" / "loss.csv").read_text().splitlines()
    assert rows and all(int(r.split(",")[0]) % 8 == 0 for r in rows)

    encode = subprocess.run([sys.executable, "encode.py"], capture_output=True, text=True, cwd=work,
                            env={**os.environ, **env}, timeout=120)
    assert encode.returncode == 0, encode.stderr
    assert encode.stdout.strip() == "(2, 4, 32) None"  # four patches of 32, all real
