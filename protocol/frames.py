"""Frame schemas of protocol v1. Every frame is a JSON object with a ``type`` tag.

Client frames are validated strictly: unknown fields, wrong types and out-of-range values are
rejected by the decoder (see ``protocol.codec``). Server frames are plain structs encoded once.
"""

from __future__ import annotations

from typing import Annotated

import msgspec


def whole(pattern: str) -> str:
    """Anchor ``pattern`` to the whole string. Python's ``$`` also matches before a trailing
    newline (so "general\\n" would pass ``^[a-z]+$``); ``(?![\\s\\S])`` means "end of input"
    in Python and in the ECMAScript regexes of JSON Schema alike."""
    return f"^(?:{pattern})(?![\\s\\S])"


# A channel name is part of URLs and Redis keys: keep it to a safe alphabet.
ChannelName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=whole(r"[a-z0-9][a-z0-9_.\-]*"))
]
RequestId = (
    Annotated[str, msgspec.Meta(max_length=64)] | Annotated[int, msgspec.Meta(ge=0, le=2**53)]
)
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
# No control characters: ids are stored as text, and Postgres text cannot hold a NUL.
ClientMsgId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
# Hard ceiling of the schema; the configured (smaller) body limit is enforced by the gateway.
Body = Annotated[str, msgspec.Meta(max_length=1_048_576)]
HistoryLimit = Annotated[int, msgspec.Meta(ge=1, le=200)]

_client = {"tag_field": "type", "forbid_unknown_fields": True, "frozen": True}


class Auth(msgspec.Struct, tag="auth", **_client):
    token: Token
    id: RequestId | None = None


class Subscribe(msgspec.Struct, tag="subscribe", **_client):
    channel: ChannelName
    since: Seq | None = None
    id: RequestId | None = None


class Unsubscribe(msgspec.Struct, tag="unsubscribe", **_client):
    channel: ChannelName
    id: RequestId | None = None


class Publish(msgspec.Struct, tag="publish", **_client):
    channel: ChannelName
    body: Body
    client_msg_id: ClientMsgId | None = None
    id: RequestId | None = None


class History(msgspec.Struct, tag="history", **_client):
    channel: ChannelName
    before: Seq | None = None
    limit: HistoryLimit = 50
    id: RequestId | None = None


class Typing(msgspec.Struct, tag="typing", **_client):
    channel: ChannelName
    id: RequestId | None = None


class Refresh(msgspec.Struct, tag="refresh", **_client):
    token: Token
    id: RequestId | None = None


class Ping(msgspec.Struct, tag="ping", **_client):
    id: RequestId | None = None


ClientFrame = Auth | Subscribe | Unsubscribe | Publish | History | Typing | Refresh | Ping
CLIENT_FRAME_TYPES: tuple[str, ...] = (
    "auth",
    "subscribe",
    "unsubscribe",
    "publish",
    "history",
    "typing",
    "refresh",
    "ping",
)

_server = {"tag_field": "type", "omit_defaults": True}


class Ready(msgspec.Struct, tag="ready", **_server):
    session: str
    user: str
    tenant: str
    expires_at: int  # unix seconds
    id: RequestId | None = None


class Subscribed(msgspec.Struct, tag="subscribed", **_server):
    channel: str
    seq: int
    recovered: bool
    id: RequestId | None = None


class Unsubscribed(msgspec.Struct, tag="unsubscribed", **_server):
    channel: str
    id: RequestId | None = None


class MessageOut(msgspec.Struct, tag="message", **_server):
    channel: str
    seq: int
    message_id: str
    sender: str
    body: str
    sent_at: int  # unix milliseconds


class Ack(msgspec.Struct, tag="ack", **_server):
    message_id: str
    seq: int
    channel: str
    duplicate: bool = False
    id: RequestId | None = None


class HistoryMessage(msgspec.Struct):
    seq: int
    message_id: str
    sender: str
    body: str
    sent_at: int


class HistoryOut(msgspec.Struct, tag="history", **_server):
    channel: str
    messages: list[HistoryMessage]
    id: RequestId | None = None


class Presence(msgspec.Struct, tag="presence", **_server):
    channel: str
    joined: str | None = None
    left: str | None = None


class TypingOut(msgspec.Struct, tag="typing", **_server):
    channel: str
    user: str


class Refreshed(msgspec.Struct, tag="refreshed", **_server):
    expires_at: int
    id: RequestId | None = None


class Expiring(msgspec.Struct, tag="expiring", **_server):
    expires_at: int


class ErrorOut(msgspec.Struct, tag="error", **_server):
    code: str
    message: str
    retry_after: float | None = None
    field: str | None = None  # the offending field's path, for invalid_field
    id: RequestId | None = None


class Pong(msgspec.Struct, tag="pong", **_server):
    id: RequestId | None = None


ServerFrame = (
    Ready
    | Subscribed
    | Unsubscribed
    | MessageOut
    | Ack
    | HistoryOut
    | Presence
    | TypingOut
    | Refreshed
    | Expiring
    | ErrorOut
    | Pong
)
