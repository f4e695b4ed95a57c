"""Re-encryption of messages written under older master key versions, while the server runs.

The work is a sweep, tenant by tenant and channel by channel, in short batches: read up to
``batch_size`` rows whose ``key_version`` is below the target, decrypt and encrypt them again
under the active version, and write each back only if it is still the row that was read
(``key_version`` unchanged), so a concurrent erasure or a second sweep is never overwritten.
Each batch commits on its own: an interrupted sweep has lost nothing, and running it again
picks up what is left.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from storage.crypto import MessageCipher
from storage.engine import Engine
from storage.keys import KeyUnavailableError

_log = logging.getLogger("baychat.rewrap")


async def tenant_ids(engine: Engine, *, include_deleted: bool = False) -> list[str]:
    """Every (live) tenant's id. The tenants table is the one directory every engine lets
    an operator read without a tenant scope; every sweep goes through it."""
    where = "" if include_deleted else " WHERE deleted_at IS NULL"
    async with engine.transaction("tenant_ids") as tx:
        rows = await tx.fetch(f"SELECT id FROM tenants{where} ORDER BY id")  # noqa: S608
    return [str(row["id"]) for row in rows]


async def key_version_counts(engine: Engine) -> dict[int, int]:
    """How many messages each master key version protects, over all tenants."""
    counts: dict[int, int] = {}
    for tenant_id in await tenant_ids(engine):
        async with engine.transaction("key_version_counts", tenant_id=tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT key_version, COUNT(*) AS n FROM messages WHERE tenant_id = $1"
                " GROUP BY key_version",
                tenant_id,
            )
        for row in rows:
            version = int(row["key_version"])
            counts[version] = counts.get(version, 0) + int(row["n"])
    return dict(sorted(counts.items()))


@dataclass
class RewrapResult:
    target: int
    rewrapped: int = 0
    unreadable: int = 0  # failed to decrypt: left as they are, reported
    shredded_tenants: list[str] = field(default_factory=list)
    by_tenant: dict[str, int] = field(default_factory=dict)


class Rewrap:
    def __init__(self, engine: Engine, cipher: MessageCipher, *, batch_size: int = 500) -> None:
        self._engine = engine
        self._cipher = cipher
        self._batch_size = batch_size

    async def remaining(self, target: int | None = None) -> int:
        target = self._cipher.keyring.active if target is None else target
        counts = await key_version_counts(self._engine)
        return sum(n for version, n in counts.items() if version < target)

    async def run(
        self,
        on_batch: Callable[[int], None] | None = None,
        on_tenant: Callable[[str, int, int], Awaitable[None]] | None = None,
    ) -> RewrapResult:
        """Bring every readable message to the active version; ``on_batch(n)`` after each
        committed batch of ``n`` rows, ``on_tenant(tenant, target, n)`` after each tenant
        that had ``n > 0`` rows rewrapped (the audit entry)."""
        result = RewrapResult(target=self._cipher.keyring.active)
        for tenant_id in await tenant_ids(self._engine):
            if not self._cipher.keystore.has(tenant_id):
                result.shredded_tenants.append(tenant_id)
                continue
            await self._tenant(tenant_id, result, on_batch)
            done = result.by_tenant.get(tenant_id, 0)
            if done and on_tenant is not None:
                await on_tenant(tenant_id, result.target, done)
        return result

    async def _tenant(
        self, tenant_id: str, result: RewrapResult, on_batch: Callable[[int], None] | None
    ) -> None:
        # Channel by channel along the primary key (channel_id, seq): one pass over the
        # tenant's own rows, however many other tenants share the table and however few rows
        # are still old, with no index on key_version for every insert to maintain.
        async with self._engine.transaction("rewrap_channels", tenant_id=tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT id FROM channels WHERE tenant_id = $1 ORDER BY id", tenant_id
            )
        for row in rows:
            await self._channel(tenant_id, str(row["id"]), result, on_batch)

    async def _channel(
        self,
        tenant_id: str,
        channel_id: str,
        result: RewrapResult,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        after = 0
        while True:
            async with self._engine.transaction("rewrap_read", tenant_id=tenant_id) as tx:
                rows = await tx.fetch(
                    "SELECT id, channel_id, seq, key_version, envelope FROM messages"
                    " WHERE tenant_id = $1 AND channel_id = $2 AND seq > $3 AND key_version < $4"
                    " ORDER BY seq LIMIT $5",
                    tenant_id,
                    channel_id,
                    after,
                    result.target,
                    self._batch_size,
                )
            if not rows:
                return
            after = int(rows[-1]["seq"])
            updates: list[tuple[object, ...]] = []
            for row in rows:
                try:
                    body = self._cipher.decrypt(
                        tenant_id, row["channel_id"], row["id"], row["envelope"]
                    )
                except KeyUnavailableError:
                    result.unreadable += 1
                    _log.error(
                        "message cannot be decrypted; left as it is",
                        extra={"tenant_id": tenant_id, "message_id": row["id"]},
                    )
                    continue
                version, envelope = self._cipher.encrypt(
                    tenant_id, row["channel_id"], row["id"], body
                )
                updates.append((version, envelope, tenant_id, row["id"], row["key_version"]))
            async with self._engine.transaction(
                "rewrap_write", tenant_id=tenant_id, write=True
            ) as tx:
                # A row another writer changed meanwhile (an erasure's tombstone) already
                # carries the active version: the compare on key_version leaves it alone.
                await tx.executemany(
                    "UPDATE messages SET key_version = $1, envelope = $2"
                    " WHERE tenant_id = $3 AND id = $4 AND key_version = $5",
                    updates,
                )
            result.rewrapped += len(updates)
            result.by_tenant[tenant_id] = result.by_tenant.get(tenant_id, 0) + len(updates)
            if on_batch is not None:
                on_batch(len(rows))
