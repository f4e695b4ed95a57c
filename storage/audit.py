"""The audit log repository: privileged actions as audited transactions, and reads.

Guarantees:

* ``action`` is a unit of work: one write transaction that first takes the tenant's chain
  head (a row lock in Postgres; SQLite serialises all writes), then runs the action, then
  appends the entry the action stated. The action and its entry commit or roll back
  together. Privileged repository methods run inside ``action`` and take the acting
  ``Actor``: callers cannot forget the entry.
* Taking the head first serialises one tenant's privileged actions, so ``seq`` is
  gap-free, each ``prev_hash`` is the previous entry's hash, invariants such as "a tenant
  keeps an owner" cannot race, and two audited actions never wait on each other's rows.
* The table is append-only: nothing here updates or deletes entries, and the database
  refuses it (triggers; in Postgres the application role holds only INSERT and SELECT).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


async def take_head(tx: Tx, tenant_id: str) -> Head:
    """Lock ``tenant_id``'s chain head for the rest of ``tx`` and return it."""
    await tx.execute(
        "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, 0, $2)"
        " ON CONFLICT (tenant_id) DO NOTHING",
        tenant_id,
        GENESIS,
    )
    # A no-op update: it takes the row lock that serialises this tenant's appends.
    row = await tx.fetchrow(
        "UPDATE audit_heads SET seq = seq WHERE tenant_id = $1 RETURNING seq, hash", tenant_id
    )
    assert row is not None
    return Head(int(row["seq"]), row["hash"])


async def write_entry(tx: Tx, tenant_id: str, head: Head, record: AuditRecord) -> AuditEntry:
    """Append ``record`` after ``head`` (taken in this ``tx``) and move the head."""
    entry = seal(tenant_id, head.seq + 1, new_id(), now_ms(), record, head.hash)
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
    await tx.execute(
        "UPDATE audit_heads SET seq = $2, hash = $3 WHERE tenant_id = $1",
        tenant_id,
        entry.seq,
        entry.hash,
    )
    return entry


async def append_entry(tx: Tx, tenant_id: str, record: AuditRecord) -> AuditEntry:
    """Take the head and append in one step, inside ``tx`` (scoped to ``tenant_id``)."""
    return await write_entry(tx, tenant_id, await take_head(tx, tenant_id), record)


class Audited:
    """The body of an audited action: its transaction, and the entry it states."""

    __slots__ = ("record", "settled", "tx")

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self.record: AuditRecord | None = None
        self.settled = False

    def state(self, record: AuditRecord) -> None:
        """What this action did; appended when the body ends."""
        self.record, self.settled = record, True

    def nothing_changed(self) -> None:
        """The action found nothing to do (already revoked, already a member): no entry."""
        self.record, self.settled = None, True


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def action(self, name: str, scope: TenantScope) -> AsyncIterator[Audited]:
        """A privileged action of ``scope``'s tenant as one audited write transaction. The
        body must ``state`` its entry (or declare ``nothing_changed``)."""
        async with self._engine.transaction(name, tenant_id=scope.tenant_id, write=True) as tx:
            head = await take_head(tx, scope.tenant_id)
            audited = Audited(tx)
            yield audited
            if not audited.settled:
                raise RuntimeError(f"audited action {name} stated no audit entry")
            if audited.record is not None:
                await write_entry(tx, scope.tenant_id, head, audited.record)

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
