"""``create_app(engine, settings)``: the server as one FastAPI application.

The engine's thread (and ``--watch``'s) start with the application and stop after it: uvicorn, on
SIGTERM, stops accepting connections and waits for the open ones (their requests finish in the engine)
before the application's shutdown closes the engine.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from . import errors, routes
from .answers import Mailbox
from .chat import ChatTemplate
from .engine import Engine
from .metrics import Metrics


@dataclass
class Settings:
    model_name: str
    api_key: str | None = None
    max_body: int = 32 * 2**20  # bytes of a request body
    max_media: int = 8 * 2**20  # bytes of one image or clip
    allow_image_urls: bool = False
    chat_template: ChatTemplate = field(default_factory=ChatTemplate)
    transcription_prompt: str = ""
    watch: Path | None = None  # the model folder to watch for new exports
    watch_interval: float = 0.5


@dataclass
class State:
    engine: Engine
    settings: Settings
    metrics: Metrics
    created: int = field(default_factory=lambda: int(time.time()))
    mailbox: Mailbox | None = None  # made with the event loop, when the application starts


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413 as it arrives, stated length or not."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        stated = dict(scope["headers"]).get(b"content-length")
        if stated and stated.isdigit() and int(stated) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is over the limit of {errors.size(self.limit)} (--max-body-mb)"
        await errors.response(413, message, code="request_too_large", headers={"Connection": "close"})(
            scope, receive, send)


class _TooLarge(Exception):
    pass


class Counted:
    """``apt_serve_requests_total{endpoint, status}``: a plain ASGI middleware, which streams untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:  # the router put the matched route in the scope
            self.metrics.requests.labels(getattr(scope.get("route"), "path", "other"), str(status)).inc()


def create_app(engine: Engine, settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or engine.metrics or Metrics()
    engine.metrics = metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from .watch import Watcher

        watcher = None
        app.state.serve.mailbox = Mailbox()
        if not engine.started:
            engine.start()
        if settings.watch is not None:
            watcher = Watcher(engine, settings.watch, settings.watch_interval).start()
        try:
            yield
        finally:
            if watcher is not None:
                watcher.close()
            engine.close(30)

    app = FastAPI(title="APT Kernel: an OpenAI-compatible server", lifespan=lifespan, docs_url="/docs",
                  openapi_url="/openapi.json")
    app.state.serve = State(engine, settings, metrics)
    errors.install(app)
    app.include_router(routes.open_router)
    app.include_router(routes.router)

    app.add_middleware(Counted, metrics=metrics)
    app.add_middleware(BodyLimit, limit=settings.max_body)
    return app
