from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_PIPELINE = """
[pipeline]
name = "tiny"
seed = 3
output_dir = "{out}"

[data]
use = "text"
corpus = "python-stdlib-docs"
max_chars = 20000
block_size = 32
batch_size = 8

[model]
use = "apt-lm"
d_model = 32
num_heads = 2
num_layers = 1
d_ff = 64

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
max_steps = 4
eval_batches = 2
log_every = 0
"""


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugin status memory goes to a temp folder, never to the user's cache."""
    monkeypatch.setenv("APT_KERNEL_HOME", str(tmp_path / "apt-home"))
    for name in ("APT_LOAD_PLUGINS", "APT_DISABLE_PLUGINS", "APT_STRICT_PLUGINS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny_pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_PIPELINE.format(out=(tmp_path / "run").as_posix()))
    return path


def make_plugin(site: Path, name: str, body: str, manifest: str | None = None, version: str = "1.0.0",
                module: str | None = None, entry: str | None = None, requires: tuple[str, ...] = ()) -> None:
    """Install a fake plugin distribution into ``site``: dist-info with an entry point + a package."""
    module = module or name.replace("-", "_")
    dist = site / f"{module}-{version}.dist-info"
    dist.mkdir(parents=True)
    requires_dist = "".join(f"Requires-Dist: {r}\n" for r in requires)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires_dist}")
    (dist / "entry_points.txt").write_text(f"[apt_kernel.plugins]\n{name} = {entry or module + '.plugin'}\n")
    package = site / module
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(textwrap.dedent(body))
    if manifest is not None:
        (package / "apt-plugin.toml").write_text(textwrap.dedent(manifest))


def cli(*args: str, env_extra: dict | None = None, cwd: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "apt_kernel.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def with_site(site: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
