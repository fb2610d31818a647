"""Static plugin manifests: what a plugin provides and needs, read without importing its code.

A packaged plugin ships ``apt-plugin.toml`` inside its top-level package; a one-file plugin in a
``--plugins-dir`` holds an ``APT_MANIFEST = {...}`` literal, read with ``ast`` (never executed)::

    kernel_api = "^1.0"              # kernel contract versions this plugin supports
    capabilities = ["filesystem"]    # what it asks for when sandboxed
    [requires]
    apt-plugin-lm = "^0.1"           # other plugins, semver or PEP 440 ranges
    [provides.model.apt-lm]
    summary = "APT language model"
    options.d_model = { type = "int", default = 128, min = 1, help = "width" }
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .hookspecs import KINDS
from .versions import InvalidRange, parse_range

MANIFEST_FILE = "apt-plugin.toml"
OPTION_TYPES = ("str", "int", "float", "bool", "path", "list", "dict", "any")


class ManifestError(ValueError):
    """A manifest that is missing or does not match the manifest schema."""


class OptionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["str", "int", "float", "bool", "path", "list", "dict", "any"] = "any"
    default: Any = None
    required: bool = False
    optional: bool = False  # default None allowed (TOML has no null)
    min: float | None = None
    max: float | None = None
    choices: list[Any] | None = None
    must_exist: bool = False  # for type = "path": the file or folder must exist
    help: str = ""


class ComponentDecl(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    summary: str = ""
    options: dict[str, OptionSpec] = Field(default_factory=dict)
    allow_extra_options: bool = False


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kernel_api: str
    version: str | None = None  # only for one-file plugins; packages take it from their distribution
    capabilities: list[str] = Field(default_factory=list)
    sandbox: bool = False
    requires: dict[str, str] = Field(default_factory=dict)
    provides: dict[Literal[KINDS], dict[str, ComponentDecl]] = Field(default_factory=dict)  # type: ignore[valid-type]

    @field_validator("kernel_api")
    @classmethod
    def _api_range(cls, value: str) -> str:
        parse_range(value)
        return value

    @field_validator("requires")
    @classmethod
    def _ranges(cls, value: dict[str, str]) -> dict[str, str]:
        for spec in value.values():
            parse_range(spec)
        return value

    def components(self) -> list[tuple[str, str]]:
        """(kind, name) pairs this plugin provides."""
        return [(kind, name) for kind, names in self.provides.items() for name in names]


def parse_manifest(data: dict, origin: str) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except (ValidationError, InvalidRange) as exc:
        raise ManifestError(f"invalid manifest {origin}: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
    return str(exc)


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
