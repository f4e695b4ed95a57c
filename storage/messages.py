"""Messages: written in batches by the persistence worker, read back decrypted.

Only this module sees envelopes. Writes are idempotent on message id; reads are scoped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from storage.crypto import MessageCipher
from storage.engine import Engine, Row, Tx
from storage.models import Message
from storage.scope import TenantScope

_log = logging.getLogger("baychat.messages")

# The columns a batch insert writes row by row, in row order, with their SQL types (Postgres
# sends each as one typed array). A chunk is one tenant's messages encrypted under one key
# version, so tenant_id and key_version travel once per statement instead (``constants``):
# two arrays fewer to encode and unnest (docs/BENCHMARKS.md, the sixth session).
ROW_COLUMNS = (
    ("channel_id", "text"),
    ("seq", "bigint"),
    ("id", "text"),
    ("sender_id", "text"),
    ("client_msg_id", "text"),
    ("envelope", "bytea"),
    ("sent_at", "bigint"),
)


# Rows encrypted before their insert is sent: small enough that one lane's encryption
# overlaps another lane's insert, large enough that a statement's fixed cost stays small.
_CHUNK = 250
_LANE_ROWS = 2 * _CHUNK


def _constants(tenant_id: str, version: int) -> tuple[tuple[str, str, object], ...]:
    """What one chunk's rows share: one tenant's messages under one key version, which
    travel once per statement."""
    return (("tenant_id", "text", tenant_id), ("key_version", "integer", version))


async def _insert(tx: Tx, tenant_id: str, version: int, rows: list[tuple[object, ...]]) -> None:
    await tx.insert_rows(
        "messages",
        ROW_COLUMNS,
        rows,
        constants=_constants(tenant_id, version),
        skip_duplicates_of="id",
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
        """Encrypt and write a batch. Rows whose id is already stored are skipped, so a batch
        replayed after a crash writes each message exactly once.

        The channels are shared out among the engine's write lanes (one transaction each,
        run concurrently), a channel wholly in one lane, so each channel's messages still
        commit in order and together; the caller acknowledges only after every lane has
        committed. Each lane encrypts its next chunk while its own insert and the other
        lanes' run in the database, so the Python and database work use more than one core.
        A failed lane fails the batch; the lanes that committed are skipped on replay.
        """
        by_channel: dict[str, list[Message]] = {}
        for scope, message in batch:
            if message.tenant_id != scope.tenant_id:
                scope.check({"tenant_id": message.tenant_id})
            by_channel.setdefault(message.channel_id, []).append(message)
        live: dict[str, bool] = {}
        # A lane per _LANE_ROWS rows at most: a small batch (a quiet log, acks waiting on it)
        # is one transaction, not several of a few rows each paying their round trips.
        wanted = -(-len(batch) // _LANE_ROWS)
        lanes: list[list[list[Message]]] = [
            [] for _ in range(max(1, min(self._engine.write_lanes, wanted)))
        ]
        sizes = [0] * len(lanes)
        for messages in sorted(by_channel.values(), key=len, reverse=True):
            tenant_id = messages[0].tenant_id
            if tenant_id not in live:
                live[tenant_id] = self._cipher.keystore.has(tenant_id)
                if not live[tenant_id]:
                    # A deleted tenant (key material destroyed first, rows purged next): its
                    # messages still in flight are dropped, not retried forever.
                    _log.warning(
                        "dropping messages of a deleted tenant", extra={"tenant_id": tenant_id}
                    )
            if live[tenant_id]:
                lane = sizes.index(min(sizes))
                lanes[lane].append(messages)
                sizes[lane] += len(messages)
        busy = [channels for channels in lanes if channels]
        if len(busy) == 1:
            # Every small batch: one lane, awaited here rather than in a task of its own.
            await self._write_lane(busy[0])
            return
        results = await asyncio.gather(
            *(self._write_lane(channels) for channels in busy), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _write_lane(self, channels: list[list[Message]]) -> None:
        chunks: list[tuple[str, list[Message]]] = []
        for tenant_id, group in groupby(
            sorted(channels, key=lambda messages: messages[0].tenant_id),
            key=lambda messages: messages[0].tenant_id,
        ):
            listed = [message for messages in group for message in messages]
            chunks.extend(
                (tenant_id, listed[i : i + _CHUNK]) for i in range(0, len(listed), _CHUNK)
            )
        tenant = chunks[0][0]
        encrypted = self._encrypted_rows(*chunks[0])
        if len(chunks) == 1:
            # A small batch of one tenant (a steady log's, acks waiting on it): nothing to
            # encrypt while it runs, and the engine commits it in one round trip if it can.
            version, rows = encrypted
            await self._engine.insert_committed(
                "messages_insert_batch",
                "messages",
                ROW_COLUMNS,
                rows,
                tenant_id=tenant,
                skip_duplicates_of="id",
                constants=_constants(tenant, version),
            )
            return
        # The first tenant is set as the transaction opens (no round trip of its own).
        async with self._engine.transaction(
            "messages_insert_batch", tenant_id=tenant, write=True
        ) as tx:
            for index, (tenant_id, _) in enumerate(chunks):
                if tenant_id != tenant:
                    await tx.set_tenant(tenant_id)
                    tenant = tenant_id
                insert = asyncio.ensure_future(_insert(tx, tenant_id, *encrypted))
                try:
                    if index + 1 < len(chunks):
                        # Encrypt the next chunk while the database stores this one: let the
                        # insert send its statement first, then do the Python work.
                        await asyncio.sleep(0)
                        encrypted = self._encrypted_rows(*chunks[index + 1])
                finally:
                    # Never leave the statement running on the connection alone: an error
                    # here waits for it before the transaction rolls back.
                    await asyncio.wait([insert])
                    if not insert.cancelled():
                        insert.exception()  # seen here, never logged as unretrieved
                insert.result()

    def _encrypted_rows(
        self, tenant_id: str, messages: list[Message]
    ) -> tuple[int, list[tuple[object, ...]]]:
        """The key version and the ROW_COLUMNS of one tenant's messages, encrypted."""
        version, envelopes = self._cipher.encrypt_many(
            tenant_id, [(m.channel_id, m.id, m.body.encode()) for m in messages]
        )
        return version, [
            (m.channel_id, m.seq, m.id, m.sender_id, m.client_msg_id, envelope, m.sent_at)
            for m, envelope in zip(messages, envelopes, strict=True)
        ]

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
