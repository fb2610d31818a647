"""From a validated pipeline to a trained model: plan (no plugin imports), then load, build, fit."""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .context import BuildContext
from .discovery import INSTALLED, PluginInfo, stale_editable
from .errors import DuplicateComponentError, OptionError, PluginLoadError, ResolutionError, UserError
from .kernel import Kernel, PluginHookError
from .pipeline import PipelineConfig, Source, combine_errors, validate_options
from .registry import closest
from .rundir import RunFolder, check_path
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
        owners = " and ".join(i.distribution or i.name for i in usable)
        raise DuplicateComponentError(f"{kind} {name!r} is provided by two plugins: {owners}; "
                                      f"disable one with APT_DISABLE_PLUGINS")
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
        _section(plan.data, table).update(options)
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


def _section(data: dict, table: str) -> dict:
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


def load_components(kernel: Kernel, plan: Plan) -> None:
    """Import the planned plugins; a failure of one the pipeline needs is the user's error (exit 2)."""
    kernel.load(plan.plugins)
    for name in plan.plugins:
        info = kernel.plugins[name]
        if name not in kernel.loaded:
            raise PluginLoadError(f"plugin {name!r} failed to load: {info.reason}")
    for table, kind, spec in plan.config.components():
        if table not in plan.sandboxed and kernel.registry.get(kind, spec.use) is None:
            owner = plan.providers[table].name
            raise PluginLoadError(f"plugin {owner!r} declares {kind} {spec.use!r} in its manifest "
                                  f"but did not register it")


def _build(kernel: Kernel, kind: str, name: str, options: dict, context: BuildContext, source: Source,
           table: str) -> Any:
    registration = kernel.registry.get(kind, name)
    factory = registration.factory
    if kernel.profiler is not None:
        factory = kernel.profiler.timed(registration.plugin, f"{kind} factory {name}", factory)
    try:
        return factory(dict(options), context)
    except OptionError as exc:  # the factory names the key; the pipeline's file and line are ours to add
        raise source.error(exc.table or table, exc.key, exc.detail) from None
    except UserError:
        raise
    except Exception as exc:
        raise PluginHookError(registration.plugin, f"{kind} factory {name!r}", exc) from exc


def _watch(kernel: Kernel, plan: Plan, context: BuildContext) -> None:
    """With --profile: time the model's forward, the loss and the data (callbacks and hooks are timed
    where they are dispatched). Wrappers and torch's module hooks only: no plugin object is patched."""
    profiler = kernel.profiler
    owner = {kind: kernel.registry.get(kind, spec.use).plugin for table, kind, spec in plan.config.components()
             if table in ("model", "data", "loss")}
    profiler.watch_model(context.model, owner["model"], plan.config.model.use)
    context.data = profiler.timed_data(context.data, owner["data"], plan.config.data.use)
    context.loss = profiler.timed(owner["loss"], f"loss {plan.config.loss.use}", context.loss)


def _raise_if_a_sandbox_stopped(plan: Plan, context: BuildContext) -> None:
    """A sandboxed plugin that failed with on_failure = "stop" ended training cleanly (checkpoint saved):
    the run still failed, and says which plugin did it."""
    if not plan.sandboxed:
        return
    from .sandbox.callback import SandboxedCallback
    from .sandbox.host import SandboxStopped

    for table, callback in zip((t for t, kind, _ in plan.config.components() if kind == "callback"),
                               context.callbacks, strict=True):
        reason = callback.stop_reason if isinstance(callback, SandboxedCallback) else None
        if reason:
            raise PluginHookError(plan.providers[table].name, f"{table} (sandboxed)",
                                  SandboxStopped(reason))


