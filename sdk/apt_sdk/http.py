"""For a plugin command that runs an HTTP server (uvicorn, an ASGI application): what every such server needs
before and while it serves, with the standard library only.

- ``check_address(host, port)``: an address the server cannot listen on (a busy port) is one ``UserError``
  line, exit 2, before anything starts: uvicorn reports it as a log line and exit code 3;
- ``BodyLimit``: an ASGI middleware refusing a request body over a limit as it arrives, stated length or not,
  through the plugin's own answer (``refuse``), so an oversized body is never read whole.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from apt_kernel.errors import UserError

# ASGI's types, as plain aliases: the SDK depends on no web framework (starlette's are the same shapes)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["ASGIApp", "BodyLimit", "Message", "Receive", "Scope", "Send", "check_address"]


def check_address(host: str, port: int) -> None:
    """Raise ``UserError`` (``cannot listen on HOST:PORT: REASON``) where a server cannot listen on ``host:port``,
    naming ``--port`` where one is already listening there. A server that takes the port between this check and
    the server's start still gets the server's own message."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        busy = " (a server is already listening there: stop it or choose another --port)" if busy else ""
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{busy}") from None


class BodyLimit:
    """Refuse a request body over ``limit`` bytes as it arrives: by its Content-Length before the application
    runs, else once the body read so far passes the limit. ``refuse`` is an ASGI application answering the
    refusal (a 413 in the plugin's own format); it gets the request's scope, receive and send.

    With FastAPI or starlette: ``app.add_middleware(BodyLimit, limit=..., refuse=...)``."""

    def __init__(self, app: ASGIApp, limit: int, refuse: ASGIApp) -> None:
        self.app, self.limit, self.refuse = app, limit, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        stated = dict(scope["headers"]).get(b"content-length")
        if stated and stated.isdigit() and int(stated) > self.limit:
            return await self.refuse(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self.refuse(scope, receive, send)


class _TooLarge(Exception):
    pass
