"""Request and response bodies of the HTTP API, validated once at the boundary."""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.frames import ChannelName

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
