"""The ASGI application: the JSON API, the pages, their assets, errors and limits.

Errors are one message with the right status, never a stack trace: bad input 400, an unknown
model, matrix or direction 404, a request past its time limit 504, a query past the memory
limit 507 (Insufficient Storage: the server cannot hold what it needs), a body too large 413. The
API answers them as ``{"error": message, "status": code}``; pages as an HTML page saying so.
Every page forbids scripts and any source outside the server (Content-Security-Policy); the
pages need no JavaScript at all.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atlas.errors import AtlasError, AtlasWarning
from atlas.interface import version
from atlas.params import validation_error
from atlas.server import DEFAULT_INDEX_MEMORY_GB, DEFAULT_TIMEOUT, api, pages
from atlas.server.live import LiveAtlas

log = logging.getLogger("svd_atlas.server")

MAX_BODY = 2 << 20  # bytes: a 65,536-value vector as JSON or .npy fits
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; style-src 'self' "
    "'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(
    location: str,
    timeout: float = DEFAULT_TIMEOUT,
    index_memory_gb: float = DEFAULT_INDEX_MEMORY_GB,
    memory_limit: int | str | None = None,
) -> FastAPI:
    """The server for the atlas at ``location``, opened (up to ``index_memory_gb`` of its
    indexes loaded, its queries bounded by ``memory_limit`` together) before it returns."""
    # The notes of a search or card go out in its response; as warnings they would also be a
    # line on the server's stderr for every request (the library's notes for a user at a
    # prompt). A model left out at open is still told there: it is warned from atlas.server.live.
    warnings.filterwarnings("ignore", category=AtlasWarning, module=r"atlas\.server\.(api|pages)$")
    live = LiveAtlas(location, int(index_memory_gb * 2**30), memory_limit)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        live.close()

    app = FastAPI(
        title="svd-atlas",
        version=version("svd-atlas"),
        description="A read-only atlas of transformer weight SVDs: the JSON API mirrors the "
        "library and the JSON output of the CLI.",
        docs_url=None,  # FastAPI's docs pages load their scripts from a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.live = live
    app.state.timeout = timeout
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.add_exception_handler(AtlasError, _atlas_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(_Limits)
    app.add_middleware(_Head)
    return app


# -- errors --------------------------------------------------------------------------------


def _error(request: Request, status: int, message: str) -> Response:
    return _atlas_response(request, AtlasError(message), status)


def _atlas_response(request: Request, exc: AtlasError, status: int | None = None) -> Response:
    """The API's JSON (``error``, ``param``, ``hint``, ``status``) or a page saying so; the
    status is the error type's own unless the server's (a 413, a 405) is given."""
    status = status or exc.status
    if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
        return JSONResponse({**exc.to_dict(), "status": status}, status_code=status)
    return pages.error_page(request, status, str(exc))


async def _atlas_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AtlasError)
    return _atlas_response(request, exc)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """A bad parameter: the library's own refusal of it (:func:`atlas.params.validation_error`),
    naming the parameter."""
    assert isinstance(exc, RequestValidationError)
    return _atlas_response(request, validation_error(exc.errors(), located=True))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    response = _error(request, exc.status_code, message)
    response.headers.update(exc.headers or {})  # a 405's Allow
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("error serving %s", request.url.path, exc_info=exc)
    return _error(request, 500, "internal error (the server's log has the details)")


# -- limits and headers --------------------------------------------------------------------


class _Limits:
    """Refuses a request body over MAX_BODY bytes (413), whether its length is declared or it
    comes in chunks, and adds the security headers to every response (errors included)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            await _too_large(scope, receive, send_with_headers)
            return
        # the body is read here, at most MAX_BODY + 1 bytes of it, and replayed to the app
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY:
                await _too_large(scope, receive, send_with_headers)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # a disconnect, once the request is answered

        await self.app(scope, replay, send_with_headers)


class _Head:
    """HEAD answered as GET without its body (RFC 9110: every resource that takes GET takes
    HEAD)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    response = _error(request, 413, f"the request body is over {MAX_BODY} bytes")
    await response(scope, receive, send)
