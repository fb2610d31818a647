"""A component's options, checked against the schema its plugin declares in its manifest (``[provides.<kind>.<name>]
options``): a pydantic model built from the manifest, so no plugin is imported. Each bad key is a
``PipelineError`` naming the table, the key and the line; a misspelt key suggests the closest known one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)

from .errors import closest
from .manifest import ComponentDecl, OptionSpec
from .pipeline import ComponentSpec, Source, combine_errors


def _must_exist(value: str | None) -> str | None:
    if value is not None and not Path(value).exists():
        raise ValueError(f"file or folder not found: {value}")
    return value


_BASE_TYPES: dict[str, Any] = {
    "str": StrictStr, "int": StrictInt, "float": StrictInt | StrictFloat, "bool": StrictBool,
    "path": StrictStr, "list": list, "dict": dict, "any": Any,
}


def _field(spec: OptionSpec) -> tuple[Any, Any]:
    annotation: Any = _BASE_TYPES[spec.type]
    if spec.choices:
        annotation = Literal[tuple(spec.choices)]
    if spec.type == "path" and spec.must_exist:
        annotation = Annotated[annotation, AfterValidator(_must_exist)]
    if spec.optional:
        annotation = annotation | None
    limits = {k: v for k, v in (("ge", spec.min), ("le", spec.max)) if v is not None}
    default = ... if spec.required else spec.default
    return annotation, Field(default, description=spec.help, **limits)


def options_model(kind: str, name: str, decl: ComponentDecl) -> type[BaseModel]:
    extra = "allow" if decl.allow_extra_options else "forbid"
    fields = {key: _field(spec) for key, spec in decl.options.items()}
    return create_model(f"{kind}:{name}", __config__=ConfigDict(extra=extra), **fields)


def validate_options(table: str, kind: str, spec: ComponentSpec, decl: ComponentDecl,
                     source: Source) -> dict[str, Any]:
    """The component's options with defaults filled in, or a PipelineError per bad key."""
    try:
        model = options_model(kind, spec.use, decl).model_validate(spec.options)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                # another tool's name for an option first; then the kernel's own keys too: a misspelt
                # `sandbox` must not read as the plugin's business
                hint = next((name for name, spec in decl.options.items() if key in spec.aliases), None) or \
                    closest(key, [*decl.options, *(k for k in ComponentSpec.model_fields if k != "use")])
                msg = f"unknown option for {kind} {spec.use!r}" + (f" (did you mean {hint!r}?)" if hint else "")
            elif err["type"] == "missing":
                msg = f"missing required option of {kind} {spec.use!r}"
            else:
                msg = err["msg"].removeprefix("Value error, ")
                msg = f"{msg} (got {err.get('input')!r})" if "not found" not in msg else msg
            problems.append(source.error(table, key, msg))
        raise combine_errors(problems) from None
    values = model.model_dump()
    values.update(model.model_extra or {})
    return values
