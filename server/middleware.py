"""The outer boundary of every HTTP request and WebSocket handshake (pure ASGI).

For each connection it resolves the client address behind trusted proxies, assigns a
request id (echoed as ``X-Request-ID`` and carried by every log line and error body), and
for HTTP it adds the security headers to every response (errors and 404s included), turns
any exception that escaped the application into a 500 with a correlation id and no
internals, and writes one access-log line without the query string.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import msgspec
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol.codes import ErrorCode
from server.api.schemas import ErrorBody, ErrorResponse
from server.config import Settings
from server.logs import bind
from server.proxies import TrustedProxies

_log = logging.getLogger("baychat.http")
_access = logging.getLogger("baychat.access")
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")

CSP = (
    "default-src 'none'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=()"
    ),
    "Cross-Origin-Opener-Policy": "same-origin",
}


def internal_error_body(correlation_id: str) -> bytes:
    return msgspec.json.encode(
        ErrorResponse(
            ErrorBody(
                code=ErrorCode.INTERNAL,
                message=f"internal error (ref {correlation_id})",
                correlation_id=correlation_id,
            )
        )
    )


class Boundary:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.hsts = f"max-age={settings.hsts_max_age_s}; includeSubDomains"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        client = scope.get("client")
        peer = self.proxies.resolve(
            client[0] if client else "",
            scope.get("scheme", "http"),
            headers.get("x-forwarded-for", ""),
            headers.get("x-forwarded-proto", ""),
        )
        incoming = headers.get("x-request-id", "")
        request_id = (
            incoming if peer.via_proxy and REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        )
        state: dict[str, Any] = scope.setdefault("state", {})
        state.update(client_ip=peer.ip, secure=peer.secure, request_id=request_id)
        bind(request_id=request_id, conn_id=None, tenant_id=None)
        authenticated = "authorization" in headers
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
                out = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    out[name] = value
                out["X-Request-ID"] = request_id
                if peer.secure:
                    out["Strict-Transport-Security"] = self.hsts
                if authenticated or "cache-control" not in out:
                    out["Cache-Control"] = "no-store"
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            _log.exception(
                "unhandled error", extra={"event": "http.error", "correlation_id": request_id}
            )
            if status or scope["type"] != "http":
                raise
            status = 500
            body = internal_error_body(request_id)
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            if scope["type"] == "http":
                _access.info(
                    "request",
                    extra={
                        "event": "http.request",
                        "method": scope.get("method"),
                        "path": scope.get("path"),  # never the query string
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "client_ip": peer.ip,
                    },
                )