def execute(kernel: Kernel, plan: Plan, *, log=None, progress: bool = True, profiler=None,
            resume: str | None = None, resume_command: str | None = None,
            overwrite: bool = False) -> tuple[dict, BuildContext]:
    """Load, build and fit. Returns the trainer's result and the context holding every component.

    ``resume`` (a checkpoint path, a glob or ``"latest"``) is handed to the trainer in the context;
    ``resume_command`` is how the user would resume this run, for the trainer's messages. The run
    folder is this run's alone while it runs (``rundir``); one that holds another run is refused
    unless the run resumes it or ``overwrite`` moves the old run aside."""
    kernel.profiler = profiler
    load_components(kernel, plan)
    config, data = plan.config, plan.data
    run_dir = config.output_dir
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    context = BuildContext(config.pipeline.name, config.pipeline.seed, run_dir, data, progress=progress and rank == 0,
                           rank=rank, world_size=world_size,
                           report_error=lambda error: kernel.call_hook("error_reported", error={
                               "pipeline": config.pipeline.name, "run_dir": str(run_dir), **error}),
                           resume=resume)
    context.callbacks.profiler = profiler
    if resume_command is not None:
        context.resume_command = resume_command
    if rank != 0:
        context.log = lambda message: None  # one voice: rank 0 logs for everyone
    elif log is not None:
        context.log = log
    folder = RunFolder(run_dir)
    if context.is_main and overwrite:  # the old run goes aside before a component could open a file in it
        folder.claim(bool(resume), overwrite=True)
    elif context.is_main:  # a folder in use is refused before anything is built (one holding a run once
        folder.check(resume=True, overwrite=False)  # the trainer has read its options: they may resume)
    kernel.call_hook("seed_everything", seed=config.pipeline.seed)
    kernel.call_hook("pipeline_start", pipeline=data, run_dir=str(run_dir))
    boxes: list[Any] = []  # the sandboxed callbacks' stand-ins, whose workers are closed whatever happens
    try:
        for table, kind, spec in config.components():
            options = {k: v for k, v in _section(data, table).items() if k not in SPEC_KEYS}
            if table in plan.sandboxed:
                from .sandbox.callback import SandboxedCallback

                info = plan.providers[table]
                needs = tuple(kernel.plugins[d] for d in info.manifest.requires if d in kernel.plugins)
                built = SandboxedCallback(info, spec.use, options, plan.limits[table], context, needs)
                boxes.append(built)
            else:
                built = _build(kernel, kind, spec.use, options, context, plan.source, table)
            if kind == "encoder":
                context.encoders[table.split(".", 1)[1]] = built
            elif kind == "callback":
                context.callbacks.add(built, plan.providers[table].name, spec.use)
            else:
                setattr(context, kind, built)
        # only now, with every component built, is the run valid enough to leave files behind
        if context.is_main:
            if not folder.locked:
                folder.claim(bool(context.resume), overwrite)  # the trainer may have set resume from its options
            if folder.moved_to is not None:
                context.log(f"--overwrite: the previous run in {run_dir} was moved to {folder.moved_to}")
            if not context.resume:  # a resumed run's record is replaced once the trainer has accepted it
                _write_pipeline(run_dir, data)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
        result = _fit(kernel, plan, context, profiler)
        _raise_if_a_sandbox_stopped(plan, context)
    except BaseException as exc:
        if context.resume and context.is_main and not isinstance(exc, UserError) and folder.locked:
            _write_pipeline(run_dir, data)  # it trained with this pipeline before failing
        folder.release()
        error = {"type": type(exc).__name__, "message": str(exc),
                 "traceback": traceback.format_exc(),
                 "plugin": getattr(exc, "plugin", None), "hook": getattr(exc, "hook", None)}
        try:
            kernel.call_hook("pipeline_error", pipeline=data, run_dir=str(run_dir), error=error)
        except PluginHookError as hook_exc:
            context.log(f"warning: {hook_exc}")
        raise
    finally:
        # a worker closes at on_fit_end only if its callback listens to that event; one that does not (the
        # error log) was killed with this process, its files unclosed (the error log's SQLite WAL unmerged)
        for box in boxes:
            box.close()
    if context.resume and context.is_main:
        _write_pipeline(run_dir, data)
    folder.release()
    kernel.call_hook("pipeline_end", pipeline=data, run_dir=str(run_dir), result=result)
    return result, context


def _write_pipeline(run_dir: Path, data: dict) -> None:
    (run_dir / "pipeline.json").write_text(json.dumps(data, indent=2, allow_nan=False))


def _fit(kernel: Kernel, plan: Plan, context: BuildContext, profiler) -> dict:
    if profiler is None:
        return context.trainer.fit(context)
    _watch(kernel, plan, context)
    started, profiler.training = time.perf_counter(), True
    result = context.trainer.fit(context)
    profiler.fit_seconds, profiler.training = time.perf_counter() - started, False
    profiler.record(kernel.registry.get("trainer", plan.config.trainer.use).plugin,
                    f"trainer {plan.config.trainer.use}.fit", profiler.fit_seconds)
    if context.is_main:
        result["profile"] = str(context.run_dir / "profile.json")
        profiler.save(context.run_dir / "profile.json")
    return result


def _plan(pipeline: str | Path | dict, overrides: list[str] | None, kernel: Kernel) -> Plan:
    from .pipeline import load_pipeline, parse_pipeline

    if isinstance(pipeline, dict):
        config, data, source = _from_dict(pipeline, overrides)
    elif isinstance(pipeline, Path) or (isinstance(pipeline, str) and "\n" not in pipeline
                                         and pipeline.endswith(".toml")):
        config, data, source = load_pipeline(pipeline, overrides)
    else:
        config, data, source = parse_pipeline(pipeline, "<pipeline>", overrides)
    return plan_pipeline(kernel, config, data, source)


def run_pipeline(pipeline: str | Path | dict, overrides: list[str] | None = None, *,
                 kernel: Kernel | None = None, plugins_dirs: tuple[str, ...] = (), log=None,
                 progress: bool = False, resume: str | None = None,
                 overwrite: bool = False) -> tuple[dict, BuildContext]:
    """Run a pipeline from a path, TOML text or dict, in this process (the Python API of ``run``).
    ``resume`` continues from a checkpoint: a path, a glob, or ``"latest"``; ``overwrite`` moves a
    previous run in the output folder aside instead of refusing it."""
    kernel = kernel or Kernel(plugins_dirs)
    return execute(kernel, _plan(pipeline, overrides, kernel), log=log, progress=progress, resume=resume,
                   overwrite=overwrite)


def check_pipeline(pipeline: str | Path | dict, overrides: list[str] | None = None, *,
                   kernel: Kernel | None = None, plugins_dirs: tuple[str, ...] = ()) -> dict:
    """Validate a pipeline (schema, plugins, options) without running it; returns its data with the
    overrides applied. Raises the same ``PipelineError``s as ``run``."""
    return _plan(pipeline, overrides, kernel or Kernel(plugins_dirs)).data


def _from_dict(data: dict, overrides: list[str] | None):
    from .pipeline import apply_overrides, validate_pipeline

    data = json.loads(json.dumps(data))  # a private copy, and proof that it is plain data
    return validate_pipeline(data, Source("<pipeline dict>", "", apply_overrides(data, overrides or [])))
