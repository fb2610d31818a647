"""`SandboxedCallback`: the host-side stand-in for a callback that runs in a sandbox worker.

The trainer calls it like any callback. Only the events the plugin's class overrides cross the
boundary; each carries a read-only snapshot of the trainer (step, epoch, metrics) and comes back with
the decisions the plugin may take (stop, skip the next update). When the plugin fails, the error is
reported with the plugin's name and, per ``on_failure``, the run stops cleanly at the end of the step
(and saves its checkpoint) or goes on without that call."""

from __future__ import annotations

from typing import Any

from ..callbacks import EVENTS, callback_hook
from ..errors import failure_message
from .host import SandboxError, SandboxWorker, as_plain, package_dir, read_paths
from .limits import SandboxLimits


def _trainer_view(trainer: Any) -> dict:
    """The plain-data part of the ``TrainerState`` protocol (model, optimizer, data stay here)."""
    return {"step": trainer.step, "epoch": trainer.epoch, "is_main": trainer.is_main, "rank": trainer.rank,
            "world_size": trainer.world_size, "run_dir": str(trainer.run_dir),
            "should_stop": bool(trainer.should_stop), "skip_next_step": bool(trainer.skip_next_step),
            "metrics": as_plain(dict(trainer.metrics)), "losses": [float(x) for x in trainer.losses[-20:]]}


class SandboxedCallback:
    def __init__(self, plugin: Any, name: str, options: dict, limits: SandboxLimits, context: Any,
                 dependencies: tuple[Any, ...] = ()) -> None:
        self.plugin, self.name, self.limits, self.context = plugin, name, limits, context
        allow = [str(path).replace("${run_dir}", str(context.run_dir)) for path in limits.allow_paths]
        if any("${run_dir}" in str(path) for path in limits.allow_paths):
            context.run_dir.mkdir(parents=True, exist_ok=True)  # Landlock grants only a folder that exists
        limits = limits.model_copy(update={"allow_paths": allow})
        # the plugin's own package and those of the plugins it declares it needs (it may import them)
        packages = [package_dir(info.module) for info in (plugin, *dependencies) if not info.path]
        extra_read = [p for p in (*packages, plugin.path) if p]
        init = {"mode": "component", "kind": "callback", "name": name, "options": options,
                "plugin": {"name": plugin.name, "module": plugin.module if not plugin.path else
                           f"apt_local_plugins.{plugin.name}", "path": plugin.path, "version": plugin.version,
                           "distribution": plugin.distribution, "manifest": plugin.manifest.to_dict()},
                "context": {"pipeline_name": context.pipeline_name, "seed": context.seed,
                            "run_dir": str(context.run_dir), "rank": context.rank, "world_size": context.world_size,
                            "config": context.config},
                "read_paths": sorted({*read_paths(), *extra_read})}
        self.worker = SandboxWorker(init, limits, f"plugin {plugin.name!r} callback {name!r}",
                                    echo=lambda line: context.log(f"[{name}] {line}"))
        self.worker.start()  # confinement and the plugin's own errors show up now, before training
        self.events = set(self.worker.ready.get("events", []))
        self.state_key: str | None = self.worker.ready.get("state_key")  # the plugin's, for its checkpoint key
        self.stop_reason: str | None = None  # set when a failure stopped the run (on_failure = "stop")

    def _forward(self, event: str, trainer: Any, *args: Any) -> Any:
        if event not in self.events:
            return None
        try:
            reply = self.worker.call({"method": event, "trainer": _trainer_view(trainer), "args": as_plain(list(args))})
        except SandboxError as exc:
            return self._failed(trainer, exc.kind, str(exc), None, event)
        for decision, value in reply.get("decisions", {}).items():
            if decision in ("should_stop", "skip_next_step") and value:
                setattr(trainer, decision, True)
        for report in reply.get("reports", []):
            if report.get("type") == "SandboxDenied":
                trainer.log(f"warning: plugin {self.plugin.name!r} ({self.name}): {report.get('message')}")
            self.context.report_error({**report, "plugin": self.plugin.name, "hook": f"callback {self.name}"})
        if not reply.get("ok"):
            error = reply.get("error", {})
            message = failure_message(self.plugin.name, callback_hook(self.name, event), error.get("type", "Error"),
                                      f"{error.get('message')}{self._hint(error)}")
            return self._failed(trainer, error.get("type", "Error"), message, error.get("traceback"), event)
        return reply.get("result")

    def _hint(self, error: dict) -> str:
        """Writing is denied by default, so a plugin that writes its output (the SDK's template does) fails
        with a bare PermissionError on a path: say which setting allows it."""
        if error.get("type") != "PermissionError":
            return ""
        if str(self.context.run_dir) in str(error.get("message")) and "${run_dir}" not in self.limits.allow_paths:
            return ('; a sandboxed plugin writes only in its own temp folder and in [callbacks.limits] allow_paths: '
                    'allow_paths = ["${run_dir}"] lets it write the run folder')
        return "; a sandboxed plugin reads and writes only in its own temp folder and in [callbacks.limits] allow_paths"

    def _failed(self, trainer: Any, kind: str, message: str, trace: str | None, event: str | None = None) -> None:
        stop = self.limits.on_failure == "stop"
        self.context.log(f"warning: {message}" + ("; stopping the run at the end of this step" if stop else
                                                  "; the run goes on (on_failure = \"continue\")"))
        hook = callback_hook(self.name, event) if event else f"callback {self.name}"
        self.context.report_error({"type": kind, "message": message, "traceback": trace, "plugin": self.plugin.name,
                                   "hook": hook, "severity": "error",
                                   "global_step": getattr(trainer, "step", None),
                                   "epoch": getattr(trainer, "epoch", None), "rank": self.context.rank})
        if stop and trainer is not None:
            trainer.should_stop = True
            self.stop_reason = self.stop_reason or f"{message}; training stopped at step {trainer.step}"
        return None

    def implemented_events(self) -> set[str]:
        """What the plugin's class overrides, as its worker reported at start."""
        return self.events

    def state_dict(self) -> dict:
        if "state_dict" not in self.events:
            return {}
        result = self._forward_plain("state_dict")
        return result if isinstance(result, dict) else {}

    def load_state_dict(self, state: dict) -> None:
        if "load_state_dict" in self.events:
            self._forward_plain("load_state_dict", state)

    def _forward_plain(self, method: str, *args: Any) -> Any:
        try:
            reply = self.worker.call({"method": method, "trainer": None, "args": as_plain(list(args))})
        except SandboxError as exc:
            self._failed(None, exc.kind, str(exc), None)
            return None
        return reply.get("result") if reply.get("ok") else None

    def close(self) -> None:
        self.worker.close()


def _make_event(event: str):
    def handler(self: SandboxedCallback, trainer: Any, *args: Any) -> None:
        if event == "on_exception":
            args = tuple({"type": type(a).__name__, "message": str(a)} if isinstance(a, BaseException) else a
                         for a in args)
        self._forward(event, trainer, *args)
        if event in ("on_fit_end", "on_exception"):
            self.close()

    handler.__name__ = event
    return handler


for _event in EVENTS:
    setattr(SandboxedCallback, _event, _make_event(_event))
