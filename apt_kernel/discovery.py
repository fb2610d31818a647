"""Find installed plugins and read their manifests, without importing any plugin code.

Plugins are entry points in the group ``apt_kernel.plugins`` (name = plugin name, value = module) or
one-file modules in a ``--plugins-dir``. Environment: ``APT_LOAD_PLUGINS=a,b`` loads only those (empty
loads none), ``APT_DISABLE_PLUGINS=x,y`` disables some, ``APT_STRICT_PLUGINS=1`` makes load failures
fatal. The outcome of the last load attempt or doctor run is remembered in ``$APT_KERNEL_HOME``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import time
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib.metadata import PackageNotFoundError, distribution, distributions, entry_points
from pathlib import Path

from packaging.version import InvalidVersion, Version

from . import KERNEL_API_VERSION
from .manifest import MANIFEST_FILE, Manifest, ManifestError, read_manifest_file, read_module_manifest
from .versions import satisfies

ENTRY_POINT_GROUP = "apt_kernel.plugins"
INSTALLED, INCOMPATIBLE, DISABLED, FAILED, CRASHED = "installed", "incompatible", "disabled", "failed", "crashed"


@dataclass
class PluginInfo:
    """What the kernel knows about one plugin before (or after) importing it. Plain data."""

    name: str
    module: str
    version: str
    distribution: str | None = None
    path: str | None = None  # set for --plugins-dir files
    manifest: Manifest | None = field(default=None, repr=False)
    status: str = INSTALLED
    reason: str | None = None
    code: str | None = field(default=None, repr=False)  # the file or folder its code is in

    def fingerprint(self) -> str:
        """What a load outcome depends on: the plugin's own files (paths, sizes, mtimes) and every
        installed distribution's name and version (a missing dependency may have been installed)."""
        digest = hashlib.sha256(f"{self.name} {self.version}".encode())
        root = Path(self.code) if self.code else None
        files = sorted(p for p in root.rglob("*") if "__pycache__" not in p.parts) if root and root.is_dir() \
            else [root] if root else []
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        for dist in sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions()):
            digest.update(dist.encode())
        return digest.hexdigest()

    def provides(self) -> dict[str, list[str]]:
        if self.manifest is None:
            return {}
        return {kind: sorted(names) for kind, names in self.manifest.provides.items()}

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "manifest"}
        data["provides"] = self.provides()
        data["kernel_api"] = self.manifest.kernel_api if self.manifest else None
        data["requires"] = dict(self.manifest.requires) if self.manifest else {}
        data["capabilities"] = list(self.manifest.capabilities) if self.manifest else []
        data["commands"] = sorted(self.manifest.commands) if self.manifest else []
        return data


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def strict_from_env(env: dict | None = None) -> bool:
    return (env if env is not None else os.environ).get("APT_STRICT_PLUGINS", "") not in ("", "0", "false")


def kernel_home(env: dict | None = None) -> Path:
    env = env if env is not None else os.environ
    return Path(env.get("APT_KERNEL_HOME") or Path.home() / ".cache" / "apt-kernel")


