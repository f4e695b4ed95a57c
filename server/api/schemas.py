"""Request and response bodies of the HTTP API, validated once at the boundary."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocol.frames import ChannelName
from server.auth.scopes import PATTERN as SCOPE_PATTERN

Email = Annotated[
    str,
    msgspec.Meta(
        min_length=3, max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"
    ),
]
Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=r"^[^\x00]*$")]
OpaqueToken = Annotated[
    str, msgspec.Meta(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9._~-]+$")
]

_strict = {"forbid_unknown_fields": True}


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


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


# -- publishing over HTTP ---------------------------------------------------------------

ClientMsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


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
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.\-]*$")
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
    channel: Annotated[str, msgspec.Meta(pattern=SCOPE_PATTERN)]
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
