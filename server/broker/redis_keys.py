"""Names and encodings of everything the Redis broker keeps in Redis.

Every key that holds tenant data carries the tenant as a hash tag, ``<ns>:{<tenant>}:...``,
so that one tenant's keys live in one Redis Cluster slot and the publish script (which
touches the channel's seq, its window, the idempotency record and the tenant's log stream)
never crosses slots. Pub/sub names are not subject to key prefixes or slots, so they are
namespaced explicitly in the same form. Three names address nodes rather than tenants and
carry no tenant: the control channel (its events name their tenant), each node's
``persisted`` channel, and the directory of tenants that have a log stream.

A message travels as ``<seq>|<json array>``: the seq is added inside the publish script,
which then stores and publishes the very same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import msgspec

from storage.models import Message

GROUP = "persist"  # the consumer group of the persistence workers on every log stream

_encoder = msgspec.json.Encoder()
_MessageFields = tuple[str, str, str, str, str, str, int, str | None]
_decoder = msgspec.json.Decoder(_MessageFields)


def _part(value: str) -> str:
    # A brace would move the hash tag; ids are uuids, but check rather than trust.
    if not value or "{" in value or "}" in value:
        raise ValueError("malformed identifier for a Redis key")
    return value


@dataclass(frozen=True, slots=True)
class Namespace:
    """Every name of one BayChat deployment. ``prefix`` keeps deployments (or test runs)
    that share a Redis apart."""

    prefix: str = "baychat"

    def tenant(self, tenant_id: str) -> TenantKeys:
        return TenantKeys(f"{self.prefix}:{{{_part(tenant_id)}}}")

    @property
    def control(self) -> str:
        """Pub/sub channel of node-to-node control events."""
        return f"{self.prefix}:control"

    @property
    def control_log(self) -> str:
        """Capped stream of recent control events, replayed by a node that reconnects."""
        return f"{self.prefix}:control:log"

    def node(self, node_id: str) -> str:
        """Pub/sub channel on which workers tell a node that its messages are stored."""
        return f"{self.prefix}:node:{_part(node_id)}"

    @property
    def tenants(self) -> str:
        """Set of tenant ids that have a log stream (where the workers look)."""
        return f"{self.prefix}:log:tenants"


@dataclass(frozen=True, slots=True)
class TenantKeys:
    base: str  # "<prefix>:{<tenant id>}"

    @property
    def log(self) -> str:
        """The tenant's persistence log (a stream with the workers' consumer group)."""
        return f"{self.base}:log"

    @property
    def epoch(self) -> str:
        """A token that changes when Redis lost this tenant's state (see ``RedisBroker``)."""
        return f"{self.base}:epoch"

    def seq(self, channel_id: str) -> str:
        return f"{self.base}:seq:{_part(channel_id)}"

    def window(self, channel_id: str) -> str:
        return f"{self.base}:win:{_part(channel_id)}"

    def idem(self, channel_id: str, sender_id: str, client_msg_id: str) -> str:
        return f"{self.base}:idem:{_part(channel_id)}:{_part(sender_id)}:{client_msg_id}"

    def fanout(self, channel_id: str) -> str:
        """Pub/sub channel of the channel's messages and ephemeral frames."""
        return f"{self.base}:ch:{_part(channel_id)}"


class MessageFields(Protocol):
    """What ``encode_fields`` reads: a ``Message``, or the ``Draft`` it is made from."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def channel_id(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def sender_id(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def client_msg_id(self) -> str | None: ...


def encode_fields(fields: MessageFields, message_id: str, sent_at: int) -> bytes:
    """A message without its seq (the publish script prepends it). A draft is encoded
    before the message is made: its id and time are given apart."""
    return _encoder.encode(
        (
            fields.tenant_id,
            fields.channel_id,
            fields.channel,
            message_id,
            fields.sender_id,
            fields.body,
            sent_at,
            fields.client_msg_id,
        )
    )


def encode_line(message: Message) -> bytes:
    return b"%d|" % message.seq + encode_fields(message, message.id, message.sent_at)


def decode_fields(seq: int, data: bytes) -> Message:
    tenant_id, channel_id, channel, message_id, sender_id, body, sent_at, client_msg_id = (
        _decoder.decode(data)
    )
    return Message(
        tenant_id=tenant_id,
        channel_id=channel_id,
        channel=channel,
        seq=seq,
        id=message_id,
        sender_id=sender_id,
        body=body,
        sent_at=sent_at,
        client_msg_id=client_msg_id,
    )


def decode_line(line: bytes) -> Message:
    seq, _, data = line.partition(b"|")
    return decode_fields(int(seq), data)


def encode_lines(messages: list[Message]) -> bytes:
    return _encoder.encode([encode_line(m).decode() for m in messages])


class _Head(msgspec.Struct, array_like=True):
    """The leading fields of an encoded message (the rest of the array is skipped)."""

    tenant_id: str
    channel_id: str
    channel: str
    id: str


_head_decoder = msgspec.json.Decoder(_Head)


def decode_ids(data: bytes) -> list[tuple[str, str]]:
    """``encode_lines``' messages as (message id, line) without decoding the rest of each
    line (``decode_line(line.encode())`` does): a reader that already holds most of the
    messages decodes only the others."""
    return [
        (_head_decoder.decode(line.partition("|")[2]).id, line)
        for line in msgspec.json.decode(data, type=list[str])
    ]
