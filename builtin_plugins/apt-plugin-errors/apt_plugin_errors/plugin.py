"""The `error-log` callback and the hooks that feed it: failed runs, failing plugin hooks and
factories, skipped inf/NaN steps. Nothing is written unless something goes wrong."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from apt_sdk import BuildContext, Callback, OptionError, RunInterrupted, RunReader, UserError, folder_problem, hookimpl

from .logger import ErrorLogger

_ACTIVE: dict[str, ErrorLog] = {}  # run_dir -> that run's error-log callback (hooks carry only run_dir)
# reports made while the pipeline is built, before its error log exists (a data component's skipped
# records): kept from pipeline_start and recorded when the error log is built
_PENDING: dict[str, list[dict]] = {}


def latest_checkpoint(run_dir: str | Path) -> str | None:
    """What ``--resume latest`` would continue from (regular or temp), for the row's reproduce line."""
    try:
        latest = RunReader(run_dir).latest_checkpoint()
    except UserError:  # a run record that cannot be read: the error is recorded without it
        return None
    return str(latest) if latest is not None else None


class ErrorLog(Callback):
    """Records what goes wrong in a run, with the step, so the row is enough to reproduce it."""

    def __init__(self, logger: ErrorLogger, run_dir: Path, pipeline: dict) -> None:
        self.logger, self.run_dir, self.pipeline = logger, run_dir, pipeline
        self.logged: set[tuple[str, str]] = set()

    def record(self, error, **fields) -> int:
        fields.setdefault("pipeline", self.pipeline["pipeline"]["name"])
        fields.setdefault("checkpoint_path", latest_checkpoint(self.run_dir))
        return self.logger.log_error(error, context={"pipeline": self.pipeline}, run_id=str(self.run_dir), **fields)

    def on_exception(self, trainer, error: BaseException) -> None:
        if isinstance(error, RunInterrupted):  # a requested stop, not an error
            return
        self.logged.add((type(error).__name__, str(error)))
        from .distributed import DistributedError  # here: loading the plugin (doctor, list) needs no torch

        if isinstance(error, DistributedError):  # rank 0 records each failing rank's own error, once
            if trainer.is_main:
                for failure in error.failures:
                    self.record({k: failure[k] for k in ("type", "message", "traceback")}, plugin=failure["plugin"],
                                rank=failure["rank"], epoch=trainer.epoch, global_step=failure["step"],
                                checkpoint_path=getattr(error, "checkpoint", None))
            return
        original = getattr(error, "original", None) or error  # a CallbackError wraps what the callback raised
        self.logged.add((type(original).__name__, str(original)))
        self.record(original, plugin=getattr(error, "plugin", None), hook=getattr(error, "hook", None),
                    rank=trainer.rank, epoch=trainer.epoch, global_step=trainer.step)


def build_error_log(options: dict, context: BuildContext) -> ErrorLog:
    path = Path(options["db_path"] or context.run_dir / "errors.db")
    try:
        logger = ErrorLogger(path)
    except (OSError, sqlite3.OperationalError) as exc:
        if not options["db_path"]:  # the run folder's: the kernel has checked it, so this is no option's fault
            raise
        problem = folder_problem(path.parent)
        reason = (f"{problem[0]} is a file, not a folder" if problem and problem[1] == "a file" else
                  exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
        raise OptionError("db_path", f"cannot open {path}: {reason}") from None
    log = ErrorLog(logger, context.run_dir, context.config)
    _ACTIVE[str(context.run_dir)] = log
    for error in _PENDING.pop(str(context.run_dir), []):
        log.record(error)
    return log


@hookimpl
def register_callbacks(register):
    register("error-log", build_error_log, summary="Persistent SQLite error log of the run")


@hookimpl
def pipeline_start(pipeline: dict, run_dir: str):
    _PENDING[run_dir] = []


@hookimpl
def pipeline_end(pipeline: dict, run_dir: str, result: dict):
    _PENDING.pop(run_dir, None)


@hookimpl
def error_reported(error: dict):
    run_dir = error.get("run_dir", "")
    log = _ACTIVE.get(run_dir)
    if log is not None:
        log.record(error)
    elif run_dir in _PENDING:
        _PENDING[run_dir].append(error)


@hookimpl
def pipeline_error(pipeline: dict, run_dir: str, error: dict):
    _PENDING.pop(run_dir, None)
    log = _ACTIVE.get(run_dir)
    if log is None or error["type"] == "RunInterrupted" or (error["type"], error["message"]) in log.logged:
        return  # not logging this run, a requested stop, or on_exception already recorded it with its step
    log.record(error)
