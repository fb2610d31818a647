"""pipeline.toml: read with tomllib, apply ``--set`` overrides, validate with pydantic.

Two stages. The pipeline schema (tables and keys) is checked here; each component's options are
checked against the schema its plugin declares in its manifest (``option_schemas.py``), still without
importing the plugin. Every problem becomes a ``PipelineError`` naming the file, the table/key and,
where it can be found, the line.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from .errors import PipelineError, closest


class ComponentSpec(BaseModel):
    """``use = "<registered name>"`` plus the component's own options (checked later)."""

    model_config = ConfigDict(extra="allow")
    use: StrictStr
    sandbox: StrictBool = False  # run this component in a confined worker process (callbacks)
    limits: dict[str, Any] | None = None  # the sandbox's limits (SandboxLimits); implies sandbox = true

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PipelineSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    seed: StrictInt = 0
    output_dir: StrictStr | None = None
    requires: dict[str, StrictStr] = Field(default_factory=dict)


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: PipelineSection
    data: ComponentSpec
    model: ComponentSpec
    loss: ComponentSpec
    trainer: ComponentSpec
    callbacks: list[ComponentSpec] = Field(default_factory=list)
    encoders: dict[str, ComponentSpec] = Field(default_factory=dict)
    # [tool.<name>] tables belong to plugin commands (as in pyproject.toml); `run` ignores them
    tool: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def output_dir(self) -> Path:
        return Path(self.pipeline.output_dir or f"runs/{self.pipeline.name}")

    def components(self) -> list[tuple[str, str, ComponentSpec]]:
        """(table label, kind, spec) in build order: data, encoders, model, loss, callbacks, trainer."""
        items = [("data", "data", self.data)]
        items += [(f"encoders.{key}", "encoder", spec) for key, spec in self.encoders.items()]
        items += [("model", "model", self.model), ("loss", "loss", self.loss)]
        items += [(f"callbacks[{i}]", "callback", spec) for i, spec in enumerate(self.callbacks)]
        items.append(("trainer", "trainer", self.trainer))
        return items


class Source:
    """The pipeline's text and origin, for error messages that point at lines."""

    def __init__(self, name: str, text: str, overrides: dict[str, str] | None = None) -> None:
        self.name, self.lines, self.overrides = name, text.splitlines(), overrides or {}

    def line_of(self, table: str, key: str | None = None) -> int | None:
        header = table.split("[")[0]
        current, table_line = "", None
        for number, raw in enumerate(self.lines, 1):
            line = raw.strip()
            if line.startswith("["):
                current = line.strip("[] ")
                if current == header and table_line is None:
                    table_line = number
            elif key and current == header and line.split("=")[0].strip().strip('"') == key:
                return number
        return table_line if key is None else None

    def error(self, table: str, key: str | None, message: str) -> PipelineError:
        dotted = f"{table.replace('[', '.').rstrip(']')}.{key}" if key else table  # callbacks[0] -> callbacks.0
        if dotted in self.overrides:
            return PipelineError(message, source=self.name,
                                 location=f"[{table}] {key} (from --set {dotted}={self.overrides[dotted]})")
        location = f"[{table}]" + (f" {key}" if key else "")
        return PipelineError(message, source=self.name, location=location, line=self.line_of(table, key))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value); the value is read as TOML, else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise PipelineError(f"--set {text!r}: expected KEY=VALUE, e.g. --set trainer.epochs=3")
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise PipelineError(f"--set {text!r}: the key {key.strip()!r} has an empty part; keys are dotted names "
                            f"such as trainer.epochs")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return parts, parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict[str, str]:
    applied = {}
    for text in overrides:
        path, value = parse_override(text)
        target: Any = data
        for part in path[:-1]:
            if isinstance(target, list):  # callbacks.0.option: an index into an array of tables
                target = _index(target, part, text)
                continue
            node = target.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise PipelineError(f"--set {text}: {part!r} is not a table")
            target = node
        if isinstance(target, list):
            raise PipelineError(f"--set {text}: give a key inside the table, e.g. callbacks.0.use")
        if isinstance(target.get(path[-1]), dict | list) and not isinstance(value, dict | list):
            name = ".".join(path)
            raise PipelineError(f"--set {text}: {name} is a table, not a value; set a key inside it, "
                                f"e.g. --set {name}.<key>={value}")
        target[path[-1]] = value
        applied[".".join(path)] = text.partition("=")[2]
    return applied


def _index(items: list, part: str, text: str) -> Any:
    if not part.isdigit() or int(part) >= len(items):
        raise PipelineError(f"--set {text}: {part!r} is not an index of the {len(items)} entries there")
    return items[int(part)]


_TABLES = ("pipeline", "data", "model", "loss", "trainer", "callbacks", "encoders", "tool")


def _schema_errors(exc: ValidationError, source: Source) -> PipelineError:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if err["type"] == "extra_forbidden" and len(loc) == 1:
            hint = closest(loc[0], list(_TABLES))
            msg = f"unknown table [{loc[0]}]" + (f" (did you mean [{hint}]?)" if hint else "")
            problems.append(PipelineError(msg, source=source.name, line=source.line_of(loc[0])))
            continue
        if err["type"] == "missing" and len(loc) == 1:
            problems.append(PipelineError(f"missing table [{loc[0]}]", source=source.name))
            continue
        table, key = _table_key(loc)
        if err["type"] == "extra_forbidden":
            hint = closest(loc[-1], list(PipelineSection.model_fields)) if loc[0] == "pipeline" else None
            msg = "unknown key" + (f" (did you mean {hint!r}?)" if hint else "")
        elif err["type"] == "missing":
            msg = "missing required key"
        else:
            msg = f"{err['msg'].lower()} (got {err.get('input')!r})"
        problems.append(source.error(table, key, msg))
    return combine_errors(problems)


def _table_key(loc: list[str]) -> tuple[str, str | None]:
    if loc[0] == "callbacks" and len(loc) >= 2:
        return f"callbacks[{loc[1]}]", ".".join(loc[2:]) or None
    if loc[0] == "encoders" and len(loc) >= 2:
        return f"encoders.{loc[1]}", ".".join(loc[2:]) or None
    return loc[0], ".".join(loc[1:]) or None


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def combine_errors(problems: list[PipelineError]) -> PipelineError:
    """One error, or one listing several."""
    if len(problems) == 1:
        return problems[0]
    return PipelineError("\n  ".join(["several problems:"] + [str(p) for p in problems]))


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineConfig, dict, Source]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError("pipeline file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read pipeline file: {exc}", source=str(path)) from None
    return parse_pipeline(text, str(path), overrides)


def parse_pipeline(text: str, name: str = "<pipeline>", overrides: list[str] | None = None,
                   ) -> tuple[PipelineConfig, dict, Source]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"TOML syntax error: {exc}", source=name) from None
    return validate_pipeline(data, Source(name, text, apply_overrides(data, overrides or [])))


def _non_finite(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, (*path, str(k)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _non_finite(v, (*path, str(i)))]
    return []


def validate_pipeline(data: dict, source: Source) -> tuple[PipelineConfig, dict, Source]:
    """Check tables and keys of an already-parsed pipeline (overrides applied)."""
    # TOML has inf and nan; no option means them (a learning rate of inf skips every step silently)
    problems = [source.error(*_table_key(list(path)), "must be a finite number (got "
                             f"{_lookup(data, path)!r})") for path in _non_finite(data)]
    if problems:
        raise combine_errors(problems)
    try:
        return PipelineConfig.model_validate(data), data, source
    except ValidationError as exc:
        raise _schema_errors(exc, source) from None
