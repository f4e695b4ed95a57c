"""Erasure: a user's right to be forgotten, and the purge of a deleted tenant.

A user's messages are replaced by tombstones rather than deleted: each keeps its channel,
seq, id and time, while its sender becomes ``ERASED`` and its body the empty string
(encrypted like any body). Deleting the rows would leave holes in the per-channel seq that
other members' clients rely on to recover exactly what they missed; a tombstone keeps the
sequence gap-free and tells them the message is gone.

Erasures and tenant deletions are also written to the ``ErasureLedger``, a file in the key
store directory, outside the database: a restore from a backup taken before the erasure
applies them again (``reapply``), so restoring never brings erased people back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import ConflictError, NotFoundError
from storage.audit import AuditLog
from storage.auditchain import OPERATOR, Actor, AuditRecord
from storage.crypto import MessageCipher
from storage.engine import Engine, Tx
from storage.ids import now_ms
from storage.scope import TenantScope

ERASED = "erased"  # the sender of a tombstone; no user has this id
# Children first, so the purge works with or without ON DELETE CASCADE. The audit log and
# its head stay: the chain is append-only, and the tenant row stays as its anchor, renamed
# and marked deleted, with ``tenant.delete`` as the chain's last entry.
TENANT_TABLES = (
    "messages",
    "channel_members",
    "refresh_tokens",
    "sessions",
    "channels",
    "token_directory",
    "agent_tokens",
    "agents",
    "users",
)
_PAGE = 500
RESTORE = Actor("operator", "restore")  # re-applying the erasure ledger after a restore


@dataclass
class UserErasure:
    tenant_id: str
    user_id: str
    messages_tombstoned: int = 0
    sessions_revoked: list[str] = field(default_factory=list)
    memberships_removed: int = 0


class ErasureLedger:
    """Append-only JSON lines: ``{"kind": "user"|"tenant", "tenant_id", "user_id"?, "at"}``.
    Ids only: the ledger itself holds nothing that identifies a person outside BayChat."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, kind: str, tenant_id: str, user_id: str | None = None) -> None:
        entry = {"kind": kind, "tenant_id": tenant_id, "at": now_ms()}
        if user_id is not None:
            entry["user_id"] = user_id
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> Iterator[dict[str, str]]:
        if not self.path.exists():
            return
        with self.path.open() as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


