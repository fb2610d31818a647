"""The kernel's public API, for tools that manage plugins rather than being one (a package index, an installer,
a test harness). A plugin needs none of it: it is written against the contract (``apt_sdk``). Everything else
in ``apt_kernel`` is the kernel's own business and may change between releases; this does not.

Find what is installed, without importing it:

- ``discover(plugins_dirs=(), env=None) -> list[PluginInfo]``: every plugin this process sees, with its
  manifest and status (``PluginInfo``: ``name``, ``version``, ``distribution``, ``module``, ``manifest``,
  ``status``, ``reason``); ``ENTRY_POINT_GROUP`` is the entry-point group plugins register in;
- ``kernel_home(env=None)``: the kernel's per-user folder (``$APT_KERNEL_HOME``).

Read a manifest:

- ``parse_manifest(data, origin) -> Manifest`` checks a parsed ``apt-plugin.toml`` (``MANIFEST_FILE``),
  ``read_manifest_file(path)`` reads and checks one; both raise ``ManifestError`` naming what is wrong.

Solve versions, with the kernel's own solver:

- ``Catalog(kernel_api=KERNEL_API_VERSION)`` + ``solve(catalog, {name: range}, root_name="pipeline")`` pick a
  version of each package or raise ``ResolutionError`` with the chain of requirements that cannot hold
  (``KERNEL_API`` is the pseudo-package of the kernel's API version);
- ``satisfies(version, range)``, ``parse_range``, ``parse_version`` read ranges (``InvalidRange``).

Check and host plugins:

- ``run_doctor(infos, plugins_dirs, store)`` imports each plugin in a child process and reports failures;
- ``Kernel``: the plugin host. ``Kernel(autoload=False)`` starts empty; ``add_plugin(obj, info)`` registers
  an imported plugin through the same checks as every plugin, ``remove_plugin(name)`` takes it out again;
  ``registry.get(kind, name)`` is what it registered.

Run pipelines: ``run_pipeline`` and ``check_pipeline`` (also in ``apt_sdk``), imported on first use.

Until apt-kernel-sdk 0.1.2 this was re-exported as ``apt_sdk.plugins``; the SDK is now the contract and its
test helpers only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import KERNEL_API_VERSION
from .discovery import ENTRY_POINT_GROUP, PluginInfo, StatusStore, discover, kernel_home
from .doctor import run_doctor
from .errors import ResolutionError
from .kernel import Kernel
from .manifest import MANIFEST_FILE, Manifest, ManifestError, parse_manifest, read_manifest_file
from .solver import KERNEL_API, Catalog, solve
from .versions import InvalidRange, parse_range, parse_version, satisfies

if TYPE_CHECKING:  # imported on first use, by __getattr__ below
    from .runner import check_pipeline, run_pipeline

__all__ = [
    "ENTRY_POINT_GROUP", "KERNEL_API", "KERNEL_API_VERSION", "MANIFEST_FILE", "Catalog", "InvalidRange", "Kernel",
    "Manifest", "ManifestError", "PluginInfo", "ResolutionError", "StatusStore", "check_pipeline", "discover",
    "kernel_home", "parse_manifest", "parse_range", "parse_version", "read_manifest_file", "run_doctor",
    "run_pipeline", "satisfies", "solve",
]


def __getattr__(name: str):
    # the runner pulls in the pipeline schema (pydantic): imported when a pipeline is first run, not by a tool
    # that only reads manifests
    if name in ("run_pipeline", "check_pipeline"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'apt_kernel.api' has no attribute {name!r}")
