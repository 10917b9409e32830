"""HTTP conventions shared by the server and the client (the original's framework behaviour).

Unknown paths answer 404 and wrong methods 405 with empty bodies; GET routes answer HEAD;
path ids parse like Rust's u32 with axum's plain-text rejection.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from job_orchestrator._descriptors import RETRY_AFTER_S as DESCRIPTORS_RETRY_AFTER_S
from job_orchestrator.status import Status
from job_orchestrator.wire import parse_unsigned

U32_MAX = 2**32 - 1


class InvalidPathIdError(Exception):
    def __init__(self, raw: str) -> None:
        super().__init__(f"Invalid URL: Cannot parse `{raw}` to a `u32`")


def parse_u32(raw: str) -> int:
    value = parse_unsigned(raw, U32_MAX)
    if value is None:
        raise InvalidPathIdError(raw)
    return value


#: What utoipa 5 emits for a Rust `u32` (it adds no maximum).
U32_SCHEMA: dict[str, Any] = {"type": "integer", "format": "int32", "minimum": 0}


def path_id(request: Request) -> int:
    """The `{id}` of the path, parsed like the original's `Path<u32>` (400 otherwise).

    Routes read it from the raw path instead of declaring a typed parameter, so FastAPI never
    answers 422 and the rejection text stays axum's; `id_parameter` documents it.
    """
    raw: str = request.path_params["id"]
    return parse_u32(raw)


def id_parameter(description: str) -> dict[str, Any]:
    """`openapi_extra` documenting the `{id}` path parameter the way utoipa does."""
    parameter = {"name": "id", "in": "path", "description": description, "required": True}
    return {"parameters": [{**parameter, "schema": U32_SCHEMA}]}


def json_response(content: Any, status_code: int = 200, **kwargs: Any) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, **kwargs)


def status_body(job_id: int, status: Status, message: str, status_code: int) -> JSONResponse:
    return json_response({"id": job_id, "status": status.wire, "message": message}, status_code)


def too_busy(
    message: str,
    status_code: int,
    retry_after_s: int,
    job_id: int = 0,
    status: Status = Status.UNKNOWN,
) -> JSONResponse:
    """A refusal to come back later (429 or 503): the usual error body and `Retry-After`."""
    response = status_body(job_id, status, message, status_code)
    response.headers["Retry-After"] = str(retry_after_s)
    return response


def out_of_descriptors(job_id: int = 0, status: Status = Status.UNKNOWN) -> JSONResponse:
    """What a request answers when this process has no file descriptor left (never a 500)."""
    return too_busy(
        "The server has no file descriptor left; retry in a few seconds",
        503,
        DESCRIPTORS_RETRY_AFTER_S,
        job_id,
        status,
    )


PING = {"message": "pong"}
HEALTHY = {"status": "ok", "database": "ok"}


class HeadAsGet:
    """Serve HEAD through the GET route; uvicorn drops the body for the original HEAD scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = dict(scope, method="GET")
        await self.app(scope, receive, send)


def install_conventions(app: FastAPI) -> None:
    async def bare_status(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return Response(status_code=exc.status_code, headers=exc.headers)

    async def invalid_id(_request: Request, exc: Exception) -> Response:
        return PlainTextResponse(str(exc), status_code=400)

    async def invalid_request(_request: Request, exc: Exception) -> Response:
        # str(exc) names our source file and line: say only which input was wrong.
        assert isinstance(exc, RequestValidationError)
        where = sorted({".".join(map(str, error.get("loc", ()))) for error in exc.errors()})
        return PlainTextResponse(f"Invalid request: {', '.join(where)}", status_code=400)

    app.add_exception_handler(StarletteHTTPException, bare_status)
    app.add_exception_handler(InvalidPathIdError, invalid_id)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_middleware(HeadAsGet)


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header."""
    scheme, _, supplied = (authorization or "").partition(" ")
    # The scheme is case-insensitive (RFC 7235); the token is compared in constant time.
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.encode(), token.encode())


UNAUTHORIZED = {"message": "missing or invalid bearer token"}


class BearerGuard:
    """Refuse every request without the right bearer token, except a few open GET routes."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.token = token
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["method"] in ("GET", "HEAD") and scope["path"] in self.open_paths
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if bearer_matches(authorization, self.token):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)
