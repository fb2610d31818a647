"""``PluginLoader``: the original API for trying a plugin in a running kernel without installing it.

``load_plugin(path)`` takes a wheel (checked like an upload, then unpacked to a temporary folder) or a
source folder with a ``pyproject.toml``; it reads the entry point and ``apt-plugin.toml`` there, imports
the module from that folder only, and registers it. ``unload_plugin(name)`` removes its hooks, its
components, its modules and its folder from ``sys.path``.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import shutil
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from apt_kernel.api import ENTRY_POINT_GROUP, MANIFEST_FILE, Kernel, ManifestError, PluginInfo, parse_manifest
from apt_sdk import UserError

from .distfile import BadDistribution, inspect

MAX_UNPACKED = 1 << 30


@dataclass
class _Loaded:
    info: PluginInfo
    root: Path  # the folder put on sys.path
    package: str  # top-level import name
    temporary: bool


class PluginLoader:
    def __init__(self, kernel: Kernel | None = None) -> None:
        self.kernel = kernel if kernel is not None else Kernel(autoload=False)
        self._loaded: dict[str, _Loaded] = {}

    @property
    def loaded_plugins(self) -> list[str]:
        return sorted(self._loaded)

    def load_plugin(self, path: str | Path) -> str:
        """Load the plugin distribution at ``path`` into this process's kernel; returns its name."""
        path = Path(path)
        if path.is_file() and path.suffix == ".whl":
            root, name, version, entry = _unpack_wheel(path), *_wheel_identity(path)
            temporary = True
        elif path.is_dir() and (path / "pyproject.toml").is_file():
            root, (name, version, entry), temporary = _source_root(path), _project_identity(path), False
        else:
            raise UserError(f"{path}: not a wheel (.whl) or a folder with a pyproject.toml")
        try:
            return self._register(root, name, version, entry, temporary)
        except BaseException:
            if temporary:
                shutil.rmtree(root, ignore_errors=True)
            raise

    def _register(self, root: Path, name: str, version: str, entry: str, temporary: bool) -> str:
        if name in self._loaded or name in self.kernel.loaded:
            raise UserError(f"plugin {name!r} is already loaded in this kernel")
        module_name = entry.partition(":")[0]
        package = module_name.split(".")[0]
        if package in sys.modules or importlib.util.find_spec(package) is not None:
            raise UserError(f"cannot load {name}: a module {package!r} is already importable here (installed?); "
                            "loading a second copy would mix the two")
        manifest_path = root.joinpath(*module_name.split(".")[:-1] or [package], MANIFEST_FILE)
        if not manifest_path.is_file():
            manifest_path = root / package / MANIFEST_FILE
        try:
            manifest = parse_manifest(tomllib.loads(manifest_path.read_text()), str(manifest_path))
        except FileNotFoundError:
            raise UserError(f"{name}: no {MANIFEST_FILE} next to its module ({manifest_path})") from None
        except (tomllib.TOMLDecodeError, ManifestError) as exc:
            raise UserError(f"{manifest_path}: {exc}") from None
        info = PluginInfo(name, module=entry, version=version, manifest=manifest, code=str(root / package))
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
        try:
            module_obj = importlib.import_module(module_name)
            attr = entry.partition(":")[2]
            self.kernel.plugins[name] = info
            self.kernel.add_plugin(getattr(module_obj, attr) if attr else module_obj, info)
            if name not in self.kernel.loaded:
                raise UserError(f"plugin {name} did not load: {info.reason}")
        except BaseException as exc:
            self._forget(name, root, package)
            if isinstance(exc, UserError):
                raise
            raise UserError(f"plugin {name} failed while importing {module_name}: {exc!r}") from exc
        self._loaded[name] = _Loaded(info, root, package, temporary)
        return name

    def unload_plugin(self, name: str) -> None:
        entry = self._loaded.pop(name, None)
        if entry is None:
            raise UserError(f"plugin {name!r} was not loaded by this loader (loaded: {self.loaded_plugins or 'none'})")
        self._forget(name, entry.root, entry.package)
        if entry.temporary:
            shutil.rmtree(entry.root, ignore_errors=True)

    def _forget(self, name: str, root: Path, package: str) -> None:
        kernel = self.kernel
        if kernel.pm.has_plugin(name):
            kernel.pm.unregister(name=name)
        kernel.registry.remove_plugin(name)
        kernel.loaded.discard(name)
        kernel.plugins.pop(name, None)
        for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[module]
        while str(root) in sys.path:
            sys.path.remove(str(root))
        importlib.invalidate_caches()


def _unpack_wheel(path: Path) -> Path:
    try:
        inspect(path, path.name, MAX_UNPACKED)  # the same safety checks as an upload
    except BadDistribution as exc:
        raise UserError(str(exc)) from None
    root = Path(tempfile.mkdtemp(prefix="apt-loaded-"))
    with zipfile.ZipFile(path) as archive:
        archive.extractall(root)
    return root


def _wheel_identity(path: Path) -> tuple[str, str, str]:
    with zipfile.ZipFile(path) as archive:
        dist_info = next(n.split("/")[0] for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        try:
            points = archive.read(f"{dist_info}/entry_points.txt").decode()
        except KeyError:
            points = ""
    return metadata["Name"], metadata["Version"], _entry(points, path)


def _entry(text: str, where: Path) -> str:
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # entry point names keep their case
    parser.read_string(text)
    if not parser.has_section(ENTRY_POINT_GROUP) or not parser.items(ENTRY_POINT_GROUP):
        raise UserError(f"{where}: no [{ENTRY_POINT_GROUP}] entry point: not an APT Kernel plugin")
    return parser.items(ENTRY_POINT_GROUP)[0][1].strip()


def _project_identity(folder: Path) -> tuple[str, str, str]:
    try:
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        entry = next(iter(project["entry-points"][ENTRY_POINT_GROUP].values()))
        return project["name"], project.get("version", "0"), entry
    except (KeyError, StopIteration, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{folder / 'pyproject.toml'}: needs [project] name and an "
                        f"[project.entry-points.\"{ENTRY_POINT_GROUP}\"] entry ({exc!r})") from None


def _source_root(folder: Path) -> Path:
    return folder / "src" if (folder / "src").is_dir() else folder
