"""The worker's network namespace, judged by what the worker can reach, not by what it asked for.
seccomp refuses every socket but AF_UNIX, so an inet connection says nothing about the namespace; an
abstract AF_UNIX socket of the host does: abstract names belong to a network namespace, and only a
worker that shares the host's can reach one. These tests skip, with the reason, on a machine that
cannot give a process a network namespace of its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from apt_kernel.sandbox import PluginSandbox
from conftest import cli

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's layers are Linux's")

# The kernel's flag values, written out rather than taken from confine.py: a wrong flag there must fail
# these tests, not skip them.
CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWUTS = 0x10000000, 0x40000000, 0x04000000
_CAN_UNSHARE = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare({CLONE_NEWNET}) != 0 and libc.unshare({CLONE_NEWUSER | CLONE_NEWNET}) != 0:
    raise SystemExit(os.strerror(ctypes.get_errno()))
"""


@pytest.fixture(scope="module", autouse=True)
def network_namespaces():
    tried = subprocess.run([sys.executable, "-I", "-c", _CAN_UNSHARE], capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"this machine cannot create a network namespace (unshare: {tried.stderr.strip()})")


@pytest.fixture(scope="module")
def sandbox():
    with PluginSandbox(resource_limits={"wall_seconds_per_call": 5}) as box:
        yield box


def _abstract_server(kind: int) -> tuple[socket.socket, str]:
    server = socket.socket(socket.AF_UNIX, kind)
    name = f"\0apt-sandbox-test-{os.getpid()}-{os.urandom(6).hex()}"
    server.bind(name)
    if kind == socket.SOCK_STREAM:
        server.listen(1)
    server.setblocking(False)  # what was sent before the call returned is queued already: no waiting
    return server, name


def _received(server: socket.socket, kind: int) -> bytes | None:
    try:
        if kind == socket.SOCK_DGRAM:
            return server.recv(64)
        connection, _ = server.accept()
    except BlockingIOError:
        return None
    with connection:
        connection.setblocking(True)
        return connection.recv(64)


_SEND = """
import socket
s = socket.socket(socket.AF_UNIX, kind)
if kind == socket.SOCK_DGRAM:
    s.sendto(data, name)
else:
    s.connect(name)
    s.sendall(data)
"""


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["stream", "datagram"])
def test_an_abstract_unix_socket_of_the_host_is_out_of_reach(sandbox, kind):
    server, name = _abstract_server(kind)
    with server:
        reply = sandbox.execute_plugin("data = b'secret'\n" + _SEND, {"kind": int(kind), "name": name})
        from_the_sandbox = _received(server, kind)
        # the control: the same code outside the sandbox does reach this server
        exec(_SEND, {"kind": kind, "name": name, "data": b"control"})  # noqa: S102
        from_here = _received(server, kind)
    assert not reply["success"] and "ConnectionRefusedError" in reply["error"], reply
    assert from_the_sandbox is None
    assert from_here == b"control"


def test_the_namespace_layer_says_what_the_worker_found_in_itself(sandbox):
    assert sandbox.execute_plugin("result = 1")["result"] == 1
    layer = next(layer for layer in sandbox.layers if layer["name"] == "namespaces")
    host = os.readlink("/proc/self/ns/net")  # this process started the worker
    assert layer["active"], layer
    assert f"not the host's {host}" in layer["detail"] and "interfaces lo, all down" in layer["detail"], layer


def test_a_namespace_the_worker_did_not_enter_is_reported_unavailable():
    # confine.py asking for the wrong namespace (UTS: unshare succeeds, the network stays the host's)
    code = ("import json\nfrom apt_kernel.sandbox import confine\n"
            f"confine.CLONE_NEWNET = {CLONE_NEWUTS}\nprint(json.dumps(confine.apply_namespaces(False).as_dict()))")
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    layer = json.loads(result.stdout)
    assert not layer["active"] and "still in the host's network namespace" in layer["detail"], layer


def test_doctor_sandbox_shows_what_the_worker_verified():
    result = cli("plugins", "doctor", "--sandbox")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split(maxsplit=2) for line in result.stdout.splitlines()[1:]}
    assert rows["namespaces"][1] == "active" and "verified" in rows["namespaces"][2], rows["namespaces"]
    assert rows["check"][1] == "active", rows["check"]
    assert "the host's abstract unix socket unreachable" in rows["check"][2], rows["check"]
