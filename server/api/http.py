"""Shared HTTP plumbing: JSON bodies in and out, bearer authentication, error mapping."""

from __future__ import annotations

import logging
import uuid
from typing import TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from protocol.codes import ErrorCode
from protocol.errors import AuthError, BayChatError, ProtocolError
from server.api.schemas import ErrorBody, ErrorResponse
from server.auth.principal import Principal
from server.runtime import Runtime

T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_log = logging.getLogger("baychat.http")


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


async def read_body(request: Request, schema: type[T]) -> T:
    limit = runtime_of(request).settings.max_http_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(f"body exceeds {limit} bytes", code=ErrorCode.TOO_LARGE)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ProtocolError(f"body exceeds {limit} bytes", code=ErrorCode.TOO_LARGE)
    try:
        return msgspec.json.decode(raw, type=schema)
    except msgspec.ValidationError as exc:
        raise ProtocolError(str(exc), code=ErrorCode.INVALID_FIELD) from None
    except msgspec.DecodeError:
        raise ProtocolError("body is not valid JSON") from None


async def authenticate(request: Request) -> Principal:
    """The caller, from an ``Authorization: Bearer`` access token or agent token (never
    from the URL)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("bearer token required")
    return await runtime_of(request).auth.authenticate(token.strip())


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def error_response(exc: BayChatError) -> Response:
    from protocol.codec import field_of

    field = field_of(exc) if isinstance(exc, ProtocolError) else None
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    if exc.wire.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return json_response(
        ErrorResponse(ErrorBody(code=exc.code, message=exc.message, field=field)),
        exc.wire.http_status,
        headers,
    )


def internal_error_response() -> Response:
    correlation = uuid.uuid4().hex
    _log.exception("unhandled error", extra={"correlation_id": correlation})
    return json_response(
        ErrorResponse(
            ErrorBody(code=ErrorCode.INTERNAL, message=f"internal error (ref {correlation})")
        ),
        500,
    )
