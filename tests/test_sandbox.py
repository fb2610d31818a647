"""The attack suite (docs/sandbox.md has the table): each attack runs in a sandbox worker with every
import allowed, and must be contained while this (host) process goes on. Linux only."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from apt_kernel.sandbox import PluginSandbox
from conftest import REPO

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's layers are Linux's")


@pytest.fixture(scope="module")
def sandbox():
    with PluginSandbox(resource_limits={"wall_seconds_per_call": 5}) as box:
        yield box


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "escaped"
    yield path
    assert not path.exists(), "the attack left a file behind"


def run(box: PluginSandbox, code: str, **globals_):
    return box.execute_plugin(code, globals_)


def test_every_layer_is_active_on_this_machine(sandbox):
    assert run(sandbox, "result = 6 * 7")["result"] == 42
    layers = {layer["name"]: layer for layer in sandbox.layers}
    assert sorted(layers) == ["capabilities", "landlock", "namespaces", "no_new_privs", "rlimits", "seccomp"]
    inactive = [layer for layer in layers.values() if not layer["active"]]
    assert not inactive, inactive


def test_os_system(sandbox, marker):
    reply = run(sandbox, "import os\nresult = os.system('touch ' + target)", target=str(marker))
    assert reply["success"] and reply["result"] != 0  # the shell could not even be started
    assert reply["denied"] == [f"os.system(touch {marker}) was denied: a sandboxed plugin cannot start processes"]


def test_a_library_looking_for_a_shared_library_is_not_reported(sandbox, marker):
    # `import transformers` in a sandboxed plugin warned twice on every run ("subprocess.Popen(/usr/bin/gcc)
    # was denied", "...(ld)"): trio, which it imports, calls ctypes.util.find_library, which tries processes
    code = ("import ctypes.util, os\nfound = ctypes.util.find_library('pthread')\n"
            "result = [found is None or isinstance(found, str), os.system('touch ' + target) != 0]")
    reply = run(sandbox, code, target=str(marker))
    assert reply["success"] and reply["result"] == [True, True], reply
    assert reply["denied"] == [f"os.system(touch {marker}) was denied: a sandboxed plugin cannot start processes"]


def test_subprocess(sandbox, marker):
    reply = run(sandbox, "import subprocess\nsubprocess.run(['touch', target])", target=str(marker))
    assert not reply["success"] and "PermissionError" in reply["error"]


def test_fork_and_exec(sandbox, marker):
    code = "import os\npid = os.fork()\nif pid == 0:\n    os.execv('/usr/bin/touch', ['touch', target])"
    reply = run(sandbox, code, target=str(marker))
    assert not reply["success"] and "Operation not permitted" in reply["error"]
    reply = run(sandbox, "import os\nos.execv('/usr/bin/touch', ['touch', target])", target=str(marker))
    assert not reply["success"] and "PermissionError" in reply["error"]


def test_socket_connect_to_a_local_server(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)  # a connection made during the call is queued before its reply: no waiting
    code = "import socket\ns = socket.create_connection(('127.0.0.1', port), timeout=2)\ns.sendall(b'secret')"
    with server:
        reply = run(sandbox, code, port=server.getsockname()[1])
        try:
            accepted = server.accept()
        except BlockingIOError:
            accepted = None
    assert not reply["success"] and "Permission denied" in reply["error"]
    assert accepted is None


@pytest.mark.parametrize("where", ["repo", "home"])
def test_writing_outside_allow_paths(sandbox, where):
    target = (REPO if where == "repo" else Path.home()) / f"apt-sandbox-escape-{os.getpid()}"
    reply = run(sandbox, "open(target, 'w').write('x')", target=str(target))
    exists = target.exists()
    target.unlink(missing_ok=True)
    assert not exists and not reply["success"] and "PermissionError" in reply["error"]


def test_allow_paths_are_writable(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with PluginSandbox(resource_limits={"allow_paths": [str(allowed)]}) as box:
        reply = run(box, "open(target, 'w').write('ok')\nresult = open(target).read()", target=str(allowed / "f"))
    assert reply["result"] == "ok" and (allowed / "f").read_text() == "ok"


def test_reading_a_secret_file(sandbox, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    reply = run(sandbox, "result = open(path).read()", path=str(secret))
    assert not reply["success"] and "hunter2" not in str(reply)
    assert reply["error"].startswith("PermissionError: [Errno 13] Permission denied")  # denied, not any error


def test_reading_an_environment_secret(monkeypatch):
    monkeypatch.setenv("APT_TEST_API_TOKEN", "hunter2")
    with PluginSandbox() as box:  # started after the secret is set
        reply = run(box, "import os\nresult = dict(os.environ)")
        proc = run(box, "import os\nresult = open(f'/proc/{os.getppid()}/environ').read()")
    assert reply["success"] and "APT_TEST_API_TOKEN" not in reply["result"]
    assert not proc["success"] and "hunter2" not in str(proc)


def test_ctypes_libc_system(sandbox, marker):
    code = "import ctypes\nresult = ctypes.CDLL(None).system(('touch ' + target).encode())"
    reply = run(sandbox, code, target=str(marker))
    assert reply["success"] and reply["result"] != 0


def test_fork_bomb(sandbox):
    reply = run(sandbox, "import os\nwhile True:\n    os.fork()")
    assert not reply["success"] and "Operation not permitted" in reply["error"]


def test_memory_bomb_under_max_memory_mb():
    with PluginSandbox(resource_limits={"max_memory_mb": 100}) as box:
        whole = run(box, "x = bytearray(500 * 1024 * 1024)")
        gradual = run(box, "chunks = []\nwhile True:\n    chunks.append(bytearray(1024 * 1024))")
        after = run(box, "result = 'still here'")
    assert not whole["success"] and "MemoryError" in whole["error"]
    assert not gradual["success"] and ("MemoryError" in gradual["error"] or "memory" in gradual["error"])
    assert after["result"] == "still here"


def test_infinite_loop_is_killed_at_the_wall_time_and_the_worker_restarts():
    with PluginSandbox(resource_limits={"wall_seconds_per_call": 1}) as box:
        started = time.monotonic()
        reply = run(box, "while True:\n    pass")
        elapsed = time.monotonic() - started
        again = run(box, "result = 1")
    assert not reply["success"] and "wall time of 1 s" in reply["error"] and elapsed < 5
    assert again["result"] == 1 and box.worker.restarts == 1


def test_cpu_spin_past_the_cpu_limit():
    with PluginSandbox(resource_limits={"max_cpu_time_sec": 1, "wall_seconds_per_call": 30}) as box:
        reply = run(box, "import threading\ndef spin():\n    while True:\n        pass\n"
                         "for _ in range(2):\n    threading.Thread(target=spin, daemon=True).start()\nspin()")
    assert not reply["success"] and "ran out of CPU time" in reply["error"]


def test_a_gigabyte_to_stdout(sandbox):
    printed = run(sandbox, "chunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    print(chunk)")
    assert printed["success"] and len(printed["stdout"]) <= 1 << 20  # captured output is capped
    raw = run(sandbox, "import os\nchunk = b'x' * (1 << 20)\nfor _ in range(1024):\n    os.write(1, chunk)")
    assert not raw["success"] and "more than 16 MiB of output" in raw["error"]


def test_ignoring_sigterm():
    with PluginSandbox(resource_limits={"wall_seconds_per_call": 1}) as box:
        assert run(box, "result = 1")["result"] == 1
        pid = box.worker.proc.pid  # the worker that will ignore SIGTERM
        reply = run(box, "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass")
        gone = not Path(f"/proc/{pid}").exists()  # before close(): the watchdog's SIGKILL did it
    assert not reply["success"] and "wall time" in reply["error"]
    assert gone


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` (the worker is its leader: start_new_session)."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else ()
        except OSError:
            continue  # gone meanwhile
        if fields and int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
            members.append(int(entry.name))
    return members


def test_a_grandchild_cannot_outlive_the_worker(marker):
    # the child would wait on a pipe the worker holds: it would write once the worker is gone
    code = ("import os\nr, w = os.pipe()\npid = os.fork()\nif pid == 0:\n    os.read(r, 1)\n"
            "    open(target, 'w').write('outlived')\n    os._exit(0)")
    with PluginSandbox() as box:
        reply = run(box, code, target=str(marker))
        worker = box.worker.proc.pid
        during = _session(worker)
    assert not reply["success"] and "Operation not permitted" in reply["error"]
    assert during == [worker]  # no child was made
    assert _session(worker) == []  # and nothing of its session is left once it is closed


def test_kill_the_host(sandbox):
    reply = run(sandbox, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert not reply["success"] and "Operation not permitted" in reply["error"]
    reply = run(sandbox, "import os\nresult = open(f'/proc/{os.getppid()}/mem', 'rb').read(1)")
    assert not reply["success"] and reply["error"].startswith("PermissionError: [Errno 13] Permission denied")


def test_a_malicious_pickle_or_unpicklable_result(sandbox, marker):
    code = ("import os\nclass Evil:\n    def __reduce__(self):\n        return (os.system, ('touch ' + target,))\n"
            "result = Evil()")
    reply = run(sandbox, code, target=str(marker))
    assert not reply["success"] and "cannot leave the sandbox" in reply["error"]
    reply = run(sandbox, "result = lambda: 1")
    assert not reply["success"] and "cannot leave the sandbox" in reply["error"]


def test_an_exception_whose_str_raises(sandbox):
    code = "class Nasty(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\nraise Nasty()"
    reply = run(sandbox, code)
    assert not reply["success"] and "Nasty" in reply["error"] and "unprintable" in reply["error"]


def test_the_subclass_walk_reaches_os_and_still_cannot_escape(marker):
    code = ("wrap = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]\n"
            "system = wrap.__init__.__globals__['system']\n"
            "result = system('touch ' + target)")
    with PluginSandbox(allowed_imports=[]) as box:  # no import allowed at all: the walk needs none
        reply = run(box, code, target=str(marker))
        blocked = run(box, "import os")
    assert reply["success"] and reply["result"] != 0
    assert not blocked["success"] and "not allowed" in blocked["error"]


def test_sys_exit_and_os_exit(sandbox):
    reply = run(sandbox, "import sys\nsys.exit(3)")
    assert not reply["success"] and "called sys.exit(3)" in reply["error"] and not reply["crashed"]
    reply = run(sandbox, "import os\nos._exit(4)")
    assert not reply["success"] and "exited with code 4" in reply["error"] and reply["crashed"]
    assert run(sandbox, "result = 'restarted'")["result"] == "restarted"


def test_a_segfault(sandbox):
    reply = run(sandbox, "import ctypes\nctypes.string_at(0)")
    assert not reply["success"] and "SIGSEGV" in reply["error"]
    assert run(sandbox, "result = 1")["result"] == 1


def test_an_allowed_library_may_import_what_it_needs():
    """numpy imports os, which is not in the list: the list is about the code's own imports."""
    with PluginSandbox(allowed_imports=["numpy"]) as box:
        reply = box.execute_plugin(plugin_code="import numpy\nx = numpy.array([1, 2, 3])\nresult = int(x.sum())",
                                   globals_dict={})
        direct = run(box, "import os")
    assert reply["success"] and reply["result"] == 6, reply
    assert not direct["success"] and "import of 'os' is not allowed" in direct["error"]


