"""`PluginSandbox`: the original plan's API for running a code string, on the worker machinery."""

from __future__ import annotations

from typing import Any

from .host import SandboxError, SandboxWorker
from .limits import SandboxLimits


class PluginSandbox:
    """Run code strings in a confined worker process (started on first use, reused, restarted after a
    crash). ``allowed_imports`` lists what the code itself may import (another import fails with "not
    allowed"; what an allowed library imports internally is not checked): a convenience, the OS layers
    hold whatever it says. ``resource_limits`` takes ``max_memory_mb`` and ``max_cpu_time_sec`` (the
    original's keys) or any `SandboxLimits` field."""

    def __init__(self, allowed_imports: list[str] | None = None, resource_limits: dict[str, Any] | None = None) -> None:
        limits = dict(resource_limits or {})
        renamed = {"max_memory_mb": "memory_mb", "max_cpu_time_sec": "cpu_seconds", "timeout": "wall_seconds_per_call"}
        for old, new in renamed.items():
            if old in limits:
                limits[new] = limits.pop(old)
        self.limits = SandboxLimits(**limits)
        self.allowed_imports = list(allowed_imports) if allowed_imports is not None else None
        self.worker = SandboxWorker({"mode": "exec", "allowed_imports": self.allowed_imports,
                                     "plugin": {"name": "<code>"}}, self.limits, "sandboxed code")

    def execute_plugin(self, plugin_code: str, globals_dict: dict[str, Any] | None = None) -> dict[str, Any]:
        """{"success", "error", "stdout", "stderr", "result", "denied"}: ``result`` is the code's ``result``
        variable, ``denied`` the actions the sandbox refused (a process started with os.system, ...).
        stdout and stderr are captured up to 1 MiB each per call; output past that is dropped."""
        code = plugin_code
        try:
            reply = self.worker.call({"code": code, "globals": globals_dict or {}})
        except SandboxError as exc:
            return {"success": False, "error": str(exc), "stdout": self.worker.stdout(), "stderr": "",
                    "result": None, "crashed": True, "denied": []}
        reply.setdefault("result", None)
        reply["crashed"] = False
        return reply

    @property
    def layers(self) -> list[dict]:
        return self.worker.layers

    def close(self) -> None:
        self.worker.close()

    def __enter__(self) -> PluginSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
