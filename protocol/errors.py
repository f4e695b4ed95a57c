"""The error hierarchy of BayChat, and the one table that maps each code to the wire.

    BayChatError                 code, message (safe to show a client)
    ├── ProtocolError            a frame that cannot be decoded or validated
    ├── AuthError                unauthorized / token_expired / revoked
    ├── ForbiddenError           authenticated, not allowed
    ├── NotFoundError            does not exist *for this tenant* (cross-tenant ids land here)
    ├── ConflictError            unique name already taken, etc.
    ├── RateLimitedError         carries retry_after
    ├── UnavailableError         a backend is down; retry later
    └── TenantIsolationError     a row of another tenant reached a scoped layer (fatal)

Every error maps to exactly one HTTP status and, when it must end a WebSocket connection,
one close code (``ERROR_TABLE``).
"""

from __future__ import annotations

from typing import NamedTuple

from protocol.codes import CloseCode, ErrorCode


class WireMapping(NamedTuple):
    http_status: int
    close_code: CloseCode | None  # None: an error frame, the connection stays open


ERROR_TABLE: dict[ErrorCode, WireMapping] = {
    ErrorCode.BAD_FRAME: WireMapping(400, None),
    ErrorCode.UNKNOWN_TYPE: WireMapping(400, None),
    ErrorCode.INVALID_FIELD: WireMapping(422, None),
    ErrorCode.TOO_LARGE: WireMapping(413, None),
    ErrorCode.UNAUTHORIZED: WireMapping(401, CloseCode.UNAUTHORIZED),
    ErrorCode.TOKEN_EXPIRED: WireMapping(401, CloseCode.TOKEN_EXPIRED),
    ErrorCode.REVOKED: WireMapping(401, CloseCode.REVOKED),
    ErrorCode.FORBIDDEN: WireMapping(403, None),
    ErrorCode.NOT_FOUND: WireMapping(404, None),
    ErrorCode.METHOD_NOT_ALLOWED: WireMapping(405, None),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: WireMapping(415, None),
    ErrorCode.CONFLICT: WireMapping(409, None),
    ErrorCode.RATE_LIMITED: WireMapping(429, None),
    ErrorCode.NOT_SUBSCRIBED: WireMapping(409, None),
    ErrorCode.UNAVAILABLE: WireMapping(503, CloseCode.TRY_AGAIN),
    ErrorCode.INTERNAL: WireMapping(500, CloseCode.TRY_AGAIN),
}


class BayChatError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, code: ErrorCode | None = None) -> None:
        if code is not None:
            self.code = code
        self.message = message or self.default_message
        super().__init__(self.message)

    @property
    def wire(self) -> WireMapping:
        return ERROR_TABLE[self.code]


class ProtocolError(BayChatError):
    code = ErrorCode.BAD_FRAME
    default_message = "malformed frame"
    request_id: str | int | None = None  # the frame's `id`, when it could be read

    def __init__(
        self, message: str | None = None, *, code: ErrorCode | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.field = field  # the offending field's path, when one is to blame


class AuthError(BayChatError):
    code = ErrorCode.UNAUTHORIZED
    default_message = "authentication required"


class ForbiddenError(BayChatError):
    code = ErrorCode.FORBIDDEN
    default_message = "not allowed"


class NotFoundError(BayChatError):
    code = ErrorCode.NOT_FOUND
    default_message = "not found"


class ConflictError(BayChatError):
    code = ErrorCode.CONFLICT
    default_message = "already exists"


class RateLimitedError(BayChatError):
    code = ErrorCode.RATE_LIMITED
    default_message = "rate limited"

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(BayChatError):
    code = ErrorCode.UNAVAILABLE
    default_message = "service temporarily unavailable"


class TenantIsolationError(BayChatError):
    """A row belonging to another tenant reached tenant-scoped code. Never recoverable."""

    code = ErrorCode.INTERNAL
    default_message = "internal error"
