"""The engine's side of ``EngineProcess``: the forked process's main (``engine_main``), and ``Channel``, the
messages through a pipe that both sides use.

In the engine's process a thread reads the server's commands (a request, a cancel, ``close``) into the
``Engine``, whose loop runs in the main thread; after each step, one message goes back with the events of all
its requests, the queue's depth, the running batch, the per-token figures, and the fingerprint and context
of the model (``--watch``'s watcher runs here, and switches it).
"""

from __future__ import annotations

import contextlib
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
    EngineSide(served, commands, events, max_batch).run(watch, watch_interval)


class EngineSide:
    """The engine's process: the commands read in a thread, the engine's loop in the main thread, and after
    each step one message with its events (``flush``)."""

    def __init__(self, served: Served, commands: Channel, events: Channel, max_batch: int) -> None:
        self.commands, self.events = commands, events
        self.figures = Figures()
        # the server keeps the queue's limit: it answers 429 before sending anything here
        self.engine = Engine(served, max_batch=max_batch, max_queue=sys.maxsize, metrics=self.figures,
                             on_step=self.flush)
        self.requests: dict[int, Request] = {}
        self.outbox: list[tuple[int, Event]] = []
        self.said: tuple | None = None

    def run(self, watch: Path | None, watch_interval: float) -> None:
        from .watch import Watcher

        threading.Thread(target=self.read, name="apt-serve-commands", daemon=True).start()
        watcher = Watcher(self.engine, watch, watch_interval).start() if watch is not None else None
        self.engine.run()
        if watcher is not None:
            watcher.close()

    def read(self) -> None:
        while True:
            try:
                message = self.commands.receive()
            except (EOFError, OSError):  # the server has gone
                self.engine.close()
                return
            if message[0] == "submit":
                _, key, prompt, max_tokens, sampling, stop, ignore_eos, media, arrived = message
                request = Request(prompt, max_tokens, functools.partial(self.post, key), sampling, stop, ignore_eos,
                                  media)
                request.arrived = arrived  # the server's: one monotonic clock for both processes
                self.requests[key] = request
                with contextlib.suppress(Closed):  # only once the server has stopped sending
                    self.engine.submit(request)
            elif message[0] == "cancel":
                request = self.requests.pop(message[1], None)
                if request is not None:
                    request.cancel()
            else:  # close
                self.engine.close()
                return

    def post(self, key: int, event: Event) -> None:  # the engine's thread
        self.outbox.append((key, event))

    def flush(self) -> None:  # the engine's thread, after each step
        engine, served = self.engine, self.engine.served
        said = (engine.waiting, engine.running, served.fingerprint)
        if not self.outbox and said == self.said:
            return
        outbox, self.outbox, self.said = self.outbox, [], said
        events = []
        for key, e in outbox:
            events.append((key, e.text, e.completion_tokens, e.fingerprint, e.finish_reason, e.error))
            if e.finish_reason is not None or e.error is not None:
                self.requests.pop(key, None)
        message = (events, engine.waiting, engine.running, self.figures, served.fingerprint, served.context)
        try:
            self.events.send(message)
        except OSError:  # the server has gone
            engine.close()
