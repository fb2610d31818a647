"""bench_serve.py's servers: each a process group started in the bench's session, waited for until its health
check answers, stopped as one; and the CPU time a server's process has used."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



class Server:
    def __init__(self, command: list[str], port: int, health: str, env: dict | None = None) -> None:
        self.port, self.health = port, health
        # a process group of its own (stopped as one, the engine's process with it), in this session: Linux
        # schedules the processes of a session as one group (autogroup), and on a shared machine a session of
        # its own would give a server a share of the cores beside this one's (clients, direct calls)
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        process_group=0, env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.process.pid

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}{self.health}", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start within 300 s")

    def __exit__(self, *exc) -> None:
        if self.process.poll() is not None:
            print(f"  (a server had exited: {self.process.stderr.read()[-1500:]})", flush=True)
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
