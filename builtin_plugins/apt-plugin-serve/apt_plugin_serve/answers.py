"""From the engine's events to HTTP answers: whole answers, and server-sent events.

A ``Submission`` is the engine requests of one HTTP request (``n`` choices of each prompt); their events
arrive in the server's event loop (``EngineProcess``). ``collect`` waits for all of them, and cancels them
if the client goes away first; ``sse`` turns them into ``data: {...}`` chunks ending in ``data: [DONE]``,
and a client that disconnects mid-stream cancels them (Starlette cancels the stream). Either way a
cancelled request leaves the batch at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import StreamingResponse
from starlette.types import Send

from .errors import APIError, body
from .process import EngineProcess
from .request import Closed, Event, QueueFull, Request


@dataclass
class Result:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    fingerprint: str | None = None


class Submission:
    def __init__(self, engine: EngineProcess) -> None:
        self.engine = engine
        self.requests: list[Request] = []
        self.id = uuid.uuid4().hex[:24]
        self._arrived: list[tuple[int, Event]] = []  # since ``batches`` last took them
        self._wake: asyncio.Future | None = None  # what ``batches`` waits on when nothing has arrived

    def add(self, **fields: Any) -> None:
        index = len(self.requests)

        def on_event(event: Event) -> None:  # the event loop, as the engine's messages arrive
            self._arrived.append((index, event))
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)

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
        open_, loop = len(self.requests), asyncio.get_running_loop()
        while open_:
            if not self._arrived:
                self._wake = loop.create_future()
                await self._wake
            batch, self._arrived = self._arrived, []
            for _, event in batch:
                if event.finish_reason is not None or event.error is not None:
                    open_ -= 1
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


DONE = sse("[DONE]")
DONE_BYTES = DONE.encode()


class EventStream(StreamingResponse):
    """Server-sent events (``stream``): the piece that ends with ``[DONE]`` also ends the response, in one
    write rather than two (when 32 answers end at one decode step, each second write held the others up)."""

    media_type = "text/event-stream"

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        ended = False
        async for piece in self.body_iterator:
            if not ended:
                body = piece.encode() if isinstance(piece, str) else bytes(piece)
                ended = body.endswith(DONE_BYTES)
                await send({"type": "http.response.body", "body": body, "more_body": not ended})
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class Chunks:
    """A streamed answer's chunks as JSON text, in the shape of ``schemas.ChatCompletionChunk`` (``chat``) or
    ``schemas.Completion`` (``completion``), written without a model object or a ``json.dumps`` for each: what
    is the same in every chunk is encoded once, the text with the C encoder that ``json.dumps`` itself calls
    (a streamed answer has one chunk per token; at 32 streams, serializing them through pydantic took a tenth
    of a decode step)."""

    def __init__(self, kind: str, head: dict[str, Any]) -> None:
        self.chat = kind == "chat"
        self.head = json.dumps({**head, "object": "chat.completion.chunk" if self.chat else "text_completion"})[:-1]
        self._fingerprints: dict[str, str] = {}

    def __call__(self, index: int, text: str | None, finish_reason: str | None, fingerprint: str,
                 role: str | None = None) -> str:
        start = self._fingerprints.get(fingerprint)
        if start is None:  # once per answer, or twice when --watch switches models during it
            start = self._fingerprints[fingerprint] = (f'{self.head},"system_fingerprint":{json.dumps(fingerprint)},'
                                                       f'"choices":[{{"index":')
        content = "null" if text is None else _string(text)
        if self.chat:
            choice = f'"delta":{{"role":{json.dumps(role)},"content":{content}}}' if role else \
                f'"delta":{{"content":{content}}}'
        else:
            choice = f'"text":{content}'
        reason = "null" if finish_reason is None else _string(finish_reason)
        return f'{start}{index},{choice},"finish_reason":{reason},"logprobs":null}}]}}'


_string = encode_basestring_ascii  # a str as JSON, as json.dumps writes it


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
        open_ = len(submission.requests)
        # the events that arrived together are sent together: one write, not one per event, when the event
        # loop falls behind the engine (otherwise each write costs the loop a system call holding the GIL); the
        # last text, the usage chunk and [DONE] are one write too
        async for batch in submission.batches():
            text = []
            for index, event in batch:
                if event.error:
                    text.append(sse(body(503 if "shutting down" in event.error else 500, event.error)))
                    open_ = -1
                    break
                text.append(sse(chunk(index, event)))
                if event.finish_reason is not None:
                    open_ -= 1
            if open_ == 0:
                final = last()
                text.append(sse(final) if final else "")
            if open_ <= 0:
                yield "".join(text) + DONE
                return
            yield "".join(text)
        yield DONE
    finally:  # also when the client disconnects and Starlette cancels the stream
        submission.cancel()
