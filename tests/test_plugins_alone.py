"""Each builtin plugin's own tests pass in an environment holding only the kernel, the SDK, the plugin and
the plugins its pyproject declares (dependencies and extras): no undeclared plugin is there to lean on. The
SDK's own tests (sdk/tests) run the same way, with the kernel and the SDK alone.

This is where the plugins' tests run in the suite (``testpaths`` is ``tests``): once each, in that
environment, with the marker expression of the outer run (``pytest -m "not slow"`` runs their quick
part). ``pytest builtin_plugins/<plugin>/tests`` runs them directly while working on one plugin.

The environment is conftest's ``make_env``: a fresh venv holding exactly the declared set of the project's
distributions."""

import re
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement

from conftest import REPO, make_env

PLUGINS = {p.name: p for p in sorted((REPO / "builtin_plugins").iterdir()) if (p / "tests").is_dir()}


def declared(name: str, with_extras: bool = True) -> set[str]:
    """The builtin plugins ``name`` requires, transitively (its extras too, but not its dependencies')."""
    project = tomllib.loads((REPO / "builtin_plugins" / name / "pyproject.toml").read_text())["project"]
    requirements = list(project.get("dependencies", []))
    if with_extras:
        requirements += [r for group in project.get("optional-dependencies", {}).values() for r in group]
    direct = {Requirement(r).name for r in requirements} & set(PLUGINS)
    return direct.union(*(declared(d, with_extras=False) for d in direct)) if direct else set()


def test_declared_plugin_dependencies_are_what_the_code_needs():
    assert declared("apt-plugin-errors", with_extras=False) == {"apt-plugin-trainer"}  # not the trainer's [lm] extra
    assert declared("apt-plugin-errors") == {"apt-plugin-trainer", "apt-plugin-lm"}  # its [test] extra
    assert declared("apt-plugin-hpo") == {"apt-plugin-lm", "apt-plugin-trainer"}  # its [test] extra
    assert declared("apt-plugin-monitor") == {"apt-plugin-lm", "apt-plugin-trainer"}  # its [test] extra
    assert declared("apt-plugin-vision") == declared("apt-plugin-audio") == declared("apt-plugin-marketplace") == set()
    assert declared("apt-plugin-multimodal") == {"apt-plugin-lm", "apt-plugin-vision", "apt-plugin-audio",
                                                 "apt-plugin-trainer"}  # its [train] extra
    # the LM plugin (the decoder, KVBatch), and its [multimodal] extra: the multimodal plugin and its encoders
    assert declared("apt-plugin-serve") == {"apt-plugin-lm", "apt-plugin-multimodal", "apt-plugin-vision",
                                            "apt-plugin-audio"}


# pytest-xdist's --dist loadfile keeps a file on one worker; the marketplace's tests are about a third of all
# the plugins' tests, so they run from a file of their own (test_plugins_alone_marketplace.py) and the
# two workers share the load. So do the trainer's two longest files, its tests that start processes (DDP and
# FSDP under torchrun; kills and exact resumes), each from a file of its own (test_plugins_alone_trainer_*.py).
SEPARATE = {"apt-plugin-marketplace"}
SPLIT = {"apt-plugin-trainer": ("test_ddp_and_fsdp.py", "test_exact_resume.py")}


@pytest.mark.parametrize("plugin", sorted(set(PLUGINS) - SEPARATE))
def test_a_plugins_own_tests_pass_with_only_what_it_declares(plugin, tmp_path, request):
    run_plugin_tests(plugin, tmp_path, request, skip=SPLIT.get(plugin, ()))


def has_slow_tier(plugin: str, skip: tuple[str, ...] = ()) -> bool:
    """Whether any of ``plugin``'s test files (but ``skip``) marks tests ``slow_tier``."""
    files = (PLUGINS[plugin] / "tests").rglob("test_*.py")
    return any("mark.slow_tier" in f.read_text() for f in files if f.name not in skip)


# A plugin's tests marked slow_tier run in the slow tier (pytest --slow-tier, after the README's command in
# CI): the outer test of a tier passes its half of the marker expression to the plugin's own pytest.
@pytest.mark.slow_tier
@pytest.mark.parametrize("plugin", sorted(p for p in PLUGINS if has_slow_tier(p, SPLIT.get(p, ()))))
def test_a_plugins_slow_tier_tests_pass_with_only_what_it_declares(plugin, tmp_path, request):
    run_plugin_tests(plugin, tmp_path, request, skip=SPLIT.get(plugin, ()))


def run_plugin_tests(plugin: str, tmp_path, request, only: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """``only``: these files of its tests; ``skip``: all but these."""
    present = {plugin} | declared(plugin)
    python = make_env(tmp_path / "env", present)
    absent = sorted(set(PLUGINS) - present)
    probe = ("import importlib.util, sys; "
             "print([m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None])")
    found = subprocess.run([str(python), "-c", probe, *(p.replace("-", "_") for p in absent)],
                           capture_output=True, text=True, cwd=tmp_path, check=True)
    assert found.stdout.strip() == "[]", f"undeclared plugins importable: {found.stdout}"
    folder = PLUGINS[plugin] / "tests"
    run_tests(python, [folder / name for name in only] or [folder], request, [folder / name for name in skip])


def test_the_sdks_own_tests_pass_with_only_the_kernel(tmp_path, request):
    python = make_env(tmp_path / "env", set())
    run_tests(python, [REPO / "sdk" / "tests"], request)


def run_tests(python, paths: list, request, ignore: list = ()) -> None:
    markers = request.config.getoption("markexpr")
    tier = "slow_tier" if request.node.get_closest_marker("slow_tier") else "not slow_tier"
    selection = ["-m", f"({markers}) and {tier}" if markers else tier]
    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection,
                            *map(str, paths), *(f"--ignore={path}" for path in ignore)],
                           capture_output=True, text=True, cwd=REPO, timeout=600)
    assert tests.returncode == 0, tests.stdout[-6000:] + tests.stderr[-2000:]
    assert re.search(r"\d+ passed", tests.stdout)
    print(tests.stdout.splitlines()[-1])  # pytest -rP shows each folder's own count
