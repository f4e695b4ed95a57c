"""Wire vocabulary: WebSocket close codes and error codes, with their documented ranges.

Close codes live in 4000-4999 (the range RFC 6455 leaves to applications):

* 4000-4499: terminal. The client must not reconnect with the same credentials; it needs a
  new token, different input or a human.
* 4500-4999: transient. The client should reconnect with backoff and resubscribe with
  ``since`` to recover what it missed.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    # terminal
    UNAUTHORIZED = 4001
    TOKEN_EXPIRED = 4002
    FORBIDDEN = 4003
    REVOKED = 4004
    BAD_FRAME = 4005
    AUTH_TIMEOUT = 4006
    # transient
    GOING_AWAY = 4500
    SLOW_CONSUMER = 4501
    RATE_LIMITED = 4502
    TRY_AGAIN = 4503

    @property
    def reconnect(self) -> bool:
        """True when a client may reconnect with the same credentials."""
        return self >= 4500


class ErrorCode(StrEnum):
    """Stable error codes carried by ``error`` frames and HTTP error bodies."""

    BAD_FRAME = "bad_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code, not a secret
    FORBIDDEN = "forbidden"
    REVOKED = "revoked"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    NOT_SUBSCRIBED = "not_subscribed"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
