"""The host side: one warm worker process per sandboxed plugin component, started once and reused,
killed (its whole process group) when a call runs past its wall time, when its RSS passes the limit
or when it floods its output, and restarted on the next call with the crash reported."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import KernelError, PluginLoadError, UserError
from . import protocol
from .confine import python_read_paths
from .limits import SandboxLimits

STARTUP_SECONDS = 60.0  # importing a plugin (torch...) can take a while; separate from the per-call wall time
OUTPUT_LIMIT = 16 << 20  # bytes a worker may write to stdout + stderr before it is killed
KEPT_OUTPUT = 64 << 10  # of which the host keeps the last this many, for error messages


class SandboxError(KernelError):
    """A sandboxed plugin failed: it raised, crashed, ran out of a limit or broke the protocol."""

    def __init__(self, message: str, *, plugin: str | None = None, kind: str = "SandboxError",
                 traceback: str | None = None) -> None:
        super().__init__(message)
        self.plugin, self.kind, self.traceback = plugin, kind, traceback


class SandboxStopped(SandboxError):
    """A sandboxed plugin failed and its failure policy stopped the run (after a clean checkpoint)."""


class SandboxUnavailable(UserError, SandboxError):
    """A layer named in ``require`` cannot be applied on this machine (exit 2: the setup's to fix)."""


def package_dir(module: str) -> str | None:
    """Where a top-level package lives, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return str(Path(next(iter(spec.submodule_search_locations))).resolve())
    return str(Path(spec.origin).resolve().parent) if spec.origin else None


def read_paths(extra_modules: tuple[str, ...] = ()) -> list[str]:
    paths = set(python_read_paths())
    for module in ("apt_kernel", "apt_sdk", "pluggy", "pydantic", "pydantic_core", "numpy", *extra_modules):
        found = package_dir(module)
        if found:
            paths.add(found)
    return sorted(paths)


class _Output(threading.Thread):
    """Drains one pipe of the worker: keeps the tail, counts the rest, and trips past the limit."""

    def __init__(self, pipe, on_flood, echo=None) -> None:
        super().__init__(daemon=True)
        self.pipe, self.on_flood, self.echo, self.total, self.tail = pipe, on_flood, echo, 0, bytearray()

    def run(self) -> None:
        while chunk := self.pipe.read1(1 << 16):
            self.total += len(chunk)
            self.tail += chunk
            del self.tail[:-KEPT_OUTPUT]
            if self.total > OUTPUT_LIMIT:
                self.on_flood()
                return
            if self.echo is not None and self.total < KEPT_OUTPUT:  # the plugin's log lines, not a flood
                for line in chunk.decode(errors="replace").splitlines():
                    self.echo(line)

    def text(self) -> str:
        return self.tail.decode(errors="replace")


class SandboxWorker:
    """One confined worker process. ``init`` says what it runs (see worker.py)."""

    def __init__(self, init: dict, limits: SandboxLimits, label: str, echo=None) -> None:
        self.init, self.limits, self.label, self.echo = init, limits, label, echo
        self.proc: subprocess.Popen | None = None
        self.layers: list[dict] = []
        self.ready: dict = {}
        self.killed_for: str | None = None
        self.restarts = 0
        self._lock = threading.Lock()
        self.pool = protocol.BufferPool()  # tensors to this worker go through reused shared buffers

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> dict:
        self.killed_for = None
        self.tmp = tempfile.mkdtemp(prefix="apt-sandbox-")
        host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.tmp, "TMPDIR": self.tmp,
               "PYTHONDONTWRITEBYTECODE": "1",
               **{key: os.environ[key] for key in self.limits.env if key in os.environ}}
        # -u: the plugin's prints reach the log as they happen (-I ignores PYTHONUNBUFFERED)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-u", "-m", "apt_kernel.sandbox.worker", str(worker_end.fileno())],
            pass_fds=[worker_end.fileno()], cwd=self.tmp, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        worker_end.close()
        self.sock = host_end
        self.outputs = [_Output(self.proc.stdout, lambda: self._kill("wrote more than 16 MiB of output"), self.echo),
                        _Output(self.proc.stderr, lambda: self._kill("wrote more than 16 MiB of output"))]
        for thread in self.outputs:
            thread.start()
        self._watchdog = threading.Thread(target=self._watch_memory, args=(self.proc,), daemon=True)
        self._watchdog.start()
        init = {**self.init, "limits": self.limits.model_dump(), "require": self.limits.require,
                "write_paths": [self.tmp, *self.limits.allow_paths],
                "read_paths": self.init.get("read_paths") or read_paths()}
        self.ready = self._exchange(init, STARTUP_SECONDS, "starting")
        self.layers = self.ready.get("layers", [])
        if not self.ready.get("ready"):
            self.close()
            if self.ready.get("missing"):
                detail = "; ".join(f"{layer['name']}: {layer['detail']}" for layer in self.layers
                                   if layer["name"] in self.ready["missing"])
                raise SandboxUnavailable(f"{self.label}: required sandbox layer unavailable: {detail}",
                                         plugin=self.init.get("plugin", {}).get("name"), kind="SandboxUnavailable")
            error = self.ready.get("error", {})
            if error.get("type") == PluginLoadError.__name__:  # refused by the kernel's own checks, in the worker:
                raise PluginLoadError(error.get("message"))  # the same error as in this process
            raise SandboxError(f"{self.label}: failed to start: {error.get('type')}: {error.get('message')}",
                               plugin=self.init.get("plugin", {}).get("name"), kind=error.get("type", "SandboxError"),
                               traceback=error.get("traceback"))
        return self.ready

    def _watch_memory(self, proc: subprocess.Popen) -> None:
        """Anonymous resident memory (RssAnon: the plugin's own data, not the shared libraries every
        Python maps) against the limit. Without RLIMIT_DATA (gpu = true) this is the memory limit;
        with it, a backstop with some room, so that it never races the clean MemoryError."""
        limit = (self.limits.memory_mb + (0 if self.limits.gpu else 32)) << 20
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as fh:
                    anon = next((int(line.split()[1]) << 10 for line in fh if line.startswith("RssAnon:")), 0)
            except OSError:
                return
            if anon > limit:
                self._kill(f"used {anon >> 20} MiB of memory (limit {self.limits.memory_mb} MiB)")
                return
            time.sleep(0.05)

    def _kill(self, reason: str) -> None:
        if self.killed_for is None:
            self.killed_for = reason
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole session: nothing it started survives
            except ProcessLookupError:
                pass

    def close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                protocol.send(self.sock, {"op": "close"})
                proc.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        self._kill("closed")
        proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session
        except (ProcessLookupError, PermissionError):
            pass
        self.sock.close()
        for thread in self.outputs:
            thread.join(timeout=1.0)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.pool.close()
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- calls -----------------------------------------------------------------------------------
    def call(self, message: dict) -> dict:
        """Send one call and wait for its reply, within the wall time; (re)start the worker if needed."""
        with self._lock:
            if not self.alive:
                if self.proc is not None:
                    self.close()
                    self.restarts += 1
                self.start()
            return self._exchange(message, self.limits.wall_seconds_per_call, "running a call")

    def _exchange(self, message: dict, timeout: float, doing: str) -> dict:
        try:
            self.sock.settimeout(timeout)
            protocol.send(self.sock, message, self.pool)
            return protocol.recv(self.sock, tensors="torch")
        except TimeoutError:
            self._kill(f"ran past its wall time of {timeout:g} s {doing}")
        except (protocol.ProtocolError, OSError) as exc:
            try:
                self.proc.wait(timeout=1.0)  # a closed connection is usually a worker that just died
            except subprocess.TimeoutExpired:
                if self.killed_for is None:
                    self._kill(f"broke the protocol: {exc}")
        finally:
            self.pool.release()
        raise self._crash_error()

    def _crash_error(self) -> SandboxError:
        proc = self.proc
        try:
            code = proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._kill("did not exit")
            code = proc.wait()
        for thread in self.outputs:
            thread.join(timeout=1.0)
        if self.killed_for:
            reason = self.killed_for
        elif code is not None and code < 0:
            name = signal.Signals(-code).name
            reason = {"SIGXCPU": f"ran out of CPU time ({self.limits.cpu_seconds} s)",
                      "SIGKILL": "was killed (SIGKILL: CPU time past the hard limit, or the kernel's OOM killer)",
                      "SIGXFSZ": f"wrote a file over {self.limits.file_size_mb} MiB",
                      "SIGSYS": "made a forbidden system call"}.get(name, f"crashed with {name}")
        else:
            reason = f"exited with code {code}"
        stderr = self.outputs[1].text().strip().splitlines()[-5:] if self.outputs else []
        detail = ("\n  " + "\n  ".join(stderr)) if stderr else ""
        return SandboxError(f"{self.label}: the sandboxed worker {reason}{detail}",
                            plugin=self.init.get("plugin", {}).get("name"), kind="SandboxCrash")

    def stdout(self) -> str:
        return self.outputs[0].text() if self.proc is not None else ""


def as_plain(value: Any) -> Any:
    """What a host-side value looks like to a sandboxed plugin: numbers for 0-d tensors, data otherwise."""
    if isinstance(value, dict):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "shape"):
        return value
    return str(value)
