"""The starlette application: routes, boundary middleware, error handlers, the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute

from protocol.codes import ErrorCode
from protocol.errors import AuthError, BayChatError
from server import metrics
from server.api.http import error_response, request_id
from server.api.openapi import openapi_document
from server.api.routes import OPERATIONS, build_routes
from server.auth import redaction
from server.config import Settings
from server.fastpath import FastPaths
from server.gateway import DirectGateway, websocket_endpoint
from server.middleware import Boundary
from server.origins import OriginPolicy
from server.runtime import Runtime

_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}


async def _bay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BayChatError)
    if isinstance(exc, AuthError):
        metrics.auth_failed(exc.code)
    return error_response(exc, request_id(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.BAD_FRAME)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, code.value)
    response = error_response(BayChatError(message, code=code), request_id(request))
    response.status_code = exc.status_code
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value  # e.g. Allow on a 405
    return response


def _version() -> str:
    try:
        return version("baychat")
    except PackageNotFoundError:
        return "0"


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    redaction.install()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.stop()

    app = Starlette(
        routes=[*build_routes(OPERATIONS), WebSocketRoute("/ws", websocket_endpoint)],
        middleware=[
            # Outermost: every response, CORS preflights and errors included, gets the
            # security headers and a request id.
            Middleware(Boundary, settings=settings),
            # /ws and /metrics go straight to their handlers from here (server.fastpath).
            Middleware(FastPaths),
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=["authorization", "content-type", "x-request-id"],
                expose_headers=["retry-after", "x-request-id"],
                allow_credentials=False,
                max_age=600,
            ),
        ],
        exception_handlers={BayChatError: _bay_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.openapi = openapi_document(OPERATIONS, version=_version())
    app.state.origin_policy = OriginPolicy(settings.allowed_origins)
    # /ws as `baychat serve` runs it: server.wsprotocol.SocketProtocol finds this and serves
    # the socket without ASGI (under any other server, /ws is the ASGI endpoint above).
    app.state.ws_gateway = DirectGateway(app.state, settings, app.state.origin_policy)
    return app
