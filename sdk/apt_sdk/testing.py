"""pytest fixtures for plugin authors (loaded automatically once apt-kernel-sdk is installed).

``apt_kernel``: an isolated kernel with autoload off; add in-process plugins with ``add_plugin``.
``run_pipeline``: run TOML text against the installed plugins, output under ``tmp_path``.
``read_manifest_file(path)``: read and check a plugin's ``apt-plugin.toml`` as the kernel does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from apt_kernel.discovery import PluginInfo
from apt_kernel.kernel import Kernel
from apt_kernel.manifest import Manifest, parse_manifest, read_manifest_file
from apt_kernel.runner import execute, plan_pipeline

__all__ = ["IsolatedKernel", "apt_kernel", "read_manifest_file", "run_pipeline"]


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
def apt_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IsolatedKernel:
    monkeypatch.setenv("APT_KERNEL_HOME", str(tmp_path / "apt-home"))
    return IsolatedKernel(autoload=False)


def _run(text: str, tmp_path: Path, overrides: list[str] | None = None,
         kernel: Kernel | None = None) -> tuple[dict, Any]:
    from apt_kernel.pipeline import parse_pipeline

    overrides = [f"pipeline.output_dir={str(tmp_path / 'run')!r}", *(overrides or [])]
    config, data, source = parse_pipeline(text, "<test pipeline>", overrides)
    kernel = kernel or Kernel()
    return execute(kernel, plan_pipeline(kernel, config, data, source), progress=False)


@pytest.fixture
def run_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``run_pipeline(toml_text, overrides=None, kernel=None) -> (result, context)``."""
    monkeypatch.setenv("APT_KERNEL_HOME", str(tmp_path / "apt-home"))

    def runner(text: str, overrides: list[str] | None = None, kernel: Kernel | None = None):
        return _run(text, tmp_path, overrides, kernel)

    return runner
