"""Errors as OpenAI's API returns them: a status code and ``{"error": {"message", "type", "param", "code"}}``,
which the ``openai`` client raises as ``BadRequestError`` (400), ``AuthenticationError`` (401),
``NotFoundError`` (404), ``RateLimitError`` (429) and so on, with the message. The server keeps serving."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from apt_sdk import UserError

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def size(count: float) -> str:
    """Bytes for a message: ``750 KB``, ``12.5 MB``."""
    return f"{count / 2**10:.0f} KB" if count < 2**20 else f"{count / 2**20:.1f} MB"


def body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def response(status: int, message: str, param: str | None = None, code: str | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body(status, message, param, code), status_code=status, headers=headers)


def _where(location: tuple) -> str:
    """``("body", "messages", 0, "content")`` -> ``messages[0].content``."""
    text = ""
    for part in location[1:] if location and location[0] == "body" else location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems, param = [], None
    for error in exc.errors():
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            return response(400, f"the request body is not valid JSON ({reason}, at character "
                                 f"{error['loc'][-1]})" if reason else "the request body is not valid JSON")
        where = _where(tuple(error["loc"]))
        # a union type (prompt, content) reports one error per member: its first one says enough
        where = where.split(".function-")[0]
        param = param or where or None
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            problems.append(f"'{where}' is required")
        elif where:
            problems.append(f"'{where}': {message} (got {error.get('input')!r})"[:300])
        else:
            problems.append(f"the request body: {message}")
    return response(400, "; ".join(dict.fromkeys(problems)), param)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(UserError)
    async def _user(request: Request, exc: UserError) -> JSONResponse:
        return response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation(request, exc)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return response(exc.status_code, message, headers=getattr(exc, "headers", None))
