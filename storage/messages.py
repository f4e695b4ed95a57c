"""Messages: written in batches by the persistence worker, read back decrypted.

Only this module sees envelopes. Writes are idempotent on message id; reads are scoped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from storage.crypto import MessageCipher
from storage.engine import Engine, Row
from storage.models import Message
from storage.scope import TenantScope

_log = logging.getLogger("baychat.messages")

# The columns a batch insert writes, in row order, with their SQL types (Postgres sends each
# column as one typed array).
_COLUMNS = (
    ("tenant_id", "text"),
    ("channel_id", "text"),
    ("seq", "bigint"),
    ("id", "text"),
    ("sender_id", "text"),
    ("client_msg_id", "text"),
    ("key_version", "integer"),
    ("envelope", "bytea"),
    ("sent_at", "bigint"),
)


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    sender_id: str
    client_msg_id: str
    seq: int
    message_id: str
    sent_at: int


class Messages:
    def __init__(self, engine: Engine, cipher: MessageCipher) -> None:
        self._engine = engine
        self._cipher = cipher

    async def insert_batch(self, batch: Sequence[tuple[TenantScope, Message]]) -> None:
        """Encrypt and write a batch in one transaction. Rows whose id is already stored are
        skipped, so a batch replayed after a crash writes each message exactly once."""
        rows_by_tenant: list[tuple[str, list[tuple[object, ...]]]] = []
        ordered = sorted(batch, key=lambda item: item[0].tenant_id)
        for tenant_id, group in groupby(ordered, key=lambda item: item[0].tenant_id):
            if not self._cipher.keystore.has(tenant_id):
                # A deleted tenant (key material destroyed first, rows purged next): its
                # messages still in flight are dropped, not retried forever.
                _log.warning(
                    "dropping messages of a deleted tenant", extra={"tenant_id": tenant_id}
                )
                continue
            rows: list[tuple[object, ...]] = []
            for scope, message in group:
                if message.tenant_id != scope.tenant_id:
                    scope.check({"tenant_id": message.tenant_id})
                version, envelope = self._cipher.encrypt(
                    message.tenant_id, message.channel_id, message.id, message.body.encode()
                )
                rows.append(
                    (
                        message.tenant_id,
                        message.channel_id,
                        message.seq,
                        message.id,
                        message.sender_id,
                        message.client_msg_id,
                        version,
                        envelope,
                        message.sent_at,
                    )
                )
            rows_by_tenant.append((tenant_id, rows))
        async with self._engine.transaction("messages_insert_batch", write=True) as tx:
            for tenant_id, rows in rows_by_tenant:
                await tx.set_tenant(tenant_id)
                await tx.insert_rows("messages", _COLUMNS, rows, skip_duplicates_of="id")

    def _decrypt(self, scope: TenantScope, channel: str, row: Row) -> Message:
        scope.check(row)
        body = self._cipher.decrypt(row["tenant_id"], row["channel_id"], row["id"], row["envelope"])
        return Message(
            tenant_id=row["tenant_id"],
            channel_id=row["channel_id"],
            channel=channel,
            seq=int(row["seq"]),
            id=row["id"],
            sender_id=row["sender_id"],
            body=body.decode(),
            sent_at=int(row["sent_at"]),
            client_msg_id=row["client_msg_id"],
        )

    async def after(
        self, scope: TenantScope, channel_id: str, channel: str, since: int, limit: int
    ) -> list[Message]:
        """Messages with seq > since, oldest first, at most ``limit``."""
        async with self._engine.transaction("messages_after", tenant_id=scope.tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT * FROM messages WHERE tenant_id = $1 AND channel_id = $2 AND seq > $3"
                " ORDER BY seq LIMIT $4",
                scope.tenant_id,
                channel_id,
                since,
                limit,
            )
        return [self._decrypt(scope, channel, row) for row in rows]

    async def before(
        self, scope: TenantScope, channel_id: str, channel: str, before: int | None, limit: int
    ) -> list[Message]:
        """Messages with seq < before (or the newest), newest first, at most ``limit``."""
        async with self._engine.transaction("messages_before", tenant_id=scope.tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT * FROM messages WHERE tenant_id = $1 AND channel_id = $2 AND seq < $3"
                " ORDER BY seq DESC LIMIT $4",
                scope.tenant_id,
                channel_id,
                before if before is not None else 2**62,
                limit,
            )
        return [self._decrypt(scope, channel, row) for row in rows]

    async def last_seq(self, scope: TenantScope, channel_id: str) -> int:
        async with self._engine.transaction("messages_last_seq", tenant_id=scope.tenant_id) as tx:
            value = await tx.fetchval(
                "SELECT MAX(seq) FROM messages WHERE tenant_id = $1 AND channel_id = $2",
                scope.tenant_id,
                channel_id,
            )
        return int(value or 0)

    async def recent_client_ids(
        self, scope: TenantScope, channel_id: str, limit: int
    ) -> list[IdempotencyRecord]:
        """The idempotency keys of the newest ``limit`` messages of a channel."""
        async with self._engine.transaction(
            "messages_recent_client_ids", tenant_id=scope.tenant_id
        ) as tx:
            rows = await tx.fetch(
                "SELECT tenant_id, sender_id, client_msg_id, seq, id, sent_at FROM messages"
                " WHERE tenant_id = $1 AND channel_id = $2 AND client_msg_id IS NOT NULL"
                " ORDER BY seq DESC LIMIT $3",
                scope.tenant_id,
                channel_id,
                limit,
            )
        return [
            IdempotencyRecord(
                r["sender_id"], r["client_msg_id"], int(r["seq"]), r["id"], int(r["sent_at"])
            )
            for r in scope.check_all(rows)
        ]
