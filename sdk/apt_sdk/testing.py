"""pytest fixtures for plugin authors (loaded automatically once apt-kernel-sdk is installed).

``apt_kernel``: an isolated kernel with autoload off; add in-process plugins with ``add_plugin``.
``run_pipeline``: run TOML text against the installed plugins, output under ``tmp_path``.
``build_encoders``: build ``[encoders.*]`` sections of the installed plugins as a pipeline builds them.
``apt_isolated_env``: this test's own plugin-status memory, and no plugin selection from the environment.
``cli(*args)``: run ``apt-kernel ARGS`` in a child process, as a user would.
``read_manifest_file(path)``: read and check a plugin's ``apt-plugin.toml`` as the kernel does.
``fresh_venv(root, exclude, editable)``: a new virtual environment for install stories, without downloads.
``headless_chromium(profile_dir)``: a selenium driver of the system's chromium, to test a web page for real.
``screenshot(driver, path)``: save what the browser shows, and keep a copy in ``$APT_TEST_ARTIFACTS`` if set.

Nothing here changes a test that does not ask for it: installing the SDK leaves every other pytest session
as it was. A test that asks for ``apt_isolated_env`` (``apt_kernel`` and ``run_pipeline`` do) gets its own
plugin-status memory (``APT_KERNEL_HOME`` under ``tmp_path``) and no ``APT_*_PLUGINS`` selection from the
environment, so it never reads or writes the user's cache; a folder's ``conftest.py`` gives that to every test
under it with one line, ``from apt_sdk.isolation import apt_isolate_every_test  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apt_kernel.api import Kernel, Manifest, PluginInfo, parse_manifest, read_manifest_file

__all__ = ["IsolatedKernel", "apt_isolated_env", "apt_kernel", "build_encoders", "cli", "fresh_venv",
           "headless_chromium", "read_manifest_file", "screenshot", "run_pipeline"]

#: What ``apt_isolated_env`` removes: the environment's choice of plugins would change what a test loads.
SELECTION_VARIABLES = ("APT_LOAD_PLUGINS", "APT_DISABLE_PLUGINS", "APT_STRICT_PLUGINS")


class IsolatedKernel(Kernel):
    """A kernel that sees only the plugins a test adds (and, if asked, the installed ones)."""

    def add(self, plugin: Any, manifest: dict | Manifest, name: str = "test-plugin", version: str = "0.0.0") -> None:
        """Register an in-process plugin object with its manifest (a dict or a read ``Manifest``)."""
        if not isinstance(manifest, Manifest):
            manifest = parse_manifest(manifest, name)
        info = PluginInfo(name, module=getattr(plugin, "__name__", name), version=version, manifest=manifest)
        self.plugins[name] = info
        self.add_plugin(plugin, info)


@pytest.fixture
def apt_isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own ``APT_KERNEL_HOME`` (returned; under ``tmp_path``) and none of ``SELECTION_VARIABLES``, for
    the test only (``monkeypatch``): a test never reads or writes the user's plugin-status memory."""
    home = tmp_path / "apt-home"
    monkeypatch.setenv("APT_KERNEL_HOME", str(home))
    for name in SELECTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return home


def cli(*args: str, env_extra: dict | None = None, cwd: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """``apt-kernel ARGS`` in a child process with this interpreter; output captured as text."""
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "apt_kernel.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


@pytest.fixture
def apt_kernel(apt_isolated_env: Path) -> IsolatedKernel:
    """An empty kernel (autoload off) in an isolated environment; ``apt_kernel.add(plugin, manifest)``."""
    return IsolatedKernel(autoload=False)


@pytest.fixture
def run_pipeline(tmp_path: Path, apt_isolated_env: Path):
    """``run_pipeline(toml_text, overrides=None, kernel=None) -> (result, context)``, its output in
    ``tmp_path / "run"``, in an isolated environment."""
    from apt_kernel.api import run_pipeline as run

    def runner(text: str, overrides: list[str] | None = None, kernel: Kernel | None = None) -> tuple[dict, Any]:
        overrides = [f"pipeline.output_dir={str(tmp_path / 'run')!r}", *(overrides or [])]
        return run(text, overrides, kernel=kernel, progress=False)

    return runner


@pytest.fixture
def build_encoders(run_pipeline):
    """``build_encoders(sections, overrides=None) -> {name: encoder}``: the ``[encoders.<name>]`` sections (TOML
    text) of the installed plugins, built as a pipeline builds them, in a pipeline whose other components are a
    probe's (``apt_sdk.probe``); a bad option raises the ``PipelineError`` a run would."""
    from . import probe

    def builder(sections: str, overrides: list[str] | None = None) -> dict[str, Any]:
        kernel = IsolatedKernel()  # the installed plugins, and the probe
        kernel.add(probe.Probe(), probe.MANIFEST, name=probe.NAME)
        result, _ = run_pipeline(probe.PIPELINE + sections, overrides, kernel=kernel)
        return result["encoders"]

    return builder


def fresh_venv(root: Path, exclude: str = r"(?i)^(__editable__|apt[-_])", editable: tuple[Path, ...] = ()) -> Path:
    """A new venv at ``root`` whose site-packages links every package of this environment whose entry name
    does not match ``exclude`` (torch and friends, so nothing is downloaded); the folders in ``editable``
    are pip-installed into it, editable and without dependencies. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next((root / "lib").glob("python3*/site-packages"))
    skip = re.compile(exclude)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not skip.match(entry.name):
            (site / entry.name).symlink_to(entry)
    python = root / "bin" / "python"
    if editable:
        args = [arg for path in editable for arg in ("-e", str(path))]
        install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                                  *args], capture_output=True, text=True, timeout=300)
        if install.returncode != 0:
            raise RuntimeError(f"pip install into {root} failed: {install.stderr[-2000:]}")
    return python


CHROMIUM = (shutil.which("chromium"), shutil.which("chromedriver"))
"""The system's chromium and chromedriver (Debian's ``chromium``, ``chromium-driver``), or None each."""


@contextlib.contextmanager
def headless_chromium(profile_dir: Path, window: str = "1280,900") -> Iterator[Any]:
    """A selenium ``webdriver.Chrome`` of the system's chromium, headless, with its profile in
    ``profile_dir``; quit on leaving. Skip a test without it: ``pytest.mark.skipif(not all(CHROMIUM), ...)``.
    selenium is imported here, so only tests that use a browser need it installed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile_dir}", f"--window-size={window}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMIUM[1]), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, path: Path) -> Path:
    """Save the browser's view as PNG at ``path``; a CI that sets ``APT_TEST_ARTIFACTS`` (a folder) keeps
    a copy there for people to look at."""
    driver.save_screenshot(str(path))
    artifacts = os.environ.get("APT_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
    return path
