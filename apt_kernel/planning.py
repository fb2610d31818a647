"""Planning a run: which plugin provides each component, its options checked against the provider's
manifest, the sandbox settings, and the plugin versions solved. Nothing is imported or written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .discovery import INSTALLED, PluginInfo, stale_editable
from .errors import DuplicateComponentError, PluginLoadError, ResolutionError, UserError, closest
from .kernel import Kernel
from .option_schemas import validate_options
from .pipeline import PipelineConfig, Source, combine_errors
from .rundir import check_path
from .solver import KERNEL_API, Catalog, solve


@dataclass
class Plan:
    """Everything decided before any plugin code runs."""

    config: PipelineConfig
    data: dict  # the pipeline as plain data with every component's options filled in
    source: Source
    providers: dict[str, PluginInfo] = field(default_factory=dict)  # table label -> plugin
    plugins: list[str] = field(default_factory=list)  # to load, dependencies first
    limits: dict[str, Any] = field(default_factory=dict)  # sandboxed table -> its SandboxLimits

    @property
    def sandboxed(self) -> set[str]:
        """Tables whose component runs in a sandbox worker."""
        return set(self.limits)


def _provider(kernel: Kernel, table: str, kind: str, name: str, source: Source) -> PluginInfo:
    offering = [i for i in kernel.plugins.values() if i.manifest and name in i.manifest.provides.get(kind, {})]
    if not offering:
        known = sorted({n for i in kernel.plugins.values() if i.manifest for n in i.manifest.provides.get(kind, {})})
        hint = closest(name, known)
        msg = f"unknown {kind} {name!r}" + (f" (did you mean {hint!r}?)" if hint else "")
        msg += f"; installed {kind} components: {', '.join(known) or 'none'}"
        raise source.error(table, "use", msg)
    usable = [i for i in offering if i.status != "disabled"] or offering
    if len(usable) > 1:
        first, second = (i.distribution or i.name for i in usable[:2])
        raise DuplicateComponentError(kind, name, first, second, disable=usable[1].name)
    info = usable[0]
    if info.status not in (INSTALLED, "incompatible"):
        raise source.error(table, "use", f"{kind} {name!r} comes from plugin {info.name!r}, which is "
                                         f"{info.status}: {info.reason}")
    return info


def plan_pipeline(kernel: Kernel, config: PipelineConfig, data: dict, source: Source) -> Plan:
    """Validate components and options against manifests and solve plugin versions; imports nothing."""
    plan = Plan(config, json.loads(json.dumps(data)), source)
    try:
        check_path(config.output_dir)
    except UserError as exc:
        raise source.error("pipeline", "output_dir", str(exc)) from None
    for table, kind, spec in config.components():
        info = _provider(kernel, table, kind, spec.use, source)
        options = validate_options(table, kind, spec, info.manifest.provides[kind][spec.use], source)
        plan.providers[table] = info
        section(plan.data, table).update(options)
        if spec.sandbox or spec.limits is not None or info.manifest.sandbox:  # the manifest may ask for it
            if kind != "callback":
                why = f"plugin {info.name!r} asks for the sandbox, but " if not spec.sandbox else ""
                raise source.error(table, "sandbox", f"{why}only callbacks can run in the sandbox, not a {kind}")
            plan.limits[table] = _sandbox_limits(table, spec.limits or {}, source)
    catalog = Catalog()
    for info in kernel.plugins.values():
        if info.manifest is not None and info.status != "failed":
            catalog.add(info.name, info.version, info.manifest.requires, info.manifest.kernel_api)
            catalog.installed.add(info.name)
    root = {info.name: "*" for info in plan.providers.values()}
    root.update(config.pipeline.requires)
    try:
        chosen = solve(catalog, root)
    except ResolutionError as exc:  # a version that looks wrong because an editable install was not redone
        named = [i for i in kernel.plugins.values() if i.name in str(exc)]
        stale = [f"{i.name} is {note}" for i in named if (note := stale_editable(i))]
        raise ResolutionError("; ".join([str(exc), *stale])) from None
    order = [n for n in _dependency_order(kernel, list(chosen)) if n != KERNEL_API]
    for name in order:
        if kernel.plugins[name].status != INSTALLED:
            info = kernel.plugins[name]
            raise PluginLoadError(f"plugin {name!r} is needed but {info.status}: {info.reason}")
    in_process = {info.name for table, info in plan.providers.items() if table not in plan.sandboxed}
    sandbox_only = {plan.providers[table].name for table in plan.sandboxed} - in_process
    plan.plugins = [name for name in order if name not in sandbox_only]  # never imported in this process
    return plan


SPEC_KEYS = ("use", "sandbox", "limits")  # read by the kernel, not options of the component


def _sandbox_limits(table: str, limits: dict, source: Source):
    from pydantic import ValidationError

    from .sandbox.limits import SandboxLimits

    try:
        return SandboxLimits(**limits)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():  # every mistake at once, as for options: a security setting is fixed in one go
            key = "limits." + ".".join(str(p) for p in err["loc"])
            hint = closest(str(err["loc"][-1]), list(SandboxLimits.model_fields)) if err["loc"] else None
            unknown = "unknown key" + (f" (did you mean {hint!r}?)" if hint else "")
            message = (unknown if err["type"] == "extra_forbidden" else
                       err["msg"].removeprefix("Value error, ") if err["type"] == "value_error" else
                       f"{err['msg'].lower()} (got {err.get('input')!r})")
            problems.append(source.error(table, key, message))
        raise combine_errors(problems) from None


def section(data: dict, table: str) -> dict:
    if table.startswith("callbacks["):
        return data["callbacks"][int(table[10:-1])]
    if table.startswith("encoders."):
        return data["encoders"][table[9:]]
    return data[table]


def _dependency_order(kernel: Kernel, names: list[str]) -> list[str]:
    ordered: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in ordered or name in trail or name not in kernel.plugins:
            return
        for dep in kernel.plugins[name].manifest.requires:
            visit(dep, trail + (name,))
        ordered.append(name)

    for name in sorted(names):
        visit(name, ())
    return ordered
