"""Channels: list, create, add members, read history, publish over HTTP."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from protocol.codes import ErrorCode
from protocol.errors import ForbiddenError, NotFoundError, ProtocolError, UnavailableError
from server.api.http import (
    authenticate,
    client_ip,
    json_response,
    params_of,
    query_of,
    read_body,
    runtime_of,
)
from server.api.schemas import (
    ChannelCreate,
    ChannelList,
    ChannelOut,
    ChannelPath,
    MemberAdd,
    MemberOut,
    MessageAck,
    MessageList,
    MessageOut,
    MessagePost,
    MessagesQuery,
)
from server.audit import actor_of
from server.auth import scopes
from server.auth.authority import scope_for
from storage.models import Channel


def _channel(channel: Channel) -> ChannelOut:
    return ChannelOut(channel.id, channel.name, channel.private, channel.created_at)


async def list_channels(request: Request) -> Response:
    principal = await authenticate(request)
    store = runtime_of(request).store
    channels = await store.channels.visible_to(scope_for(principal), principal.id)
    if principal.kind == "agent":
        grants = principal.scopes or ()
        channels = [c for c in channels if scopes.mentions(grants, c.name, private=c.private)]
    return json_response(ChannelList([_channel(c) for c in channels]))


async def create_channel(request: Request) -> Response:
    principal = await authenticate(request)
    body = await read_body(request, ChannelCreate)
    if principal.kind != "user":
        raise ForbiddenError("only users create channels")
    channel = await runtime_of(request).store.channels.create(
        scope_for(principal), body.name, private=body.private, created_by=principal.id
    )
    return json_response(_channel(channel), 201)


async def add_member(request: Request) -> Response:
    principal = await authenticate(request)
    body = await read_body(request, MemberAdd)
    runtime = runtime_of(request)
    name = params_of(request, ChannelPath).name
    if principal.kind != "user":
        raise ForbiddenError("only users manage channel members")
    # Members of a private channel, and tenant admins, may add people to it.
    try:
        channel = await runtime.chat.channel(principal, name, "read")
    except NotFoundError:
        if not principal.is_admin:
            raise
        channel = await runtime.store.channels.by_name(scope_for(principal), name)
    scope = scope_for(principal)
    user = await runtime.store.users.by_email(scope, body.email.lower())
    added = await runtime.store.channels.add_member(
        scope, channel.id, user.id, actor=actor_of(principal, client_ip(request))
    )
    return json_response(MemberOut(channel.name, user.id, added), 201 if added else 200)


async def list_messages(request: Request) -> Response:
    principal = await authenticate(request)
    runtime = runtime_of(request)
    query = query_of(request, MessagesQuery)
    name = params_of(request, ChannelPath).name
    channel = await runtime.chat.channel(principal, name, "history")
    messages = await runtime.chat.history(principal, channel, query.before, query.limit)
    return json_response(
        MessageList(
            channel.name,
            [MessageOut(m.seq, m.id, m.sender_id, m.body, m.sent_at) for m in messages],
        )
    )


PERSIST_TIMEOUT_S = 10.0


async def post_message(request: Request) -> Response:
    """Publish over HTTP (bots without a socket). Answers once the message is stored, like
    a WebSocket ack; on a timeout the client retries with the same ``client_msg_id``."""
    principal = await authenticate(request)
    body = await read_body(request, MessagePost)
    runtime = runtime_of(request)
    limit = runtime.settings.max_body_bytes
    if len(body.body.encode()) > limit:
        raise ProtocolError(f"body exceeds {limit} bytes", code=ErrorCode.TOO_LARGE)
    channel = await runtime.chat.channel(principal, params_of(request, ChannelPath).name, "write")
    result = await runtime.chat.publish(principal, channel, body.body, body.client_msg_id)
    message = result.message
    if not result.persisted:
        try:
            message = await runtime.node.acks.wait(message.id, PERSIST_TIMEOUT_S)
        except TimeoutError:
            raise UnavailableError(
                "the message is not stored yet; retry with the same client_msg_id"
            ) from None
    return json_response(
        MessageAck(channel.name, message.id, message.seq, result.duplicate),
        200 if result.duplicate else 201,
    )
