"""The sandbox worker: ``python -I -m apt_kernel.sandbox.worker FD``. It reads its orders from the
socket FD, confines itself (confine.py), and only then imports plugin code and serves calls.

Modes: ``component`` builds one plugin component (a callback) and calls its methods; ``exec`` runs code
strings (`PluginSandbox.execute_plugin`)."""

from __future__ import annotations

import builtins
import functools
import io
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from apt_kernel.sandbox import confine, protocol

OUTPUT_CAP = 1 << 20  # per exec call; the host caps the worker's own stdout/stderr separately


def _text(value: Any) -> str:
    try:
        return str(value)
    except BaseException as exc:  # noqa: BLE001 - a hostile __str__ must not take the worker down
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


def describe(exc: BaseException) -> dict:
    try:
        trace = "".join(traceback.format_exception(exc))
    except BaseException:  # noqa: BLE001
        trace = ""
    kind = type(exc).__name__
    message = _text(exc)
    if isinstance(exc, SystemExit):
        message = f"the plugin called sys.exit({message})"
    return {"type": kind, "message": message, "traceback": trace}


def plain(value: Any) -> Any:
    """The JSON-able form of a result; anything else is refused (never pickled)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if type(value).__module__ in ("numpy", "torch") and hasattr(value, "shape"):
        return value
    raise TypeError(f"a {type(value).__name__} cannot leave the sandbox: results are plain data or tensors")


# Starting a process is what seccomp denies; Python's audit events let the worker say so by name
# instead of leaving the plugin with a bare -1 from os.system.
PROCESS_EVENTS = ("os.system", "subprocess.Popen", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn")
_denied: list[str] = []


def report_denied_actions(layers: list[dict]) -> None:
    if not any(layer["name"] == "seccomp" and layer["active"] for layer in layers):
        return  # nothing is denied then: the other layers confine what such a process could do

    import ctypes.util

    probe = ctypes.util.__file__

    def hook(event: str, args: tuple) -> None:
        if event in PROCESS_EVENTS and not _called_from(probe):
            first = args[0] if args else ""
            what = (first.decode(errors="replace") if isinstance(first, bytes) else _text(first))[:200]
            _denied.append(f"{event}({what}) was denied: a sandboxed plugin cannot start processes")

    sys.addaudithook(hook)


def _called_from(filename: str) -> bool:
    """ctypes.util.find_library runs ldconfig, gcc and ld to look for a library, and returns None when it
    cannot, as on a machine without them; libraries call it as they are imported (transformers, through
    trio), so such a denial is not the plugin's doing and is not reported (it is still denied)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == filename:
            return True
        frame = frame.f_back
    return False


def take_denied() -> list[str]:
    denied = list(_denied)
    _denied.clear()
    return denied


def confine_self(init: dict) -> list[dict]:
    limits = init["limits"]
    confine.seccomp_available()  # load libseccomp while the filesystem is still visible
    layers = [confine.apply_rlimits(limits["cpu_seconds"], None if limits["gpu"] else limits["memory_mb"],
                                    limits["open_files"], limits["file_size_mb"])]
    layers.append(confine.apply_namespaces(limits["network"]))  # needs CAP_SYS_ADMIN or a user namespace
    layers.append(confine.apply_no_new_privs())
    layers.append(confine.apply_drop_capabilities())
    layers.append(confine.apply_landlock(init["read_paths"], init["write_paths"]))
    layers.append(confine.apply_seccomp(limits["network"]))
    return [layer.as_dict() for layer in layers]


# -- component mode --------------------------------------------------------------------------------
class TrainerView:
    """The ``TrainerState`` a sandboxed callback sees: read-only numbers, no model, optimizer or data
    (they live in the training process), and two decisions it may take."""

    DECISIONS = ("should_stop", "skip_next_step")
    IN_PROCESS_ONLY = ("model", "optimizer", "data")

    def __init__(self, state: dict) -> None:
        state = dict(state)
        if "run_dir" in state:
            state["run_dir"] = Path(state["run_dir"])
        state.update(dict.fromkeys(self.IN_PROCESS_ONLY))
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "decisions", {})
        object.__setattr__(self, "reports", [])

    def __getattr__(self, name: str) -> Any:
        if name in self.decisions:
            return self.decisions[name]
        try:
            return self._state[name]
        except KeyError:
            raise AttributeError(f"a sandboxed callback sees only {sorted(self._state)} of the trainer") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.DECISIONS:
            raise AttributeError(f"a sandboxed callback may set only {self.DECISIONS}, not {name!r}")
        self.decisions[name] = bool(value)

    def log(self, message: str) -> None:
        print(message, flush=True)

    def report_error(self, error: dict) -> None:
        self.reports.append(plain(dict(error)))


