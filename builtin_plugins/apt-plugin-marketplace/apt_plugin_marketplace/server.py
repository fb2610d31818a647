"""``create_app(...)``: the marketplace server as one FastAPI application (index, upload, JSON API, page)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from apt_sdk.http import BodyLimit

from . import api, index, status_phrase
from .server_state import State, make_templates
from .status_phrase import Status
from .store import connect


def _too_large(limit: int) -> ASGIApp:
    """The refusal of an upload over ``limit`` bytes, before it reaches the disk: 413 with the reason as the
    JSON ``detail`` and the status phrase (twine shows only that)."""
    reason = f"request body over the upload limit of {limit:,} bytes"
    body = f'{{"detail": "{reason}"}}'.encode()

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": Status(413, reason),
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    return refuse


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
    limit = max_upload + 2**20  # room for the form's other fields
    app.add_middleware(BodyLimit, limit=limit, refuse=_too_large(limit))
    return app


def app_from_environment() -> FastAPI:
    """The app for ``serve --workers N``: each uvicorn worker builds its own from the environment."""
    import os

    return create_app(os.environ["APT_MARKETPLACE_DB"], Path(os.environ["APT_MARKETPLACE_STORAGE"]),
                      float(os.environ.get("APT_MARKETPLACE_MAX_UPLOAD_MB", "100")))
