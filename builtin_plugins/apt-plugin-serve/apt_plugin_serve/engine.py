"""Continuous batching: requests join the running batch at the next decode step and leave it when they end.

The engine's process (``apt_plugin_serve.worker``) calls ``turn()`` in its loop; ``run()`` is the same loop
in a thread of its own (``start``), for a program that keeps the engine in its process. Each step

1. switches to a model that ``replace()`` handed in (``--watch``): every running request's tokens so far
   are read again by the new model, and it goes on from there;
2. drops the requests whose client went away (``Request.cancel``);
3. admits waiting requests into the free slots: their prompts (and images or clips) are read in one padded
   forward (``apt_plugin_serve.admission``), and their rows join the batch (``KVBatch.extend``); then, as
   often as more have arrived meanwhile, those too, before the batch decodes (prefill first, as vLLM's
   scheduler does: when 32 requests arrive over a few admissions, the decode steps between them would only
   delay the last ones);
4. picks each running request's next token from its own logits, with its own temperature, top-k, top-p and
   random generator (temperature 0: the most likely token, as ``generate(do_sample=False)``);
5. hands each its new text and retires those that ended: the end-of-text token, a stop string, their
   ``max_tokens``, the model's context (``KVBatch.keep``);
6. runs one forward of all remaining rows' new tokens (``KVBatch.step``) for the next logits.

Every row has its own positions and its own keys in the left-padded cache, and padding is masked, so a
request's tokens are those it gets alone. The engine knows nothing of HTTP: ``Request.on_event`` is called
from its thread with each ``Event``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from apt_plugin_lm.generation import KVBatch, choose

from .admission import Admission, prepare
from .models import Served
from .request import Closed, Event, QueueFull, Request, Sampling

__all__ = ["Closed", "Engine", "Event", "QueueFull", "Request", "Sampling"]

log = logging.getLogger("apt_plugin_serve")


class Engine:
    """Continuous batching over one served model (see the module's docstring).

    :param served: the model, as ``apt_plugin_serve.models.load`` returns it.
    :param max_batch: requests decoded together at most; the others wait for a slot.
    :param max_queue: requests that may wait for a slot; ``submit`` refuses more with ``QueueFull``.
    :param metrics: told of each token and of each step (``apt_plugin_serve.metrics.Figures``), or None.
    :param on_step: called after each step (``turn``), and once more when the engine ends (``finish``): the
        engine's process sends the events of a step together from there.
    :param poll: called after an admission to ``submit`` the requests that have arrived meanwhile, if they
        do not reach ``submit`` by themselves (the engine's process reads its pipe there).
    """

    def __init__(self, served: Served, max_batch: int = 32, max_queue: int = 256, metrics=None,
                 on_step: Callable[[], None] | None = None, poll: Callable[[], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.served, self.max_batch, self.max_queue, self.metrics = served, max_batch, max_queue, metrics
        self.on_step, self.poll = on_step, poll
        self._lock = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._rows: list[Request] = []  # the batch's rows, in order
        self._busy = 0  # admitted and not yet retired
        self._batch: KVBatch | None = None
        self._logits: torch.Tensor | None = None
        self._pending: Served | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._busy

    @property
    def started(self) -> bool:
        return self._thread is not None

    def submit(self, request: Request) -> None:
        """Queue ``request`` for the next step. :raises QueueFull: over ``max_queue`` would wait.
        :raises Closed: the engine is shutting down."""
        with self._lock:
            if self._closed:
                raise Closed("the server is shutting down")
            free = self.max_batch - self._busy
            if len(self._waiting) - free >= self.max_queue:
                raise QueueFull(len(self._waiting))
            self._waiting.append(request)
            self._lock.notify()

    def replace(self, served: Served) -> None:
        """Serve ``served`` from the next step on; running requests continue on it."""
        with self._lock:
            self._pending = served
            self._lock.notify()

    def start(self) -> Engine:
        """Run the loop (``run``) in a thread of its own."""
        self._thread = threading.Thread(target=self.run, name="apt-serve-engine", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop the loop; requests still waiting or running end with an error event."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        """``close`` or ``finish`` was called: no request is taken any more."""
        return self._closed

    @property
    def has_work(self) -> bool:
        """Requests wait or run, or a model waits to be switched to."""
        return bool(self._waiting or self._rows or self._pending)

    def run(self) -> None:
        """Step while there is work, wait when there is none, until ``close``."""
        while True:
            with self._lock:
                while not (self.has_work or self._closed):
                    self._lock.wait()
                if self._closed:
                    break
            self.turn()
        self.finish()

    def turn(self) -> None:
        """One step, then ``on_step``; a step that fails fails the requests it ran, not the loop."""
        try:
            self.step()
        except Exception as exc:  # a bug must not take the server down: fail what ran, keep serving
            log.exception("the engine's step failed")
            rows, self._rows, self._batch, self._logits = self._rows, [], None, None
            self._fail(rows, f"generation failed: {type(exc).__name__}: {exc}")
        if self.on_step is not None:
            self.on_step()

    def finish(self) -> None:
        """End the requests still waiting or running with an error event (the loop has stopped)."""
        with self._lock:
            self._closed = True
            left = [*self._waiting, *self._rows]
            self._busy += len(self._waiting)  # the waiting ones were never counted
            self._waiting, self._rows, self._batch, self._logits = deque(), [], None, None
        self._fail(left, "the server is shutting down")
        if self.on_step is not None:
            self.on_step()

    def _take(self) -> list[Request]:
        """The waiting requests that fit the free slots (called with the lock held)."""
        self._waiting = deque(r for r in self._waiting if not r.cancelled)
        taken = [self._waiting.popleft() for _ in range(min(self.max_batch - self._busy, len(self._waiting)))]
        self._busy += len(taken)
        return taken

    @torch.inference_mode()  # as vLLM's workers run: no autograd bookkeeping at all (4% of a digits step)
    def step(self) -> None:
        """One step (``turn`` calls it; a test may call it by hand)."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._switch(pending)
        gone = [r for r in self._rows if r.cancelled]
        if gone:
            self._retire(gone)
        for _ in range(self.max_batch):  # each round admits or fails one request at least
            with self._lock:
                taken = self._take()
            if not taken:
                break
            self._admit(taken)
            if self.poll is not None:
                self.poll()
        if self._rows:
            self._decode()
        if self.metrics is not None:
            self.metrics.observe_engine(self)

    def _admit(self, requests: list[Request]) -> None:
        """Read ``requests`` and add their rows to the batch; those that cannot run are told, and so are all of
        them if their rows cannot join (their slots are given back either way)."""
        admission = Admission()
        try:
            admission = prepare(self.served, requests)
            for request, message in admission.failed:
                self._fail([request], message)
            if not admission.requests:
                return
            if self._batch is None:
                self._batch, self._logits = admission.batch, admission.logits
            else:
                self._batch.extend(admission.batch)
                self._logits = torch.cat([self._logits, admission.logits])
            self._rows.extend(admission.requests)
        except Exception as exc:
            log.exception("admitting requests failed")
            told = {id(r) for r, _ in admission.failed}
            self._fail([r for r in requests if id(r) not in told and r not in self._rows],
                       f"generation failed: {type(exc).__name__}: {exc}")

    def _decode(self) -> None:
        rows, logits = self._rows, self._logits
        chosen = logits.argmax(-1).tolist()
        for i, request in enumerate(rows):
            s = request.sampling
            if s.temperature > 0:
                chosen[i] = int(choose(logits[i:i + 1], True, s.temperature, s.top_k, s.top_p, request.generator))
        keep, feed, done, now, accept = [], [], [], time.monotonic(), self._accept
        for i, (request, token) in enumerate(zip(rows, chosen, strict=True)):
            if accept(request, token, now):
                done.append(request)
            else:
                keep.append(i)
                feed.append(token)
        if done:
            self._retire(done)
        if self._rows:
            self._logits = self._batch.step(torch.tensor(feed, device=self._logits.device))

    def _accept(self, request: Request, token: int, now: float) -> bool:
        """Add ``token`` to ``request``, send its new text; True when the request has ended."""
        last, request.last_token = request.last_token, now
        if self.metrics is not None:
            self.metrics.observe_token(now - (last or request.arrived), last is None)
        tokens = request.tokens
        tokens.append(token)
        reason = None
        if token == self.served.eos_id and not request.ignore_eos:
            text, reason = request.text.flush(), "stop"
        else:
            text, stopped = request.text.push(tokens)
            if stopped:
                reason = "stop"
            elif len(tokens) >= request.max_tokens:
                text, reason = text + request.text.flush(), "length"
        if text or reason:
            request.on_event(Event(text, len(tokens), self.served.fingerprint, reason))
        return reason is not None

    def _retire(self, requests: list[Request]) -> None:
        keep = [i for i, r in enumerate(self._rows) if r not in requests]
        if keep:
            self._batch.keep(keep)
            self._logits = self._logits[keep]
        else:
            self._batch = self._logits = None
        self._rows = [self._rows[i] for i in keep]
        self._release(len(requests))

    def _release(self, count: int) -> None:
        with self._lock:
            self._busy -= count

    def _switch(self, served: Served) -> None:
        """Go on with ``served``: the running requests' tokens so far are read again by it."""
        rows, self._rows, self._batch, self._logits = self._rows, [], None, None
        self.served = served
        ended = [r for r in rows if len(r.prompt) + len(r.tokens) >= served.context]
        for request in ended:  # the new model's context is shorter than what the request holds already
            request.on_event(Event(request.text.flush(), len(request.tokens), served.fingerprint, "length"))
        self._release(len(ended))
        survivors = [r for r in rows if r not in ended]
        if survivors:
            self._admit(survivors)

    def _fail(self, requests: list[Request], message: str) -> None:
        """End admitted requests that are not (or no longer) rows of the batch with an error event."""
        for request in requests:
            request.on_event(Event("", len(request.tokens), self.served.fingerprint, error=message))
        self._release(len(requests))