def test_an_import_outside_allowed_imports_is_not_allowed():
    with PluginSandbox(allowed_imports=["math"]) as box:
        assert run(box, "import math\nresult = math.floor(2.5)")["result"] == 2
        reply = run(box, "import os")
    assert not reply["success"] and "not allowed" in reply["error"]


def test_tensors_cross_by_shared_memory(sandbox):
    import torch

    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    reply = run(sandbox, "result = {'sum': float(x.sum()), 'writeable': bool(x.flags.writeable), 'back': x * 2}",
                x=tensor)
    assert reply["result"]["sum"] == 66.0 and reply["result"]["writeable"] is False
    assert torch.equal(reply["result"]["back"], tensor * 2)


def test_the_host_refuses_a_tensor_buffer_the_worker_could_still_change():
    """A worker that kept write access to a buffer could change a host tensor after the call: the host
    maps only sealed buffers."""
    import numpy as np

    from apt_kernel.sandbox import protocol

    host, worker = socket.socketpair()
    pool = protocol.BufferPool()  # unsealed, as the host sends to workers
    try:
        protocol.send(worker, {"x": np.arange(4, dtype=np.float32)}, pool)
        with pytest.raises(protocol.ProtocolError, match="not sealed"):
            protocol.recv(host, tensors="torch")
        protocol.send(worker, {"x": np.arange(4, dtype=np.float32)})  # sealed: accepted, and immutable
        received = protocol.recv(host, tensors="torch")["x"]
        assert received.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        pool.close()
        host.close()
        worker.close()

