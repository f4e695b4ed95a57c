"""Shared HTTP plumbing: JSON bodies in and out, bearer authentication, error mapping.

Inputs are decoded and validated once, by ``server.api.operation`` before a handler runs;
handlers read the results with ``body_of``, ``query_of``, ``params_of`` and
``principal_of``. ``read_body`` and ``authenticate`` return those same validated values
(they validate on the spot only for a handler mounted outside the route table).
"""

from __future__ import annotations

import logging
import uuid
from typing import TypeVar

import msgspec
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from protocol.codec import field_of, invalid_field
from protocol.codes import ErrorCode
from protocol.errors import AuthError, BayChatError, ProtocolError
from server.api.schemas import ErrorBody, ErrorResponse
from server.auth.principal import Principal
from server.logs import bind
from server.runtime import Runtime

T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_log = logging.getLogger("baychat.http")
_auth_log = logging.getLogger("baychat.auth")
JSON = "application/json"


def runtime_of(request: HTTPConnection) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def client_ip(request: HTTPConnection) -> str:
    """The client address, from X-Forwarded-For only behind a trusted proxy."""
    ip = getattr(request.state, "client_ip", None)
    if isinstance(ip, str):
        return ip
    return request.client.host if request.client else ""


def request_id(request: HTTPConnection) -> str:
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else uuid.uuid4().hex


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(body), status, headers, media_type=JSON)


def _validated(request: Request, slot: str, schema: type[T]) -> T | None:
    value = getattr(request.state, slot, None)
    return value if isinstance(value, schema) else None


def body_of(request: Request, schema: type[T]) -> T:
    value = _validated(request, "body", schema)
    assert value is not None, f"the operation declares no {schema.__name__} body"
    return value


def query_of(request: Request, schema: type[T]) -> T:
    value = _validated(request, "query", schema)
    assert value is not None, f"the operation declares no {schema.__name__} query"
    return value


def params_of(request: Request, schema: type[T]) -> T:
    value = _validated(request, "params", schema)
    assert value is not None, f"the operation declares no {schema.__name__} path parameters"
    return value


def principal_of(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    assert isinstance(principal, Principal), "the operation does not require authentication"
    return principal


async def decode_body(request: Request, schema: type[T]) -> T:
    limit = runtime_of(request).settings.max_http_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(f"body exceeds {limit} bytes", code=ErrorCode.TOO_LARGE)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != JSON:
        raise ProtocolError(
            "request body must be application/json", code=ErrorCode.UNSUPPORTED_MEDIA_TYPE
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"body exceeds {limit} bytes", code=ErrorCode.TOO_LARGE)
        chunks.append(chunk)
    try:
        return msgspec.json.decode(b"".join(chunks), type=schema)
    except msgspec.ValidationError as exc:
        raise invalid_field(str(exc)) from None
    except msgspec.DecodeError:
        raise ProtocolError("body is not valid JSON") from None
    except RecursionError:
        raise ProtocolError("body JSON is nested too deeply") from None


async def read_body(request: Request, schema: type[T]) -> T:
    """The validated body (validated here if the route table did not already)."""
    value = _validated(request, "body", schema)
    return value if value is not None else await decode_body(request, schema)


def bearer_token(request: HTTPConnection) -> str | None:
    """The bearer token of the Authorization header. Cookies are never credentials."""
    return bearer_of(request.headers.get("authorization", ""))


def bearer_of(authorization: str) -> str | None:
    """The token of an ``Authorization`` header value, if its scheme is Bearer."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(request: HTTPConnection) -> Principal:
    """The caller, from an ``Authorization: Bearer`` access token or agent token (never from
    a cookie or the URL); its session or agent token must still be live."""
    principal = getattr(request.state, "principal", None)
    if isinstance(principal, Principal):
        return principal
    token = bearer_token(request)
    if token is None:
        raise AuthError("bearer token required")
    try:
        principal = await runtime_of(request).auth.authenticate(token)
    except AuthError as exc:
        _auth_log.info(
            "access token refused", extra={"event": "auth.token_refused", "code": exc.code}
        )
        raise
    request.state.principal = principal
    bind(tenant_id=principal.tenant_id)
    return principal


def error_response(exc: BayChatError, correlation_id: str = "") -> Response:
    correlation_id = correlation_id or uuid.uuid4().hex
    field = field_of(exc) if isinstance(exc, ProtocolError) else None
    headers: dict[str, str] = {}
    retry_after: float | None = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    status = exc.wire.http_status
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (401, 403):
        _log.info("denied", extra={"event": "http.denied", "code": exc.code, "status": status})
    body = ErrorBody(
        code=exc.code,
        message=exc.message,
        correlation_id=correlation_id,
        field=field,
        retry_after=retry_after,
    )
    return json_response(ErrorResponse(body), status, headers)
