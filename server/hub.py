"""Local fan-out: this node's connections by channel, written once above the broker.

Each message is encoded once and the same bytes are handed to every local subscriber
without awaiting any socket.
"""

from __future__ import annotations

from collections.abc import Iterator

from protocol.codec import encode
from protocol.frames import MessageOut
from server.connection import Connection
from storage.models import Message

ChannelKey = tuple[str, str]  # (tenant id, channel id)


class Hub:
    def __init__(self) -> None:
        self._channels: dict[ChannelKey, dict[str, Connection]] = {}
        self._connections: dict[str, Connection] = {}
        self._per_principal: dict[tuple[str, str], int] = {}
        self.deliveries = 0

    def register(self, conn: Connection) -> None:
        if conn.id not in self._connections:
            key = (conn.principal.tenant_id, conn.principal.id)
            self._per_principal[key] = self._per_principal.get(key, 0) + 1
        self._connections[conn.id] = conn

    def count_of(self, tenant_id: str, principal_id: str) -> int:
        """This node's open connections of one user or agent."""
        return self._per_principal.get((tenant_id, principal_id), 0)

    def unregister(self, conn: Connection) -> list[ChannelKey]:
        """Forget ``conn``; return the channels that now have no local subscriber."""
        if self._connections.pop(conn.id, None) is not None:
            key = (conn.principal.tenant_id, conn.principal.id)
            left = self._per_principal.get(key, 1) - 1
            if left > 0:
                self._per_principal[key] = left
            else:
                self._per_principal.pop(key, None)
        emptied = []
        for channel_id in list(conn.subscriptions):
            key = (conn.principal.tenant_id, channel_id)
            if self.leave(conn, key):
                emptied.append(key)
        return emptied

    def join(self, conn: Connection, key: ChannelKey) -> bool:
        """Add a local subscriber; True if it is the channel's first on this node."""
        members = self._channels.get(key)
        if members is None:
            self._channels[key] = {conn.id: conn}
            return True
        members[conn.id] = conn
        return False

    def leave(self, conn: Connection, key: ChannelKey) -> bool:
        """Remove a local subscriber; True if the channel has none left on this node."""
        members = self._channels.get(key)
        if members is None:
            return False
        members.pop(conn.id, None)
        if not members:
            del self._channels[key]
            return True
        return False

    def deliver(self, message: Message) -> None:
        members = self._channels.get((message.tenant_id, message.channel_id))
        if not members:
            return
        data = encode(
            MessageOut(
                channel=message.channel,
                seq=message.seq,
                message_id=message.id,
                sender=message.sender_id,
                body=message.body,
                sent_at=message.sent_at,
            )
        )
        seq = message.seq
        channel_id = message.channel_id
        for conn in list(members.values()):
            conn.deliver(channel_id, seq, data)
        self.deliveries += len(members)

    def deliver_ephemeral(self, key: ChannelKey, frame: bytes, origin: str) -> None:
        members = self._channels.get(key)
        if not members:
            return
        for conn in list(members.values()):
            if conn.id != origin:
                conn.send(frame)

    def connections(self) -> Iterator[Connection]:
        return iter(list(self._connections.values()))

    def __len__(self) -> int:
        return len(self._connections)
