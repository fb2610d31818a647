"""Deprecated: the kernel's public API for tools that manage plugins is ``apt_kernel.api``; this module only
re-exports it for the marketplace plugin until it imports ``apt_kernel.api`` itself (issue 32), and will go.
The SDK is the contract a plugin is written against (``apt_sdk``) and its test helpers (``apt_sdk.testing``).
"""

from apt_kernel.api import (  # noqa: F401
    ENTRY_POINT_GROUP,
    KERNEL_API,
    KERNEL_API_VERSION,
    MANIFEST_FILE,
    Catalog,
    InvalidRange,
    Kernel,
    Manifest,
    ManifestError,
    PluginInfo,
    ResolutionError,
    discover,
    kernel_home,
    parse_manifest,
    parse_range,
    parse_version,
    run_doctor,
    satisfies,
    solve,
)
