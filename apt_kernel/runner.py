"""From a validated pipeline to a trained model: plan (planning.py: no plugin imports), then load and build
(building.py), claim the run folder, fit, and call the lifecycle hooks around it."""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from .building import build_components, load_components, watch_for_profile
from .context import BuildContext
from .errors import PluginError, UserError
from .kernel import Kernel
from .pipeline import Source
from .planning import Plan, plan_pipeline
from .rundir import RunFolder

__all__ = ["Plan", "check_pipeline", "execute", "plan_pipeline", "run_pipeline"]


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
            raise PluginError(plan.providers[table].name, f"{table} (sandboxed)", SandboxStopped(reason))


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
        folder.check(resume=True, overwrite=False)  # the trainer's options may resume: Trainer.resume)
    kernel.call_hook("seed_everything", seed=config.pipeline.seed)
    kernel.call_hook("pipeline_start", pipeline=data, run_dir=str(run_dir))
    boxes: list[Any] = []  # the sandboxed callbacks' stand-ins, whose workers are closed whatever happens
    try:
        build_components(kernel, plan, context, boxes)
        if not context.resume:  # the trainer's own options may continue the run: its declared hand-back
            context.resume = getattr(context.trainer, "resume", None)
        # only now, with every component built, is the run valid enough to leave files behind
        if context.is_main:
            if not folder.locked:
                folder.claim(bool(context.resume), overwrite)
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
        except PluginError as hook_exc:
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
    watch_for_profile(kernel, plan, context)
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
