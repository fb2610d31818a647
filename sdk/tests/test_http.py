"""apt_sdk.http: an address that cannot be listened on is one UserError line naming host:port, and BodyLimit refuses
a body over its limit, stated by Content-Length or streamed without one, through the plugin's own ``refuse``
(driven here as an ASGI server would, with plain async calls)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from apt_sdk import UserError
from apt_sdk.http import BodyLimit, check_address


def test_a_busy_port_is_one_line_naming_the_address_and_what_to_do():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(UserError) as error:
            check_address("127.0.0.1", port)
    assert str(error.value) == (f"cannot listen on 127.0.0.1:{port}: Address already in use (a server is already "
                                "listening there: stop it or choose another --port)")


def test_an_address_not_of_this_machine_is_refused_without_the_port_advice():
    with pytest.raises(UserError) as error:
        check_address("192.0.2.1", 8000)  # TEST-NET-1: never a local address
    assert str(error.value).startswith("cannot listen on 192.0.2.1:8000: ")
    assert "\n" not in str(error.value) and "--port" not in str(error.value)


def test_a_free_address_passes_and_stays_free():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    check_address("127.0.0.1", port)
    with socket.socket() as again:  # the probe let it go
        again.bind(("127.0.0.1", port))


class Exchange:
    """One request through ``BodyLimit(limit)`` in front of an app reading the whole body and answering 200."""

    def __init__(self, limit: int) -> None:
        self.sent: list[dict] = []
        self.refused: list[dict] = []
        self.reached = False
        self.middleware = BodyLimit(self.app, limit=limit, refuse=self.refuse)

    async def app(self, scope, receive, send) -> None:
        self.reached = True
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    async def refuse(self, scope, receive, send) -> None:
        self.refused.append(scope)
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"too large"})

    def run(self, chunks: list[bytes], stated: int | None = None) -> int:
        """The response's status, the body arriving in ``chunks``, with Content-Length ``stated`` where given."""
        headers = [(b"content-type", b"application/octet-stream")]
        if stated is not None:
            headers.append((b"content-length", str(stated).encode()))
        scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
        messages = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
                    for i, chunk in enumerate(chunks)]

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            self.sent.append(message)

        asyncio.run(self.middleware(scope, receive, send))
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent
        return starts[0]["status"]


def test_a_body_stated_over_the_limit_is_refused_before_the_app_runs():
    exchange = Exchange(limit=10)
    assert exchange.run([b"x" * 11], stated=11) == 413
    assert not exchange.reached
    assert len(exchange.refused) == 1 and exchange.refused[0]["path"] == "/"


def test_a_streamed_body_without_a_length_is_refused_once_it_passes_the_limit():
    exchange = Exchange(limit=10)
    assert exchange.run([b"abcd", b"efgh", b"ijkl", b"mnop"]) == 413
    assert exchange.reached and len(exchange.refused) == 1
    assert exchange.sent[-1]["body"] == b"too large"


def test_a_body_within_the_limit_reaches_the_app_stated_or_streamed():
    exchange = Exchange(limit=12)
    assert exchange.run([b"abcd", b"efgh", b"ijkl"]) == 200
    assert exchange.sent[-1]["body"] == b"12" and not exchange.refused
    assert Exchange(limit=12).run([b"x" * 12], stated=12) == 200


def test_what_is_not_an_http_request_passes_untouched():
    seen = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["type"])

    async def never(*args) -> None:
        raise AssertionError("refused a lifespan scope")

    asyncio.run(BodyLimit(app, limit=0, refuse=never)({"type": "lifespan"}, never, never))
    assert seen == ["lifespan"]
