"""`apt-kernel plugins doctor --sandbox`: the layers a worker applied, as it verified them, and what
the confined worker could actually do."""

from __future__ import annotations

import os
import socket

from .host import SandboxWorker
from .limits import SandboxLimits


def probe_layers() -> list[dict]:
    """Start a worker with default limits and report what it managed to apply (doctor --sandbox), then
    what the confined worker could actually do: each check is an attempt, seen failing from inside."""
    worker = SandboxWorker({"mode": "exec", "plugin": {"name": "probe"}}, SandboxLimits(), "sandbox probe")
    # an abstract AF_UNIX name belongs to the host's network namespace: reachable from the worker only if
    # it shares that namespace (seccomp allows AF_UNIX, so this is the namespace's doing alone)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"\0apt-sandbox-probe-{os.getpid()}-{os.urandom(4).hex()}"
    listener.bind(name)
    listener.listen(1)
    try:
        worker.start()
        checks = worker.call({"code": _PROBE_CODE, "globals": {"abstract": name}})
        found = checks.get("result") if checks.get("success") else None
        if found is None:
            return worker.layers + [{"name": "check", "active": False, "detail": str(checks.get("error"))}]
        return worker.layers + [{"name": "check", "active": all(held for _, held in found),
                                 "detail": ", ".join(what for what, _ in found)}]
    finally:
        worker.close()
        listener.close()


_PROBE_CODE = """
import os, socket
seen = []
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    seen.append(("inet socket ALLOWED", False))
except OSError:
    seen.append(("inet socket denied", True))
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    seen.append(("fork ALLOWED", False))
except OSError:
    seen.append(("fork denied", True))
try:
    open("/etc/hostname").read()
    seen.append(("/etc/hostname readable", False))
except OSError:
    seen.append(("/etc/hostname invisible", True))
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(abstract)
    seen.append(("the host's abstract unix socket REACHABLE", False))
except OSError:
    seen.append(("the host's abstract unix socket unreachable", True))
result = seen
"""
