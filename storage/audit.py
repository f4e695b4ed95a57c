"""The audit log repository: appends inside the caller's transaction, reads per tenant.

Guarantees:

* ``append`` writes in the transaction it is given, so an action and its entry commit or
  roll back together. Repositories whose methods are privileged actions take an ``Actor``
  and call ``append`` themselves; callers cannot forget the entry.
* Appends of one tenant are serialised by the update of that tenant's ``audit_heads`` row
  (a row lock in Postgres; SQLite serialises all writes), so ``seq`` is gap-free and each
  ``prev_hash`` is the previous entry's hash.
* The table is append-only: nothing here updates or deletes entries, and the database
  refuses it (triggers; in Postgres the application role holds only INSERT and SELECT).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from storage.auditchain import (
    GENESIS,
    AuditEntry,
    AuditRecord,
    Head,
    Problem,
    detail_text,
    entry_from_row,
    seal,
    verify,
)
from storage.engine import Engine, Tx
from storage.ids import new_id, now_ms
from storage.scope import TenantScope

PAGE = 500


async def append_entry(tx: Tx, tenant_id: str, record: AuditRecord) -> AuditEntry:
    """Append ``record`` to ``tenant_id``'s chain inside ``tx`` (which must be scoped to
    that tenant). Used directly only where no scope exists yet: a tenant's creation."""
    await tx.execute(
        "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, 0, $2)"
        " ON CONFLICT (tenant_id) DO NOTHING",
        tenant_id,
        GENESIS,
    )
    head = await tx.fetchrow(
        "UPDATE audit_heads SET seq = seq + 1 WHERE tenant_id = $1 RETURNING seq, hash",
        tenant_id,
    )
    assert head is not None
    entry = seal(tenant_id, int(head["seq"]), new_id(), now_ms(), record, head["hash"])
    await tx.execute(
        "INSERT INTO audit_log (tenant_id, seq, id, at, actor_kind, actor_id, action, target,"
        " ip, result, detail, prev_hash, hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        entry.tenant_id,
        entry.seq,
        entry.id,
        entry.at,
        entry.actor_kind,
        entry.actor_id,
        entry.action,
        entry.target,
        entry.ip,
        entry.result,
        detail_text(entry.detail),
        entry.prev_hash,
        entry.hash,
    )
    await tx.execute("UPDATE audit_heads SET hash = $2 WHERE tenant_id = $1", tenant_id, entry.hash)
    return entry


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def append(self, tx: Tx, scope: TenantScope, record: AuditRecord) -> AuditEntry:
        """Append inside the caller's transaction (opened for ``scope``'s tenant)."""
        return await append_entry(tx, scope.tenant_id, record)

    async def record(self, scope: TenantScope, record: AuditRecord) -> AuditEntry:
        """Append in a transaction of its own: for entries that accompany no write (a
        refused attempt, an export)."""
        async with self._engine.transaction(
            "audit_record", tenant_id=scope.tenant_id, write=True
        ) as tx:
            return await append_entry(tx, scope.tenant_id, record)

    async def page(
        self, scope: TenantScope, *, after: int = 0, upto: int | None = None, limit: int = PAGE
    ) -> list[AuditEntry]:
        """Entries with ``after < seq <= upto``, oldest first, at most ``limit``."""
        async with self._engine.transaction("audit_page", tenant_id=scope.tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT * FROM audit_log WHERE tenant_id = $1 AND seq > $2 AND seq <= $3"
                " ORDER BY seq LIMIT $4",
                scope.tenant_id,
                after,
                upto if upto is not None else 2**62,
                limit,
            )
        return [entry_from_row(row) for row in scope.check_all(rows)]

    async def entries(
        self, scope: TenantScope, *, upto: int | None = None
    ) -> AsyncIterator[AuditEntry]:
        """Every entry up to ``upto``, oldest first, read a page at a time."""
        after = 0
        while True:
            batch = await self.page(scope, after=after, upto=upto)
            for entry in batch:
                yield entry
            if len(batch) < PAGE:
                return
            after = batch[-1].seq

    async def head(self, scope: TenantScope) -> Head | None:
        async with self._engine.transaction("audit_head", tenant_id=scope.tenant_id) as tx:
            row = await tx.fetchrow(
                "SELECT tenant_id, seq, hash FROM audit_heads WHERE tenant_id = $1",
                scope.tenant_id,
            )
        if row is None:
            return None
        scope.check(row)
        return Head(int(row["seq"]), row["hash"])

    async def verify(self, scope: TenantScope) -> tuple[int, Problem | None]:
        """Walk the tenant's chain: how many entries were checked, and the first problem."""
        head = await self.head(scope)
        entries = [entry async for entry in self.entries(scope)]
        return verify(entries, head)
