"""One HTTP operation: its schemas, security, errors and rate limits, and the one path every
request takes through the boundary before its handler runs.

``Operation`` is the single description of an endpoint. The route table (``routes.py``)
builds both the starlette routes and the OpenAPI document from it, so the document cannot
drift from the code. Before the handler runs, ``run``:

1. authenticates the bearer token (when ``auth``), never a cookie;
2. decodes and validates the path parameters, the query string and the JSON body with the
   declared msgspec schemas (anything undeclared, unknown, mistyped, out of range or too
   long is a 4xx naming the field);
3. applies the rate limits: the declared ones, plus ``http_write`` per principal on every
   authenticated write.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from protocol.codec import invalid_field
from protocol.codes import ErrorCode
from protocol.errors import ProtocolError
from server.api.http import authenticate, client_ip, decode_body, principal_of, runtime_of
from server.ratelimit import POLICIES, principal_key

Handler = Callable[[Request], Awaitable[Response]]
KeyOf = Callable[[Request], tuple[str, ...]]
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def by_ip(request: Request) -> tuple[str, ...]:
    return (client_ip(request),)


def by_principal(request: Request) -> tuple[str, ...]:
    principal = principal_of(request)
    return principal_key(principal.tenant_id, principal.kind, principal.id)


@dataclass(frozen=True, slots=True)
class Limit:
    policy: str  # a name in server.ratelimit.POLICIES
    key: KeyOf = by_ip


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # full path, starlette/OpenAPI template syntax: /api/v1/channels/{name}
    handler: Handler
    summary: str
    response: type[Any] | None  # the success body's schema
    status: int = 200
    other_statuses: tuple[int, ...] = ()  # further success statuses with the same schema
    body: type[Any] | None = None
    query: type[Any] | None = None
    params: type[Any] | None = None
    auth: bool = True
    errors: tuple[ErrorCode, ...] = ()  # beyond those implied by the fields above
    limits: tuple[Limit, ...] = ()
    tags: tuple[str, ...] = ()
    description: str = ""
    operation_id: str = field(default="")

    def __post_init__(self) -> None:
        names = set(_PATH_PARAM.findall(self.path))
        declared = set(self.params.__struct_fields__) if self.params else set()
        if names != declared:
            raise ValueError(f"{self.method} {self.path}: path parameters {names} != {declared}")
        for limit in self.limits:
            if limit.policy not in POLICIES:
                raise ValueError(f"{self.method} {self.path}: unknown rate limit {limit.policy}")
        if not self.operation_id:
            object.__setattr__(self, "operation_id", self.handler.__name__)

    @property
    def all_limits(self) -> tuple[Limit, ...]:
        if self.auth and self.method in WRITE_METHODS:
            return (*self.limits, Limit("http_write", by_principal))
        return self.limits

    @property
    def error_codes(self) -> tuple[ErrorCode, ...]:
        """Every error this operation can answer with, in a stable order."""
        codes = {ErrorCode.BAD_FRAME, *self.errors}
        if self.params or self.query or self.body:
            codes.add(ErrorCode.INVALID_FIELD)
        if self.body:
            codes |= {ErrorCode.TOO_LARGE, ErrorCode.UNSUPPORTED_MEDIA_TYPE}
        if self.auth:
            codes |= {ErrorCode.UNAUTHORIZED, ErrorCode.TOKEN_EXPIRED}
        if self.all_limits:
            codes.add(ErrorCode.RATE_LIMITED)
        if any(POLICIES[limit.policy].fail_closed for limit in self.all_limits):
            codes.add(ErrorCode.UNAVAILABLE)
        return tuple(code for code in ErrorCode if code in codes)


def _convert(schema: type[Any], values: dict[str, str], where: str) -> Any:
    try:
        return msgspec.convert(values, type=schema, strict=False)
    except msgspec.ValidationError as exc:
        raise invalid_field(str(exc), prefix=f"invalid {where}: ") from None


def _query(operation: Operation, request: Request) -> Any:
    items = request.query_params.multi_items()
    if operation.query is None:
        if items:
            raise ProtocolError(
                f"unknown query parameter `{items[0][0]}`",
                code=ErrorCode.INVALID_FIELD,
                field=items[0][0],
            )
        return None
    values: dict[str, str] = {}
    for name, value in items:
        if name in values:
            raise ProtocolError(
                f"query parameter `{name}` given more than once",
                code=ErrorCode.INVALID_FIELD,
                field=name,
            )
        values[name] = value
    return _convert(operation.query, values, "query parameter")


async def run(operation: Operation, request: Request) -> Response:
    """The boundary of one request (see the module docstring), then the handler."""
    if operation.auth:
        await authenticate(request)
    state = request.state
    state.params = (
        _convert(operation.params, dict(request.path_params), "path parameter")
        if operation.params
        else None
    )
    state.query = _query(operation, request)
    state.body = await decode_body(request, operation.body) if operation.body else None
    limiter = runtime_of(request).limiter
    for limit in operation.all_limits:
        await limiter.hit(limit.policy, *limit.key(request))
    return await operation.handler(request)
