"""One client connection as the hub sees it: identity, subscriptions, and a transport.

``deliver`` is synchronous and never waits on the socket: the transport queues the bytes
in a bounded buffer and closes the connection as a slow consumer when it overflows.
"""

from __future__ import annotations

from typing import Protocol

from protocol.codes import CloseCode
from server.auth.principal import Principal
from storage.ids import new_hex_id
from storage.models import Channel


class Transport(Protocol):
    def send(self, data: bytes) -> None:
        """Queue ``data`` for the socket without waiting; overflow closes as slow consumer."""
        ...

    def send_coalesced(self, data: bytes) -> None:
        """``send`` for fan-out: may wait a few milliseconds to share a socket write with
        the messages that follow it (``server.transport.COALESCE_S``), never reordered."""
        ...

    def close(self, code: CloseCode, reason: str) -> None:
        """Stop sending queued data and close with ``code`` (idempotent)."""
        ...


class Subscription:
    __slots__ = ("backlog", "backlog_limit", "channel", "last_seq")

    def __init__(self, channel: Channel, backlog_limit: int) -> None:
        self.channel = channel
        self.last_seq = 0
        # Live messages that arrive while the subscription is recovering wait here.
        self.backlog: list[tuple[int, bytes]] | None = []
        self.backlog_limit = backlog_limit


class Connection:
    __slots__ = ("id", "principal", "subscriptions", "transport")

    def __init__(self, transport: Transport, principal: Principal) -> None:
        self.id = new_hex_id()
        self.transport = transport
        self.principal = principal
        self.subscriptions: dict[str, Subscription] = {}

    def send(self, data: bytes) -> None:
        self.transport.send(data)

    def deliver(self, channel_id: str, seq: int, data: bytes) -> None:
        sub = self.subscriptions.get(channel_id)
        if sub is None:
            return
        backlog = sub.backlog
        if backlog is not None:
            if len(backlog) >= sub.backlog_limit:
                self.transport.close(CloseCode.SLOW_CONSUMER, "too far behind while recovering")
                return
            backlog.append((seq, data))
        elif seq > sub.last_seq:
            sub.last_seq = seq
            self.transport.send_coalesced(data)

    def close(self, code: CloseCode, reason: str) -> None:
        self.transport.close(code, reason)
