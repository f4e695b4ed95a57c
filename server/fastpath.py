"""``/ws`` and ``/metrics``, handed straight to their handlers (pure ASGI).

(``baychat serve`` answers ``/ws`` before ASGI, in ``server.wsprotocol.SocketProtocol``;
this is the ``/ws`` of the app under any other server, and of percent-encoded spellings.)

Mounted just inside the boundary middleware (client address, request id, security headers
and access log still apply), this skips CORS, the exception middleware and the router for
the two paths that do not need them: a WebSocket's coroutine chain stays alive as long as
the connection, and every frame of it is memory held by each of tens of thousands of
mostly idle sockets (docs/BENCHMARKS.md). ``/metrics`` is a Prometheus scrape endpoint, not
part of the JSON API or its OpenAPI document.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from server import metrics
from server.gateway import websocket_endpoint

WS_PATH = "/ws"
METRICS_PATH = "/metrics"


class FastPaths:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] == "websocket" and path == WS_PATH:
            await websocket_endpoint(WebSocket(scope, receive, send))
        elif scope["type"] == "http" and path == METRICS_PATH:
            response: Response
            if scope["method"] in ("GET", "HEAD"):
                response = Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
            else:
                response = PlainTextResponse(
                    "method not allowed", status_code=405, headers={"Allow": "GET, HEAD"}
                )
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)
