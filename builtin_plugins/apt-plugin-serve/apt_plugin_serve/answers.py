"""From the engine's events to HTTP answers: whole answers, and server-sent events.

A ``Submission`` is the engine requests of one HTTP request (``n`` choices of each prompt); the engine's
thread hands their events to the server's event loop. ``collect`` waits for all of them, and cancels them
if the client goes away first; ``sse`` turns them into ``data: {...}`` chunks ending in ``data: [DONE]``,
and a client that disconnects mid-stream cancels them (Starlette cancels the stream). Either way a
cancelled request leaves the batch at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request as HTTPRequest

from .engine import Closed, Engine, Event, QueueFull, Request
from .errors import APIError, body


@dataclass
class Result:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    fingerprint: str | None = None


class Mailbox:
    """Events from the engine's thread to the event loop, with one wake-up of the loop for all the events
    posted meanwhile (a decode step has one for each running request) rather than one for each. Lock-free:
    a deque's append and popleft are atomic, and the engine appends before it reads the flag that the loop
    clears before it drains, so no event is left behind."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._items: deque = deque()
        self._scheduled = False

    def post(self, put: Callable[[Any], None], item: Any) -> None:  # the engine's thread
        self._items.append((put, item))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        items = self._items
        while items:
            put, item = items.popleft()
            put(item)


class Submission:
    def __init__(self, engine: Engine, mailbox: Mailbox) -> None:
        self.engine, self.mailbox = engine, mailbox
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.requests: list[Request] = []
        self.id = uuid.uuid4().hex[:24]

    def add(self, **fields: Any) -> None:
        index, put, post = len(self.requests), self.queue.put_nowait, self.mailbox.post

        def on_event(event: Event) -> None:  # the engine's thread
            post(put, (index, event))

        self.requests.append(Request(on_event=on_event, **fields))

    def submit(self) -> Submission:
        try:
            for request in self.requests:
                self.engine.submit(request)
        except QueueFull as exc:
            self.cancel()
            raise APIError(429, f"{exc}; retry in {exc.retry_after} s", code="rate_limit_exceeded",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        except Closed as exc:
            self.cancel()
            raise APIError(503, str(exc)) from None
        return self

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Each event until every request has ended (its last one has a finish reason or an error)."""
        async for batch in self.batches():
            for item in batch:
                yield item

    async def batches(self) -> AsyncIterator[list[tuple[int, Event]]]:
        """The events in batches: each time, the next one and all that have arrived with it."""
        open_, queue = len(self.requests), self.queue
        while open_:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            open_ -= sum(event.finish_reason is not None or event.error is not None for _, event in batch)
            yield batch

    async def collect(self, http: HTTPRequest) -> list[Result]:
        """Every request's whole answer; the requests are cancelled if the client disconnects first."""
        results = [Result() for _ in self.requests]

        async def gather() -> None:
            async for index, event in self.events():
                if event.error:
                    raise APIError(503 if "shutting down" in event.error else 500, event.error)
                result = results[index]
                result.text += event.text
                result.finish_reason, result.completion_tokens = event.finish_reason, event.completion_tokens
                result.fingerprint = event.fingerprint

        work, gone = asyncio.ensure_future(gather()), asyncio.ensure_future(_disconnected(http))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the client went away: free the slots
                work.cancel()
                self.cancel()
        if not work.cancelled():
            work.result()  # raises the APIError of a failed request
        return results


async def _disconnected(http: HTTPRequest) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


def sse(data: dict[str, Any] | str) -> str:
    """A server-sent event: ``data`` as JSON (a string is sent as it is: JSON already, or ``[DONE]``)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"


class Chunks:
    """A streamed answer's chunks as JSON text, in the shape of ``schemas.ChatCompletionChunk`` (``chat``) or
    ``schemas.Completion`` (``completion``), written without a model object for each (a streamed answer has
    one chunk per token, and at 32 streams serializing them through pydantic took a tenth of a decode step)."""

    def __init__(self, kind: str, head: dict[str, Any]) -> None:
        self.chat = kind == "chat"
        self.head = json.dumps({**head, "object": "chat.completion.chunk" if self.chat else "text_completion"})[:-1]

    def __call__(self, index: int, text: str | None, finish_reason: str | None, fingerprint: str,
                 role: str | None = None) -> str:
        dumps = json.dumps
        if self.chat:
            delta = dumps({"role": role, "content": text} if role else {"content": text})
            choice = f'"delta":{delta}'
        else:
            choice = f'"text":{dumps(text)}'
        return (f'{self.head},"system_fingerprint":{dumps(fingerprint)},"choices":[{{"index":{index},{choice},'
                f'"finish_reason":{dumps(finish_reason)},"logprobs":null}}]}}')


async def stream(submission: Submission, chunk: Callable[[int, Event | None], dict[str, Any] | str | None],
                 last: Callable[[], dict[str, Any] | None]) -> AsyncIterator[str]:
    """Server-sent events: ``chunk(index, None)`` opens each choice, ``chunk(index, event)`` for each event,
    then ``last()`` (the usage chunk, if asked for) and ``[DONE]``. An error ends the stream with an
    ``{"error": ...}`` event, as OpenAI's API does."""
    try:
        for index in range(len(submission.requests)):
            opening = chunk(index, None)
            if opening:
                yield sse(opening)
        failed = False
        # the events that arrived together are sent together: one write, not one per event, when the event
        # loop falls behind the engine (otherwise each write costs the loop a system call holding the GIL)
        async for batch in submission.batches():
            text = []
            for index, event in batch:
                if event.error:
                    text.append(sse(body(503 if "shutting down" in event.error else 500, event.error)))
                    failed = True
                    break
                text.append(sse(chunk(index, event)))
            yield "".join(text)
            if failed:
                break
        else:
            final = last()
            if final:
                yield sse(final)
        yield sse("[DONE]")
    finally:  # also when the client disconnects and Starlette cancels the stream
        submission.cancel()