class StatusStore:
    """Remembers whether a plugin's last load (or doctor check) failed, and why, together with the
    fingerprint of what that outcome depended on (``PluginInfo.fingerprint``): a failure is reported
    from memory only while nothing changed, so editing or reinstalling a plugin, or installing what it
    was missing, always gets it imported again."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def record(self, info: PluginInfo, status: str, reason: str | None) -> None:
        data = self.read()
        data[info.name] = {"version": info.version, "status": status, "reason": reason, "when": time.time(),
                           "fingerprint": info.fingerprint() if status in (FAILED, CRASHED) else None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def last_failure(self, info: PluginInfo) -> tuple[str, str] | None:
        entry = self.read().get(info.name)
        if not entry or entry.get("status") not in (FAILED, CRASHED):
            return None
        if entry.get("version") != info.version or entry.get("fingerprint") != info.fingerprint():
            return None  # the code or its environment changed since: the failure says nothing now
        return entry["status"], entry.get("reason") or "unknown reason"


def _manifest_for_module(info: PluginInfo) -> Manifest:
    top = info.module.split(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)  # finds a top-level package without importing it
    if spec is None:
        raise ManifestError(f"module {top!r} is not installed")
    if spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            info.code = location
            candidate = Path(location) / MANIFEST_FILE
            if candidate.exists():
                return read_manifest_file(candidate)
        raise ManifestError(f"no manifest: package {top!r} has no {MANIFEST_FILE}")
    if spec.origin and spec.origin.endswith(".py"):
        info.code = spec.origin
        return read_module_manifest(Path(spec.origin))
    raise ManifestError(f"no manifest for module {top!r}")


def _apply_status(info: PluginInfo, allow: set[str] | None, deny: set[str], store: StatusStore) -> None:
    keys = {info.name, info.distribution} - {None}
    if info.manifest is None:
        return
    if keys & deny:
        info.status, info.reason = DISABLED, "disabled by APT_DISABLE_PLUGINS"
    elif allow is not None and not keys & allow:
        info.status, info.reason = DISABLED, "not listed in APT_LOAD_PLUGINS"
    elif not satisfies(KERNEL_API_VERSION, info.manifest.kernel_api):
        info.status = INCOMPATIBLE
        info.reason = f"needs kernel API {info.manifest.kernel_api}; this kernel's API is {KERNEL_API_VERSION}"
    elif failure := store.last_failure(info):
        info.status, info.reason = failure


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _requires_from_metadata(info: PluginInfo, meta, by_distribution: dict[str, str]) -> None:
    """A packaged plugin's dependencies on other plugins are its distribution's own requirements
    (pyproject ``dependencies``), declared once; a manifest ``[requires]`` table must agree with them."""
    if info.manifest is None or not hasattr(meta, "get_all"):
        return
    requires: dict[str, str] = {}
    for line in meta.get_all("Requires-Dist") or []:
        head = _normalise(re.split(r"[\s;<>=!~\[(]", line.strip(), maxsplit=1)[0])
        if head not in by_distribution:
            continue
        from packaging.requirements import Requirement  # only for the few lines that name a plugin

        requirement = Requirement(line)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue  # an optional extra, not a dependency of the plugin itself
        requires[by_distribution[head]] = str(requirement.specifier) or "*"
    declared = info.manifest.requires
    if declared and set(declared) != set(requires):
        info.status = FAILED
        info.reason = (f"its {MANIFEST_FILE} [requires] lists {sorted(declared)} but its distribution requires "
                       f"{sorted(requires) or 'no plugin'}; declare plugin dependencies once, in pyproject.toml "
                       f"dependencies, and drop [requires] from the manifest")
        return
    info.manifest = replace(info.manifest, requires=requires)


def stale_editable(info: PluginInfo) -> str | None:
    """pip records an editable install's version once; raising it in the source's pyproject.toml changes
    nothing the kernel (or pip) sees until the plugin is installed again. Says so, where that is the case.
    Asked where a version is shown or refused, not at discovery: it reads files no run needs."""
    if info.distribution is None:
        return None
    try:
        dist = distribution(info.distribution)
    except PackageNotFoundError:
        return None
    try:
        origin = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    if not origin.get("dir_info", {}).get("editable") or not origin.get("url", "").startswith("file:"):
        return None
    from urllib.parse import urlparse
    from urllib.request import url2pathname  # here: urllib.request would cost every CLI call ~35 ms

    source = Path(url2pathname(urlparse(origin["url"]).path))
    try:
        declared = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
        if Version(declared) == Version(info.version):
            return None
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError, InvalidVersion):
        return None  # no static version to compare (a dynamic one, a moved folder): nothing to say
    return (f"installed editable from {source}, whose pyproject.toml now says {declared}; the kernel sees "
            f"{info.version} until it is installed again: pip install -e {source}")


def discover(plugins_dirs: tuple[str, ...] | list[str] = (), env: dict | None = None) -> list[PluginInfo]:
    """Every plugin visible to this process, with its manifest and status; imports no plugin code."""
    env = env if env is not None else os.environ
    allow, deny = _names(env.get("APT_LOAD_PLUGINS")), _names(env.get("APT_DISABLE_PLUGINS")) or set()
    store = StatusStore(kernel_home(env) / "plugin-status.json")
    found: dict[str, PluginInfo] = {}
    metadata: dict[str, object] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:  # the same distribution seen twice on sys.path: first one wins, as Python's
            continue
        meta = ep.dist.metadata if ep.dist else {}  # parsed once: .name and .version each re-read it
        info = PluginInfo(ep.name, ep.value, meta.get("Version", "0"), meta.get("Name"))
        try:
            info.manifest = _manifest_for_module(info)
        except ManifestError as exc:
            info.status, info.reason = FAILED, str(exc)
        found[ep.name], metadata[ep.name] = info, meta
    by_distribution = {_normalise(i.distribution): i.name for i in found.values() if i.distribution}
    for name, meta in metadata.items():
        _requires_from_metadata(found[name], meta, by_distribution)
    for directory in plugins_dirs:
        for path in sorted(Path(directory).glob("*.py")):
            if path.stem.startswith("_") or path.stem in found:
                continue
            info = PluginInfo(path.stem, path.stem, "0", None, path=str(path.resolve()), code=str(path.resolve()))
            try:
                info.manifest = read_module_manifest(path)
                info.version = info.manifest.version or "0"
            except ManifestError as exc:
                info.status, info.reason = FAILED, str(exc)
            found[path.stem] = info
    for info in found.values():
        _apply_status(info, allow, deny, store)
    return sorted(found.values(), key=lambda i: i.name)
