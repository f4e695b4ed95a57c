"""Request and response bodies of the HTTP API, validated once at the boundary."""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.frames import ChannelName, HistoryLimit, Seq, whole

# No "@", whitespace or control character in either part. Python's \s and ECMAScript's \s
# (JSON Schema) disagree on a few code points; listing them makes both dialects agree.
_EMAIL_PART = r"[^@\s\x00-\x1f\x7f-\x9f\ufeff]+"
Email = Annotated[
    str, msgspec.Meta(min_length=3, max_length=254, pattern=whole(f"{_EMAIL_PART}@{_EMAIL_PART}"))
]
Slug = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=whole(r"[a-z0-9][a-z0-9-]*"))
]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=whole(r"[^\x00]*"))]
OpaqueToken = Annotated[
    str, msgspec.Meta(min_length=1, max_length=512, pattern=whole(r"[A-Za-z0-9._~-]+"))
]

_strict = {"forbid_unknown_fields": True}


# -- path and query parameters (decoded from strings, so numbers are converted) ----------


class ChannelPath(msgspec.Struct, **_strict):
    name: ChannelName


class MessagesQuery(msgspec.Struct, **_strict):
    before: Seq | None = None
    limit: HistoryLimit = 50


# -- bodies -------------------------------------------------------------------------------


class LoginRequest(msgspec.Struct, **_strict):
    tenant: Slug
    email: Email
    password: Password


class RefreshRequest(msgspec.Struct, **_strict):
    refresh_token: OpaqueToken


class TokenResponse(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret


class ChannelCreate(msgspec.Struct, **_strict):
    name: ChannelName
    private: bool = False


class ChannelOut(msgspec.Struct):
    id: str
    name: str
    private: bool
    created_at: int


class ChannelList(msgspec.Struct):
    channels: list[ChannelOut]


class MemberAdd(msgspec.Struct, **_strict):
    email: Email


class MemberOut(msgspec.Struct):
    channel: str
    user_id: str
    added: bool


class MessageOut(msgspec.Struct):
    seq: int
    message_id: str
    sender: str
    body: str
    sent_at: int


class MessageList(msgspec.Struct):
    channel: str
    messages: list[MessageOut]


class ErrorBody(msgspec.Struct, kw_only=True):
    code: str  # a stable ErrorCode
    message: str  # safe to show; never internals
    correlation_id: str  # the request id: quote it to find the server's log lines
    field: str | None = None  # the offending field, for invalid_field
    retry_after: float | None = None  # seconds, for rate_limited (also in Retry-After)


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    ready: bool
    checks: dict[str, bool]
