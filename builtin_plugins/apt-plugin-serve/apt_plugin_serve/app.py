"""``create_app(engine, settings)``: the server as one FastAPI application.

The engine's messages are read by the application's event loop from its start, and the engine's process
is closed after it: uvicorn, on SIGTERM, stops accepting connections and waits for the open ones (their
requests finish in the engine) before the application's shutdown closes the engine.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from apt_sdk.http import BodyLimit

from . import errors, routes
from .chat import ChatTemplate
from .metrics import Metrics
from .process import EngineProcess


@dataclass
class Settings:
    model_name: str
    api_key: str | None = None
    max_body: int = 32 * 2**20  # bytes of a request body
    max_media: int = 8 * 2**20  # bytes of one image or clip
    allow_image_urls: bool = False
    chat_template: ChatTemplate = field(default_factory=ChatTemplate)
    transcription_prompt: str = ""


@dataclass
class State:
    engine: EngineProcess
    settings: Settings
    metrics: Metrics
    created: int = field(default_factory=lambda: int(time.time()))


def _too_large(limit: int) -> ASGIApp:
    """The refusal of a request body over ``limit`` bytes: 413 in the OpenAI API's format."""
    message = f"the request body is over the limit of {errors.size(limit)} (--max-body-mb)"

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await errors.response(413, message, code="request_too_large", headers={"Connection": "close"})(
            scope, receive, send)

    return refuse


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


def create_app(engine: EngineProcess, settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or engine.metrics or Metrics()
    engine.metrics = metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.attach()
        try:
            yield
        finally:
            engine.close(30)

    app = FastAPI(title="APT Kernel: an OpenAI-compatible server", lifespan=lifespan, docs_url="/docs",
                  openapi_url="/openapi.json")
    app.state.serve = State(engine, settings, metrics)
    errors.install(app)
    app.include_router(routes.open_router)
    app.include_router(routes.router)

    app.add_middleware(Counted, metrics=metrics)
    app.add_middleware(BodyLimit, limit=settings.max_body, refuse=_too_large(settings.max_body))
    return app
