"""Helpers of the repo's integration tests. Each test's plugin-status home is isolated (the SDK's
``apt_isolated_env``, for every test here by the import below); ``tiny_pipeline`` comes from
apt_plugin_lm.testing (the SDK's and the LM's pytest plugins load with their packages)."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from apt_plugin_lm.testing import TINY_PIPELINE  # noqa: F401  (tests import it from here)
from apt_sdk.isolation import apt_isolate_every_test  # noqa: F401
from apt_sdk.testing import cli, fresh_venv  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
PROJECT = re.compile(r"(?i)^(__editable__|apt[-_])")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n auto``) one torch thread per worker: the workers already share the cores, and
    idle OpenMP threads spin. With two threads in each of two workers the suite took longer than serial."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"  # and for every process a test starts
        import torch

        torch.set_num_threads(1)
    # pytest-xdist otherwise hands out files by their number of tests, most first, which undoes LONGEST_FIRST
    # below and starts a long file of one test (the marketplace's, ~2 min) last
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# The longest files first, as measured (`--durations=0`, summed per file; 338 s down to 23 s): pytest-xdist
# hands whole files to workers in collection order (--dist loadfile), and a long file started last leaves the
# other worker idle at the end. In this order the two workers' sums differ by about a second.
LONGEST_FIRST = ("test_docs_tutorials.py", "test_plugins_alone.py", "test_plugins_alone_marketplace.py",
                 "test_plugins_alone_trainer_ddp.py", "test_cli.py", "test_plugins_alone_trainer_resume.py",
                 "test_run_folder.py", "test_discovery.py", "test_sandbox_pipeline.py", "test_new_plugin.py",
                 "test_distributed_failures.py", "test_contract.py", "test_bench_gpu_scripts.py", "test_docs_site.py",
                 "test_pipeline_errors.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow-tier", action="store_true",
                     help="run the slow tier (the tests marked slow_tier) instead of the quick one: the README's "
                          "test command runs the quick tier within 15 minutes on 2 cores, .ci/run this one after it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Two tiers, each test in one: the README's command must stay well under 15 minutes on 2 busy cores, and
    # nothing is skipped for it; what does not fit runs in the slow tier, which CI runs after it
    slow = config.getoption("--slow-tier")
    other_tier = [item for item in items if (item.get_closest_marker("slow_tier") is not None) != slow]
    if other_tier:
        config.hook.pytest_deselected(items=other_tier)
        items[:] = [item for item in items if (item.get_closest_marker("slow_tier") is not None) == slow]
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


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


def with_site(site: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def make_env(root: Path, plugins: set[str]) -> Path:
    """A fresh venv that links the third-party packages of this one but none of the project's
    distributions; of those, the kernel, the SDK and ``plugins`` are installed editable. Returns its python."""
    project = (REPO, REPO / "sdk", *(REPO / "builtin_plugins" / p for p in sorted(plugins)))
    return fresh_venv(root, PROJECT.pattern, project)
