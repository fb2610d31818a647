"""The engine's side of ``EngineProcess``: the forked process's main (``engine_main``), and ``Channel``, the
messages through a pipe that both sides use.

The engine's process runs the ``Engine``'s steps in its main thread: before each step (and between
admissions) it takes the server's commands that have arrived (a request, a cancel, ``close``), and with
nothing to do it waits for one; after each step, one message goes back with the events of all its requests,
the queue's depth, the running batch, the per-token figures, and the fingerprint and context of the model
(``--watch``'s watcher runs here, in a thread, and switches it). A thread reads the pipe (``Inbox``), bytes
only: when it unpickled each request too, it took the GIL from the decode loop for every request that
arrived, just when many arrive at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import pickle
import signal
import struct
import sys
import threading
from pathlib import Path

import torch

from .engine import Engine
from .metrics import Figures
from .models import Served
from .request import Closed, Event, Request


class Channel:
    """Messages through one end of a pipe, each a 4-byte length and a pickle: ``send`` and ``receive`` block;
    ``ready`` (its end non-blocking) returns the messages that have arrived whole, reading all there is at
    once (a decode step's message to the server is one read, and more when the server falls behind)."""

    header = struct.Struct("!I")

    def __init__(self, fd: int) -> None:
        self.fd, self._buffer = fd, bytearray()
        self.ended = False  # the other end has closed (``ready`` read all that was left)

    def send(self, message: tuple) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        view = memoryview(self.header.pack(len(data)) + data)
        while view:
            view = view[os.write(self.fd, view):]

    def receive(self) -> tuple:
        size = self.header.unpack(self._read(self.header.size))[0]
        return pickle.loads(self._read(size))

    def ready(self) -> list[tuple]:
        try:
            while chunk := os.read(self.fd, 1 << 20):
                self._buffer += chunk
            self.ended = True
        except BlockingIOError:
            pass
        return self.feed(b"")

    def feed(self, data: bytes) -> list[tuple]:
        """The messages completed by ``data`` (bytes read from the pipe elsewhere), in order."""
        self._buffer += data
        messages, buffer, start = [], self._buffer, 0
        while len(buffer) - start >= 4:
            end = start + 4 + self.header.unpack_from(buffer, start)[0]
            if len(buffer) < end:
                break
            messages.append(pickle.loads(buffer[start + 4:end]))
            start = end
        del buffer[:start]
        return messages

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = os.read(self.fd, size - len(data))
            if not chunk:
                raise EOFError("the pipe has ended")
            data += chunk
        return data


def engine_main(served: Served, commands: Channel, events: Channel, server_ends: tuple, max_batch: int,
                 threads: int, watch: Path | None, watch_interval: float) -> None:
    """The engine's process."""
    for fd in server_ends:
        os.close(fd)
    # Ctrl-C reaches the terminal's whole process group: the server drains the running requests, then closes
    # this process; on its own it would end them at once
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _keep_freed_memory()
    EngineSide(served, commands, events, max_batch).run(watch, watch_interval)


def _keep_freed_memory(threshold: int = 32 << 20, keep: int = 256 << 20) -> None:
    """Ask glibc's malloc to serve blocks up to ``threshold`` bytes from its heap and to keep up to ``keep``
    bytes freed at its top. By default a block over 128 KiB (a row of the KV cache grown by one step, the
    step's activations) is mapped fresh and unmapped when freed, so every decode step page-faulted its
    memory in again: about 100 faults a step at 32 requests, 5% of its time (``bench/bench_serve.py``).
    The price: up to ``keep`` bytes freed stay the process's, and the weights of a model ``--watch`` loads
    come from the heap too. Elsewhere than glibc, nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library
    except (OSError, AttributeError):
        return
    mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    mallopt(-1, keep)  # M_TRIM_THRESHOLD


class Inbox:
    """The server's commands, read off the pipe by a thread as they arrive and handed to the engine's loop,
    which parses them between its steps (``take``). The thread only reads bytes, so it takes the GIL for a
    moment per command; and the pipe never fills while the loop is in a step: a command may be megabytes (an
    image's pixels, ``n`` times), and a server left waiting to write one would stop reading the engine's
    messages, whose pipe would then fill and leave both processes waiting on each other."""

    def __init__(self, channel: Channel) -> None:
        self.channel, self.arrived = channel, threading.Event()
        self.ended = False  # the server has closed its end
        self._lock, self._chunks = threading.Lock(), []
        threading.Thread(target=self._drain, name="apt-serve-commands", daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.channel.fd, 1 << 20)
            except OSError:
                chunk = b""
            with self._lock:
                if chunk:
                    self._chunks.append(chunk)
                else:
                    self.ended = True
            self.arrived.set()
            if not chunk:
                return

    def take(self) -> list[tuple]:
        """The commands that have arrived whole since the last call."""
        self.arrived.clear()  # before taking: what arrives after this wakes the next ``wait``
        with self._lock:
            chunks, self._chunks = self._chunks, []
        return self.channel.feed(b"".join(chunks))

    def wait(self, timeout: float | None) -> None:
        self.arrived.wait(timeout)


class EngineSide:
    """The engine's process: the commands taken before each step, the step, and one message with its events
    (``flush``)."""

    def __init__(self, served: Served, commands: Channel, events: Channel, max_batch: int) -> None:
        self.commands, self.events = commands, events
        self.figures = Figures()
        # the server keeps the queue's limit: it answers 429 before sending anything here
        self.engine = Engine(served, max_batch=max_batch, max_queue=sys.maxsize, metrics=self.figures,
                             on_step=self.flush, poll=self.read)
        self.requests: dict[int, Request] = {}
        self.outbox: list[tuple[int, Event]] = []
        self.said: tuple | None = None
        self.open = True  # until the server says ``close`` or goes

    def run(self, watch: Path | None, watch_interval: float) -> None:
        from .watch import Watcher

        watcher = Watcher(self.engine, watch, watch_interval).start() if watch is not None else None
        self.inbox = Inbox(self.commands)
        try:
            while True:
                self.read()
                if not self.open or self.engine.closed:
                    break
                if self.engine.has_work:
                    self.engine.turn()
                else:  # a new export is switched to by the next step, or after a poll of the watcher's
                    self.inbox.wait(watch_interval if watcher is not None else None)
        finally:
            self.engine.finish()
            if watcher is not None:
                watcher.close()

    def read(self) -> None:
        """Hand the commands that have arrived to the engine; ``open`` turns False once the server said
        ``close`` or has gone."""
        for message in self.inbox.take():
            if message[0] == "submit":
                _, key, prompt, max_tokens, sampling, stop, ignore_eos, media, arrived = message
                request = Request(prompt, max_tokens, functools.partial(self.post, key), sampling, stop, ignore_eos,
                                  media)
                request.arrived = arrived  # the server's: one monotonic clock for both processes
                self.requests[key] = request
                with contextlib.suppress(Closed):
                    self.engine.submit(request)
            elif message[0] == "cancel":
                request = self.requests.pop(message[1], None)
                if request is not None:
                    request.cancel()
            else:  # close
                self.open = False
        if self.inbox.ended and not self.inbox.arrived.is_set():  # and all it sent has been read
            self.open = False

    def post(self, key: int, event: Event) -> None:
        self.outbox.append((key, event))

    def flush(self) -> None:  # after each step
        engine, served = self.engine, self.engine.served
        said = (engine.waiting, engine.running, served.fingerprint)
        if not self.outbox and said == self.said:
            return
        outbox, self.outbox, self.said = self.outbox, [], said
        events = []
        for key, e in outbox:
            events.append((key, *e))
            if e.finish_reason is not None or e.error is not None:
                self.requests.pop(key, None)
        message = (events, engine.waiting, engine.running, self.figures, served.fingerprint, served.context)
        try:
            self.events.send(message)
        except OSError:  # the server has gone
            engine.close()
