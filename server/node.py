"""This gateway node: its hub and ack tracker, and the handler the broker calls into."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from protocol.codes import CloseCode
from server.acks import AckTracker
from server.broker.base import Broker, BrokerHandler, ControlEvent
from server.hub import Hub
from storage.models import Message

_log = logging.getLogger("baychat.node")

ControlListener = Callable[[ControlEvent], None]


class Node:
    def __init__(self) -> None:
        self.hub = Hub()
        self.acks = AckTracker()
        self._control_listeners: list[ControlListener] = []

    def add_control_listener(self, listener: ControlListener) -> None:
        self._control_listeners.append(listener)

    # -- BrokerHandler ------------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        self.hub.deliver(message)

    def on_persisted(self, messages: Sequence[Message]) -> None:
        self.acks.persisted(messages)

    def on_ephemeral(self, tenant_id: str, channel_id: str, frame: bytes, origin: str) -> None:
        self.hub.deliver_ephemeral((tenant_id, channel_id), frame, origin)

    def on_control(self, event: ControlEvent) -> None:
        if event.kind == "session_revoked":
            self.close_where(
                lambda c: (
                    c.principal.tenant_id == event.tenant_id
                    and c.principal.session_id == event.subject
                ),
                CloseCode.REVOKED,
                "session revoked",
            )
        elif event.kind == "principal_disabled":
            self.close_where(
                lambda c: (
                    c.principal.tenant_id == event.tenant_id and c.principal.id == event.subject
                ),
                CloseCode.REVOKED,
                "access revoked",
            )
        elif event.kind == "channel_resync":
            # This node missed messages of the channel that the broker cannot replay:
            # its subscribers reconnect and recover them from the store with ``since``.
            self.close_where(
                lambda c: (
                    c.principal.tenant_id == event.tenant_id and event.subject in c.subscriptions
                ),
                CloseCode.TRY_AGAIN,
                "missed messages; resubscribe with since",
            )
        for listener in self._control_listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("control listener failed")

    def close_where(self, predicate: Callable[..., bool], code: CloseCode, reason: str) -> int:
        closed = 0
        for conn in self.hub.connections():
            if predicate(conn):
                conn.close(code, reason)
                closed += 1
        return closed


_handler_check: type[BrokerHandler] = Node


async def shutdown_connections(node: Node, broker: Broker) -> None:
    for conn in node.hub.connections():
        conn.close(CloseCode.GOING_AWAY, "server shutting down")
