"""For tools that manage plugins rather than being one (an index, an installer): read a manifest as data,
find what is installed, and choose versions with the kernel's own solver.

- ``parse_manifest(data, origin)`` checks a parsed ``apt-plugin.toml`` (raises ``ManifestError``);
- ``discover()`` lists installed plugins (``PluginInfo``) without importing them; ``kernel_home()`` is
  the kernel's per-user folder (``$APT_KERNEL_HOME``);
- ``Catalog`` + ``solve(catalog, {name: range})`` pick versions or raise ``ResolutionError`` with the chain
  of requirements that cannot hold; ``satisfies(version, range)`` and ``parse_range`` read ranges;
- ``run_doctor`` imports every plugin in a child process and reports failures;
- ``Kernel``: the plugin host itself (``Kernel(autoload=False)`` starts empty; ``add_plugin`` registers one).
"""

from apt_kernel import KERNEL_API_VERSION
from apt_kernel.discovery import ENTRY_POINT_GROUP, PluginInfo, discover, kernel_home
from apt_kernel.doctor import run_doctor
from apt_kernel.errors import ResolutionError
from apt_kernel.kernel import Kernel
from apt_kernel.manifest import MANIFEST_FILE, Manifest, ManifestError, parse_manifest
from apt_kernel.solver import KERNEL_API, Catalog, solve
from apt_kernel.versions import InvalidRange, parse_range, parse_version, satisfies

__all__ = [
    "ENTRY_POINT_GROUP", "KERNEL_API", "KERNEL_API_VERSION", "MANIFEST_FILE", "Catalog", "InvalidRange", "Kernel",
    "Manifest",
    "ManifestError", "PluginInfo", "ResolutionError", "discover", "parse_manifest", "parse_range", "parse_version",
    "kernel_home", "run_doctor", "satisfies", "solve",
]
