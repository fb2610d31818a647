"""The engine in a process of its own, so that decoding and the HTTP side never wait for each other's GIL.

``EngineProcess`` is the engine as the server's routes see it: ``submit``, ``running``, ``waiting``,
``served``, ``close``. ``start`` forks a process that runs an ``Engine`` over the same model; forked once the
model is loaded, it shares the weights' memory pages with the server rather than loading them again. The
server keeps the tokenizer and the image and audio preprocessors, which run on its side.

- To the engine, one pipe: a request (its tokens, limits, sampling, stop strings and preprocessed media), a
  cancel when its client went away, and ``close``. The engine's loop reads them between its steps (and
  between admissions); ``--watch``'s watcher runs in that process too.
- From the engine, another pipe: after each decode step, one message with the events of all its requests,
  the queue's depth, the running batch, the per-token figures, and the fingerprint and context of the model
  (which ``--watch`` may have switched). The server's event loop reads it when the pipe is readable (no
  thread) and hands each event to its request.

Why: with the engine a thread of the server, each of the hundreds of torch operations of a decode step
released the GIL and then waited to win it back from the event loop writing 32 streams, and the server
decoded at half the rate of the same requests decoded directly (``bench/bench_serve.py``, 2 cores).

After a ``--watch`` switch, the server's tokenizer stays (the new model must have the same one) and so do
its preprocessors: a new export of the same run reads images and clips alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import select
import time
from pathlib import Path

from .metrics import Metrics
from .models import Served
from .request import Closed, Event, QueueFull, Request
from .worker import Channel, engine_main

log = logging.getLogger("apt_plugin_serve")


class EngineProcess:
    """An ``Engine`` in a forked process (see the module's docstring).

    :param served: the model, loaded (``apt_plugin_serve.models.load``); the engine's process shares it.
    :param max_batch: requests decoded together at most; the others wait for a slot.
    :param max_queue: requests that may wait for a slot; ``submit`` refuses more with ``QueueFull``.
    :param threads: torch's threads in the engine's process.
    :param watch: a model folder to watch for new exports (``--watch``), or None.
    """

    def __init__(self, served: Served, max_batch: int = 32, max_queue: int = 256, threads: int = 1,
                 watch: Path | None = None, watch_interval: float = 0.5) -> None:
        if max_batch < 1 or max_queue < 0 or threads < 1:
            raise ValueError(f"max_batch and threads must be >= 1 and max_queue >= 0, got {max_batch}, {threads} "
                             f"and {max_queue}")
        self.served, self.max_batch, self.max_queue, self.threads = served, max_batch, max_queue, threads
        self.watch, self.watch_interval = watch, watch_interval
        self.metrics: Metrics | None = None
        self.running = self.waiting = 0  # as the engine last said
        self._open: dict[int, Request] = {}  # submitted, not ended, not cancelled
        self._keys = itertools.count()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: str | None = None  # why it takes no more requests

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive() and not self._closed

    def start(self) -> EngineProcess:
        """Fork the engine's process. Before the event loop and any thread start: a fork copies only the
        thread that calls it."""
        commands_in, commands_out = os.pipe()
        events_in, events_out = os.pipe()
        self._process = multiprocessing.get_context("fork").Process(
            target=engine_main, name="apt-serve-engine", daemon=True, args=(
                self.served, Channel(commands_in), Channel(events_out), (commands_out, events_in), self.max_batch,
                self.threads, self.watch, self.watch_interval))
        self._process.start()
        os.close(commands_in)  # the engine's ends: when its process ends, reading here meets the pipe's end
        os.close(events_out)
        self._commands, self._events = Channel(commands_out), Channel(events_in)
        return self

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Deliver the engine's events in ``loop`` (the running one) from now on."""
        if not self.started:
            self.start()
        self._loop = loop or asyncio.get_running_loop()
        os.set_blocking(self._events.fd, False)
        self._loop.add_reader(self._events.fd, self._receive)

    def submit(self, request: Request) -> None:
        """Send ``request`` to the engine. :raises QueueFull: over ``max_queue`` would wait.
        :raises Closed: the engine is shutting down, or its process has ended."""
        if self._closed:
            raise Closed(self._closed)
        waiting = len(self._open) - self.max_batch
        if waiting >= self.max_queue:
            raise QueueFull(waiting)
        key = next(self._keys)
        self._open[key] = request
        request.on_cancel = functools.partial(self._cancel, key)
        self._send(("submit", key, request.prompt, request.max_tokens, request.sampling, request.stop,
                    request.ignore_eos, request.media, request.arrived))

    def close(self, timeout: float | None = None) -> None:
        """End the engine's process; requests still open end with an error event."""
        if self._process is None or self._closed and not self._process.is_alive():
            return
        self._closed = "the server is shutting down"
        with contextlib.suppress(OSError):
            self._send(("close",))
        deadline = time.monotonic() + (timeout if timeout is not None else 30)
        os.set_blocking(self._events.fd, True)
        with contextlib.suppress(EOFError, OSError):  # its last messages, so that it is not stuck writing them
            while self._process.is_alive() and time.monotonic() < deadline:
                if select.select([self._events.fd], [], [], 0.05)[0]:
                    self._handle(self._events.receive())
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(5)
        self._detach()
        self._fail_open("the server is shutting down")

    def _send(self, message: tuple) -> None:
        try:
            self._commands.send(message)
        except OSError:  # its process has ended
            if message[0] == "submit":
                self._open.pop(message[1], None)
                self._lost()
                raise Closed(self._closed or "the engine's process has ended") from None
            raise

    def _cancel(self, key: int) -> None:
        if self._open.pop(key, None) is not None and not self._closed:
            with contextlib.suppress(OSError):
                self._send(("cancel", key))

    def _receive(self) -> None:  # the event loop, when the engine's pipe is readable
        try:
            for message in self._events.ready():
                self._handle(message)
        except OSError:
            self._lost()
        if self._events.ended:
            self._lost()

    def _handle(self, message: tuple) -> None:
        events, self.waiting, self.running, figures, fingerprint, context = message
        served = self.served
        if fingerprint != served.fingerprint:  # --watch switched models
            served.fingerprint, served.context = fingerprint, context
        if self.metrics is not None:
            self.metrics.figures = figures
        done = self._open.pop
        for key, text, count, written_by, reason, error in events:
            request = self._open.get(key) if reason is None and error is None else done(key, None)
            if request is not None:
                request.on_event(Event(text, count, written_by, reason, error))

    def _lost(self) -> None:
        """The engine's process ended without being asked to."""
        if self._closed:
            return
        self._detach()
        self._process.join(5)
        self._closed = f"the engine's process ended (exit code {self._process.exitcode})"
        log.error("%s: the server answers no more requests", self._closed)
        self._fail_open(self._closed)

    def _detach(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._events.fd)
        self._loop = None

    def _fail_open(self, message: str) -> None:
        open_, self._open = self._open, {}
        for request in open_.values():
            request.on_event(Event("", 0, self.served.fingerprint, error=message))
