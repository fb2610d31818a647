"""Static plugin manifests: what a plugin provides and needs, read without importing its code.

A packaged plugin ships ``apt-plugin.toml`` inside its top-level package; a one-file plugin in a
``--plugins-dir`` holds an ``APT_MANIFEST = {...}`` literal, read with ``ast`` (never executed)::

    kernel_api = "^1.0"              # kernel contract versions this plugin supports
    capabilities = ["filesystem.write"]   # what it needs (shown to users; a sandbox grants [callbacks.limits])
    [requires]
    apt-plugin-lm = "^0.1"           # other plugins, semver or PEP 440 ranges
    [provides.model.apt-lm]
    summary = "APT language model"
    options.d_model = { type = "int", default = 128, min = 1, help = "width" }
    options.lr = { type = "float", default = 1e-3, aliases = ["learning_rate"] }  # others' names: hints only
    [commands]
    errors = "apt_plugin_errors.cli:errors"   # `apt-kernel errors ...`, imported only when used
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kinds import KINDS
from .versions import InvalidRange, parse_range, parse_version

MANIFEST_FILE = "apt-plugin.toml"
OPTION_TYPES = ("str", "int", "float", "bool", "path", "list", "dict", "any")

# Manifests are read by every CLI call, so they are checked with plain dataclasses: importing pydantic
# and building models for them cost ~125 ms per call, over half of the 300 ms budget of `plugins list`.


class ManifestError(ValueError):
    """A manifest that is missing or does not match the manifest format."""


@dataclass(frozen=True)
class OptionSpec:
    type: str = "any"
    default: Any = None
    required: bool = False
    optional: bool = False  # default None allowed (TOML has no null)
    min: float | None = None
    max: float | None = None
    choices: list[Any] | None = None
    must_exist: bool = False  # for type = "path": the file or folder must exist
    help: str = ""
    # names other tools give this option (HF Trainer's, Lightning's): never accepted, only suggested from
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ComponentDecl:
    summary: str = ""
    options: dict[str, OptionSpec] = field(default_factory=dict)
    allow_extra_options: bool = False


@dataclass(frozen=True)
class Manifest:
    kernel_api: str
    version: str | None = None  # only for one-file plugins; packages take it from their distribution
    capabilities: list[str] = field(default_factory=list)
    sandbox: bool = False
    requires: dict[str, str] = field(default_factory=dict)
    provides: dict[str, dict[str, ComponentDecl]] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)  # `apt-kernel NAME` -> "module:click_command"

    def components(self) -> list[tuple[str, str]]:
        """(kind, name) pairs this plugin provides."""
        return [(kind, name) for kind, names in self.provides.items() for name in names]

    def to_dict(self) -> dict:
        """The manifest as plain data that ``parse_manifest`` reads back into an equal manifest (what was left
        unset is left out, as in the file), for a process that gets it as data (a sandbox worker)."""
        from dataclasses import asdict

        def written(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: written(v) for k, v in value.items() if v is not None}
            return value

        return written(asdict(self))


_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,),
                                       "float": (int, float), "int": (int,)}


def _check(value: Any, types: tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
        raise ManifestError(f"{where}: expected {what}, got {type(value).__name__} {value!r}")
    return value


def _keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ManifestError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _option(data: Any, where: str) -> OptionSpec:
    _check(data, (dict,), where, "a table")
    _keys(data, set(OptionSpec.__dataclass_fields__), where)
    kind = _check(data.get("type", "any"), (str,), f"{where}.type", "a string")
    if kind not in OPTION_TYPES:
        raise ManifestError(f"{where}.type: {kind!r} is not one of {', '.join(OPTION_TYPES)}")
    for flag in ("required", "optional", "must_exist"):
        _check(data.get(flag, False), (bool,), f"{where}.{flag}", "true or false")
    for bound in ("min", "max"):
        if bound in data:
            _check(data[bound], (int, float), f"{where}.{bound}", "a number")
    if "choices" in data:
        _check(data["choices"], (list,), f"{where}.choices", "a list")
    _check(data.get("help", ""), (str,), f"{where}.help", "a string")
    for alias in _check(data.get("aliases", []), (list,), f"{where}.aliases", "a list"):
        _check(alias, (str,), f"{where}.aliases", "a list of strings")
    return OptionSpec(**data)


def _component(data: Any, where: str) -> ComponentDecl:
    _check(data, (dict,), where, "a table")
    _keys(data, {"summary", "options", "allow_extra_options"}, where)
    options = _check(data.get("options", {}), (dict,), f"{where}.options", "a table")
    return ComponentDecl(
        summary=_check(data.get("summary", ""), (str,), f"{where}.summary", "a string"),
        options={name: _option(spec, f"{where}.options.{name}") for name, spec in options.items()},
        allow_extra_options=_check(data.get("allow_extra_options", False), (bool,), where, "true or false"),
    )


def _range(value: Any, where: str) -> str:
    _check(value, (str,), where, "a version range string")
    try:
        parse_range(value)
    except InvalidRange as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return value


def _version(value: Any, where: str) -> str:
    _check(value, (str,), where, "a version string")
    try:
        parse_version(value)
    except InvalidRange:
        raise ManifestError(f"{where}: {value!r} is not a version (PEP 440, e.g. \"0.1.0\")") from None
    return value


def parse_manifest(data: dict, origin: str) -> Manifest:
    where = f"invalid manifest {origin}"
    _check(data, (dict,), where, "a table")
    _keys(data, set(Manifest.__dataclass_fields__), where)
    if "kernel_api" not in data:
        raise ManifestError(f"{where}: kernel_api is required (e.g. kernel_api = \"^1.0\")")
    provides = _check(data.get("provides", {}), (dict,), f"{where}: provides", "a table")
    for kind in provides:
        if kind not in KINDS:
            raise ManifestError(f"{where}: provides.{kind}: unknown kind (kinds: {', '.join(KINDS)})")
    capabilities = _check(data.get("capabilities", []), (list,), f"{where}: capabilities", "a list")
    requires = _check(data.get("requires", {}), (dict,), f"{where}: requires", "a table")
    version = data.get("version")
    commands = _check(data.get("commands", {}), (dict,), f"{where}: commands", "a table")
    for name, target in commands.items():
        if not isinstance(target, str) or ":" not in target:
            raise ManifestError(f"{where}: commands.{name}: expected \"module:attribute\", got {target!r}")
    return Manifest(
        commands=dict(commands),
        kernel_api=_range(data["kernel_api"], f"{where}: kernel_api"),
        version=None if version is None else _version(version, f"{where}: version"),
        capabilities=[_check(c, (str,), f"{where}: capabilities", "strings") for c in capabilities],
        sandbox=_check(data.get("sandbox", False), (bool,), f"{where}: sandbox", "true or false"),
        requires={name: _range(spec, f"{where}: requires.{name}") for name, spec in requires.items()},
        provides={kind: {name: _component(decl, f"{where}: provides.{kind}.{name}") for name, decl in names.items()}
                  for kind, names in _check_tables(provides, where).items()},
    )


def _check_tables(provides: dict, where: str) -> dict:
    for kind, names in provides.items():
        _check(names, (dict,), f"{where}: provides.{kind}", "a table of components")
    return provides


def read_manifest_file(path: Path) -> Manifest:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no manifest: {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"invalid manifest {path}: {exc}") from None
    return parse_manifest(data, str(path))


def read_module_manifest(path: Path) -> Manifest:
    """Read ``APT_MANIFEST = {...}`` from a module's source without executing it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise ManifestError(f"cannot read manifest of {path}: syntax error at line {exc.lineno}") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "APT_MANIFEST" for t in node.targets
        ):
            try:
                data = ast.literal_eval(node.value)
            except ValueError:
                raise ManifestError(f"{path}: APT_MANIFEST must be a literal dict") from None
            return parse_manifest(data, str(path))
    raise ManifestError(f"no manifest: {path} defines no APT_MANIFEST and has no {MANIFEST_FILE}")
