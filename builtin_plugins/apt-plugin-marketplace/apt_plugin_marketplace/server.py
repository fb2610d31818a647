"""``create_app(...)``: the marketplace server as one FastAPI application (index, upload, JSON API, page)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import api, index, status_phrase
from .server_state import State, make_templates
from .status_phrase import Status
from .store import connect


class _BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413 while it arrives, stated length or not, so an
    oversized upload never reaches the disk."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        stated = dict(scope["headers"]).get(b"content-length")
        if stated and stated.isdigit() and int(stated) > self.limit:
            return await self._refuse(send)
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
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        reason = f"request body over the upload limit of {self.limit:,} bytes"
        body = f'{{"detail": "{reason}"}}'.encode()
        await send({"type": "http.response.start", "status": Status(413, reason),
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


async def _refusal(request: Request, exc: HTTPException) -> Response:
    """FastAPI's JSON ``{"detail": ...}``, with the detail as the status phrase too (twine shows only that)."""
    response = await http_exception_handler(request, exc)
    if isinstance(exc.detail, str) and exc.status_code >= 400:
        response.status_code = Status(exc.status_code, exc.detail)
    return response


def create_app(database_url: str, storage: Path, max_upload_mb: float = 100, max_unpacked_mb: float = 1000) -> FastAPI:
    storage = Path(storage)
    files, incoming = storage / "files", storage / "incoming"
    files.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(incoming, ignore_errors=True)  # uploads cut off by a restart; never recorded, never served
    incoming.mkdir()
    max_upload = int(max_upload_mb * 2**20)
    status_phrase.install()
    app = FastAPI(title="APT Kernel plugin marketplace", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.market = State(connect(database_url), files, incoming, max_upload, int(max_unpacked_mb * 2**20),
                             make_templates())
    app.include_router(index.router)
    app.include_router(api.router)
    app.include_router(api.page)
    app.add_exception_handler(HTTPException, _refusal)
    app.add_middleware(_BodyLimit, limit=max_upload + 2**20)  # room for the form's other fields
    return app


def app_from_environment() -> FastAPI:
    """The app for ``serve --workers N``: each uvicorn worker builds its own from the environment."""
    import os

    return create_app(os.environ["APT_MARKETPLACE_DB"], Path(os.environ["APT_MARKETPLACE_STORAGE"]),
                      float(os.environ.get("APT_MARKETPLACE_MAX_UPLOAD_MB", "100")))
