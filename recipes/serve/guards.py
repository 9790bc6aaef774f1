"""What stands before the routes: a body-size bound (so an upload is refused before it is read), the
optional bearer token, and the handlers that turn every failure into one JSON error."""

from __future__ import annotations

import logging
import secrets
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .settings import ServeError

log = logging.getLogger("recipes.serve")


def error_response(err: ServeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class BodyLimit:
    """Requests with a body must declare its length (Content-Length; the HTTP server holds the client to
    it) and stay within `max_bytes`: a huge upload is answered 413 without reading it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            err = None
            if length is None:
                err = ServeError(411, "a request body needs a Content-Length header", "length_required")
            elif not length.isdigit() or int(length) > self.max_bytes:
                err = ServeError(413, f"the request body is over {self.max_bytes} bytes", "body_too_large")
            if err is not None:
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


BEARER = HTTPBearer(auto_error=False, description="the token given to `hart-unified serve --token`")


def token_check(token: str | None):
    """A FastAPI dependency: with a token, every request must send `Authorization: Bearer TOKEN`."""

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise ServeError(401, "missing or wrong bearer token", "invalid_token", "authentication_error")

    return check


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:3]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return error_response(ServeError(400, "; ".join(parts) or "invalid request", "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(ServeError(exc.status_code, str(exc.detail), "http_error"))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s %s failed", request.method, request.url.path)
        return error_response(ServeError(500, f"internal error: {type(exc).__name__}", "internal_error"))
