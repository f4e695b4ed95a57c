"""Request and response bodies of the HTTP API, validated once at the boundary."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocol.frames import ChannelName, ClientMsgId, HistoryLimit, Seq, whole
from server.auth.scopes import PATTERN as SCOPE_PATTERN

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


# Ids are UUIDs; anything outside this alphabet is refused before any lookup.
ObjectId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=whole(r"[A-Za-z0-9-]+"))
]


class SessionPath(msgspec.Struct, **_strict):
    session_id: ObjectId


class UserPath(msgspec.Struct, **_strict):
    user_id: ObjectId


class AgentPath(msgspec.Struct, **_strict):
    agent_id: ObjectId


class AgentTokenPath(msgspec.Struct, **_strict):
    agent_id: ObjectId
    token_id: ObjectId


class AuditExportQuery(msgspec.Struct, **_strict):
    format: Literal["jsonl", "csv"] = "jsonl"


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


# -- publishing over HTTP ---------------------------------------------------------------


class MessagePost(msgspec.Struct, **_strict):
    body: Annotated[str, msgspec.Meta(max_length=1_048_576)]
    client_msg_id: ClientMsgId | None = None


class MessageAck(msgspec.Struct):
    channel: str
    message_id: str
    seq: int
    duplicate: bool


# -- sessions and accounts --------------------------------------------------------------


class SessionOut(msgspec.Struct):
    id: str
    created_at: int
    last_used_at: int
    expires_at: int
    user_agent: str
    ip: str
    current: bool


class SessionList(msgspec.Struct):
    sessions: list[SessionOut]


class RevokedSessions(msgspec.Struct):
    revoked: list[str]


class PasswordChange(msgspec.Struct, **_strict):
    current_password: Password
    new_password: Password


RoleName = Literal["owner", "admin", "member"]


class RoleChange(msgspec.Struct, **_strict):
    role: RoleName


class UserOut(msgspec.Struct):
    id: str
    email: str
    role: str
    disabled: bool
    created_at: int


class UserList(msgspec.Struct):
    users: list[UserOut]


# -- agents -----------------------------------------------------------------------------

AgentName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=whole(r"[A-Za-z0-9][A-Za-z0-9 _.\-]*"))
]
Action = Literal["read", "history", "write", "presence"]


class AgentCreate(msgspec.Struct, **_strict):
    name: AgentName


class AgentOut(msgspec.Struct):
    id: str
    name: str
    disabled: bool
    created_at: int
    created_by: str


class AgentList(msgspec.Struct):
    agents: list[AgentOut]


class ScopeIn(msgspec.Struct, **_strict):
    channel: Annotated[str, msgspec.Meta(pattern=whole(SCOPE_PATTERN[1:-1]))]
    actions: Annotated[list[Action], msgspec.Meta(min_length=1, max_length=4)]


class TokenCreate(msgspec.Struct, **_strict):
    scopes: Annotated[list[ScopeIn], msgspec.Meta(max_length=50)] | None = None
    # One second to ten years.
    expires_in: Annotated[int, msgspec.Meta(ge=1, le=315_360_000)] | None = None


class ScopeOut(msgspec.Struct):
    channel: str
    actions: list[str]


class TokenOut(msgspec.Struct):
    id: str
    agent_id: str
    prefix: str
    last_four: str
    scopes: list[ScopeOut]
    created_at: int
    expires_at: int | None
    revoked: bool


class TokenList(msgspec.Struct):
    tokens: list[TokenOut]


class TokenIssued(msgspec.Struct):
    token: str  # shown once
    details: TokenOut


class KillResult(msgspec.Struct):
    agent_id: str
    disabled: bool
    tokens_revoked: list[str]


class EraseRequest(msgspec.Struct, **_strict):
    password: Password


class EraseResponse(msgspec.Struct):
    erased: bool
    messages_tombstoned: int
    sessions_revoked: int