class Erasure:
    def __init__(
        self,
        engine: Engine,
        cipher: MessageCipher,
        ledger: ErasureLedger,
        audit: AuditLog | None = None,
    ) -> None:
        self._engine = engine
        self._cipher = cipher
        self.ledger = ledger
        self._audit = audit or AuditLog(engine)

    async def erase_user(
        self,
        scope: TenantScope,
        user_id: str,
        *,
        actor: Actor,
        keep_an_owner: bool = True,
        record: bool = True,
    ) -> UserErasure:
        """Erase a user in one audited transaction: tombstone their messages, delete their
        sessions (and refresh tokens), memberships and profile, and hand what they created
        to ``ERASED``. The ledger entry is written first: an erasure that fails half-way is
        completed by the next restore rather than forgotten. ``keep_an_owner`` refuses to
        erase a tenant's last owner (ConflictError). The audit entry names the user's id
        only: no email, no address, no content."""
        tenant_id = scope.tenant_id
        result = UserErasure(tenant_id, user_id)
        async with self._audit.action("user_erase", scope) as act:
            tx = act.tx
            user = await tx.fetchrow(
                "SELECT tenant_id, id, role FROM users WHERE tenant_id = $1 AND id = $2",
                tenant_id,
                user_id,
            )
            if user is None:
                raise NotFoundError("no such user")
            scope.check(user)
            if keep_an_owner and user["role"] == "owner":
                others = await tx.fetchval(
                    "SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND role = 'owner'"
                    " AND NOT disabled AND id <> $2",
                    tenant_id,
                    user_id,
                )
                if not others:
                    raise ConflictError(
                        "the last owner of a tenant cannot be erased: make someone else owner,"
                        " or delete the tenant"
                    )
            if record:
                self.ledger.record("user", tenant_id, user_id)
            result.messages_tombstoned = await self._tombstone(tx, tenant_id, user_id)
            sessions = await tx.fetch(
                "SELECT id FROM sessions WHERE tenant_id = $1 AND user_id = $2",
                tenant_id,
                user_id,
            )
            result.sessions_revoked = sorted(str(r["id"]) for r in sessions)
            await tx.execute(
                "DELETE FROM refresh_tokens WHERE tenant_id = $1 AND session_id IN"
                " (SELECT id FROM sessions WHERE tenant_id = $1 AND user_id = $2)",
                tenant_id,
                user_id,
            )
            await tx.execute(
                "DELETE FROM sessions WHERE tenant_id = $1 AND user_id = $2", tenant_id, user_id
            )
            result.memberships_removed = int(
                await tx.fetchval(
                    "SELECT COUNT(*) FROM channel_members WHERE tenant_id = $1 AND user_id = $2",
                    tenant_id,
                    user_id,
                )
            )
            await tx.execute(
                "DELETE FROM channel_members WHERE tenant_id = $1 AND user_id = $2",
                tenant_id,
                user_id,
            )
            for table in ("channels", "agents", "agent_tokens"):
                await tx.execute(
                    f"UPDATE {table} SET created_by = $3"  # noqa: S608 - fixed names
                    " WHERE tenant_id = $1 AND created_by = $2",
                    tenant_id,
                    user_id,
                    ERASED,
                )
            await tx.execute(
                "DELETE FROM users WHERE tenant_id = $1 AND id = $2", tenant_id, user_id
            )
            act.state(
                AuditRecord(
                    Actor(actor.kind, actor.id),  # no address: the entry outlives the person
                    "user.erase",
                    f"user:{user_id}",
                    detail={
                        "messages_tombstoned": result.messages_tombstoned,
                        "sessions_deleted": len(result.sessions_revoked),
                        "memberships_removed": result.memberships_removed,
                    },
                )
            )
        return result

    async def tombstone_messages(self, scope: TenantScope, user_id: str) -> int:
        """Tombstone whatever the user wrote that is not yet a tombstone: the sweep after an
        erasure, for messages that were still on their way to the store."""
        async with self._engine.transaction(
            "user_tombstone", tenant_id=scope.tenant_id, write=True
        ) as tx:
            return await self._tombstone(tx, scope.tenant_id, user_id)

    async def _tombstone(self, tx: Tx, tenant_id: str, user_id: str) -> int:
        total = 0
        while True:
            rows = await tx.fetch(
                "SELECT id, channel_id FROM messages WHERE tenant_id = $1 AND sender_id = $2"
                " LIMIT $3",
                tenant_id,
                user_id,
                _PAGE,
            )
            if not rows:
                return total
            updates = []
            for row in rows:
                version, envelope = self._cipher.encrypt(
                    tenant_id, row["channel_id"], row["id"], b""
                )
                updates.append((ERASED, version, envelope, tenant_id, row["id"]))
            await tx.executemany(
                "UPDATE messages SET sender_id = $1, client_msg_id = NULL, key_version = $2,"
                " envelope = $3 WHERE tenant_id = $4 AND id = $5",
                updates,
            )
            total += len(rows)

    async def purge_tenant(self, scope: TenantScope, *, actor: Actor = OPERATOR) -> dict[str, int]:
        """Delete every row of a tenant (its key material must already be destroyed) and
        close its audit chain with ``tenant.delete``; return the rows deleted per table. The
        tenant row stays, renamed ``deleted-<id>`` and marked deleted, as the chain's anchor."""
        tenant_id = scope.tenant_id
        deleted: dict[str, int] = {}
        async with self._audit.action("tenant_purge", scope) as act:
            tx = act.tx
            for table in TENANT_TABLES:
                deleted[table] = int(
                    await tx.fetchval(
                        f"SELECT COUNT(*) FROM {table} WHERE tenant_id = $1",  # noqa: S608
                        tenant_id,
                    )
                )
                await tx.execute(f"DELETE FROM {table} WHERE tenant_id = $1", tenant_id)  # noqa: S608
            await tx.execute(
                "UPDATE tenants SET slug = $2, deleted_at = $3 WHERE id = $1",
                tenant_id,
                f"deleted-{tenant_id}",
                now_ms(),
            )
            act.state(
                AuditRecord(
                    Actor(actor.kind, actor.id),
                    "tenant.delete",
                    f"tenant:{tenant_id}",
                    detail={"rows_deleted": deleted, "key_material": "destroyed"},
                )
            )
        self._cipher.forget_tenant(tenant_id)
        return deleted

    async def reapply(self, issue_scope: Callable[[str], TenantScope]) -> dict[str, list[str]]:
        """Apply the ledger to a restored database: purge deleted tenants, erase erased users
        still present. ``issue_scope(tenant_id)`` makes the operator's scope."""
        purged: list[str] = []
        erased: list[str] = []
        present = await self._tenants()
        for entry in self.ledger.entries():
            tenant_id = entry["tenant_id"]
            if tenant_id not in present:
                continue
            scope = issue_scope(tenant_id)
            if entry["kind"] == "tenant":
                self._cipher.keystore.destroy(tenant_id)
                await self.purge_tenant(scope, actor=RESTORE)
                present.discard(tenant_id)
                purged.append(tenant_id)
            elif entry["kind"] == "user":
                try:
                    await self.erase_user(
                        scope, entry["user_id"], actor=RESTORE, keep_an_owner=False, record=False
                    )
                except NotFoundError:
                    await self.tombstone_messages(scope, entry["user_id"])
                    continue
                erased.append(entry["user_id"])
        return {"tenants_purged": purged, "users_erased": erased}

    async def _tenants(self) -> set[str]:
        async with self._engine.transaction("erasure_tenants") as tx:
            rows = await tx.fetch("SELECT id FROM tenants WHERE deleted_at IS NULL")
        return {str(r["id"]) for r in rows}