def load_component(init: dict) -> Any:
    """Register the plugin as the kernel's process does (``Kernel.add_plugin``: its hooks checked, each name it
    registers checked against its manifest), then build the one component this worker serves."""
    from apt_kernel.context import BuildContext
    from apt_kernel.discovery import PluginInfo
    from apt_kernel.kernel import Kernel
    from apt_kernel.manifest import parse_manifest

    plugin = init["plugin"]
    info = PluginInfo(plugin["name"], plugin["module"], plugin["version"], plugin.get("distribution"),
                      path=plugin.get("path"), manifest=parse_manifest(plugin["manifest"], plugin["name"]))
    kernel = Kernel(autoload=False, strict=True, env={}, remember=False)  # a refused plugin raises, as a pipeline's
    kernel.plugins[info.name] = info
    kernel.load([info.name])
    factory = kernel.registration(init["kind"], init["name"], info.name).factory
    fields = dict(init["context"], run_dir=Path(init["context"]["run_dir"]))  # a factory gets what it gets in-process
    context = BuildContext(**fields, log=lambda message: print(message, flush=True), progress=False)
    return factory(dict(init["options"]), context)


def overridden_events(component: Any) -> list[str]:
    from apt_kernel.callbacks import implemented_events

    return sorted(implemented_events(component))


def serve_component(sock: socket.socket, component: Any) -> None:
    while True:
        message = protocol.recv(sock, tensors="numpy")
        if message.get("op") == "close":
            return
        view = TrainerView(message.get("trainer") or {})
        try:
            method = getattr(component, message["method"])
            args = message.get("args", [])
            result = method(view, *args) if message.get("trainer") is not None else method(*args)
            reply = {"ok": True, "result": plain(result), "decisions": view.decisions}
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: it is the plugin's error, not ours
            reply = {"ok": False, "error": describe(exc), "decisions": view.decisions}
        reply["reports"] = view.reports + [{"type": "SandboxDenied", "severity": "warning", "message": message}
                                           for message in take_denied()]
        protocol.send(sock, reply)


# -- exec mode -------------------------------------------------------------------------------------
SANDBOXED = "__sandbox__"  # the __name__ of the code's namespace


def guard_imports(allowed: list[str] | None) -> None:
    """What the code itself may import. An allowed library's own imports are its business (numpy
    imports os): the list is a convenience, not the boundary, and the OS layers hold either way."""
    if allowed is None:
        return
    allowed_roots = set(allowed)
    original = builtins.__import__

    def checked_import(name, globals=None, locals=None, fromlist=(), level=0):
        root = name.split(".")[0]
        by_code = globals is not None and globals.get("__name__") == SANDBOXED
        if by_code and level == 0 and root not in allowed_roots and root not in sys.builtin_module_names:
            raise ImportError(f"import of {name!r} is not allowed in this sandbox (allowed: {sorted(allowed_roots)})")
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = checked_import


@functools.lru_cache(maxsize=64)
def _compiled(code: str):
    return compile(code, "<sandboxed code>", "exec")


class _Capped(io.StringIO):
    def write(self, text: str) -> int:
        room = OUTPUT_CAP - self.tell()
        if room > 0:
            super().write(text[:room])
        return len(text)


def serve_exec(sock: socket.socket, allowed_imports: list[str] | None) -> None:
    guard_imports(allowed_imports)
    while True:
        message = protocol.recv(sock, tensors="numpy")
        if message.get("op") == "close":
            return
        namespace = {**(message.get("globals") or {}), "__name__": SANDBOXED}
        out, err = _Capped(), _Capped()
        sys.stdout, sys.stderr = out, err
        try:
            exec(_compiled(message["code"]), namespace)  # noqa: S102 - a confined process
            reply = {"success": True, "error": None}
            result = namespace.get("result")
            reply["result"] = plain(result) if result is not None else None
        except BaseException as exc:  # noqa: BLE001
            error = describe(exc)
            reply = {"success": False, "error": f"{error['type']}: {error['message']}", "traceback": error["traceback"]}
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            namespace.clear()  # what the code allocated is freed before the reply, not at the next call
        reply.update(stdout=out.getvalue(), stderr=err.getvalue(), denied=take_denied())
        try:
            protocol.send(sock, reply)
        except TypeError as exc:
            protocol.send(sock, {"success": False, "error": f"TypeError: {exc}", "stdout": reply["stdout"],
                                 "stderr": reply["stderr"]})


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    init = protocol.recv(sock, tensors="numpy")
    layers = confine_self(init)
    missing = [layer["name"] for layer in layers if not layer["active"] and layer["name"] in init["require"]]
    if missing:
        protocol.send(sock, {"ready": False, "layers": layers, "missing": missing})
        return
    report_denied_actions(layers)
    if init["mode"] == "exec":
        protocol.send(sock, {"ready": True, "layers": layers})
        serve_exec(sock, init.get("allowed_imports"))
        return
    try:
        component = load_component(init)
        events = overridden_events(component)
    except BaseException as exc:  # noqa: BLE001
        protocol.send(sock, {"ready": False, "layers": layers, "error": describe(exc)})
        return
    state_key = getattr(component, "state_key", None)  # its checkpoint key, as it would have in-process
    protocol.send(sock, {"ready": True, "layers": layers, "events": events,
                         "state_key": state_key if isinstance(state_key, str) else None})
    serve_component(sock, component)


if __name__ == "__main__":
    main()
