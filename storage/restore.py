"""Restore: load a backup into an empty database, then prove the result is the snapshot.

Verification, after loading: every table has the row count of the manifest; every channel's
highest seq is the manifest's (so publishing continues with the next seq, none reused);
every message decrypts, except those of tenants whose key material is gone from the key
store (crypto-shredded: reported, never an error); the database's own tenant isolation is in
place (Postgres: row-level security enabled and forced on every tenant table).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.audit import AuditLog
from storage.backup import Manifest, open_backup
from storage.crypto import MessageCipher
from storage.engine import Engine
from storage.keys import KeyUnavailableError
from storage.migrations import latest_version
from storage.rewrap import tenant_ids
from storage.scope import TenantScope
from storage.snapshot import SnapshotError, SnapshotFacts, Snapshotter, identifier

_PAGE = 1000


@dataclass
class Verification:
    row_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> expected/found
    messages_decrypted: int = 0
    audit_entries_verified: int = 0
    shredded_tenants: dict[str, int] = field(default_factory=dict)  # tenant -> messages
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RestoreReport:
    manifest: Manifest
    verification: Verification
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        v = self.verification
        return {
            "ok": v.ok,
            "backup_created_at": self.manifest.to_doc()["created_at"],
            "schema_version": self.manifest.facts.schema_version,
            "row_counts": v.row_counts,
            "messages_decrypted": v.messages_decrypted,
            "audit_entries_verified": v.audit_entries_verified,
            "shredded_tenants": v.shredded_tenants,
            "problems": v.problems,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }


async def load_backup(
    path: Path, backup_key: bytes, snapshotter: Snapshotter, dialect: str
) -> Manifest:
    """Authenticate ``path`` completely, then load it into the (empty) target."""
    await snapshotter.check_empty()
    with tempfile.TemporaryDirectory(prefix="baychat-restore-") as work:
        payload = Path(work) / "payload"
        manifest = open_backup(path, backup_key, payload)
        if manifest.kind != snapshotter.kind:
            raise SnapshotError(
                f"this backup holds a {manifest.kind}; the target needs a {snapshotter.kind}"
            )
        newest = latest_version(dialect)  # type: ignore[arg-type]
        if manifest.facts.schema_version > newest:
            raise SnapshotError(
                f"the backup is at schema version {manifest.facts.schema_version}; this"
                f" server knows versions up to {newest}: restore with a newer release"
            )
        await snapshotter.load(payload)
    return manifest


async def verify(
    engine: Engine,
    cipher: MessageCipher,
    facts: SnapshotFacts,
    issue_scope: Callable[[str], TenantScope],
) -> Verification:
    """``issue_scope(tenant_id)``: the operator's scope, to read each audit chain."""
    result = Verification()
    tenants = await tenant_ids(engine, include_deleted=True)
    tenant_tables = set(facts.tenant_tables)
    for table, expected in sorted(facts.row_counts.items()):
        found = await _count(engine, identifier(table), tenants if table in tenant_tables else None)
        result.row_counts[table] = {"expected": expected, "found": found}
        if found != expected:
            result.problems.append(f"table {table}: {found} rows, the backup has {expected}")
    heads: dict[str, int] = {}
    for tenant_id in tenants:
        async with engine.transaction("restore_heads", tenant_id=tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT channel_id, MAX(seq) AS head FROM messages WHERE tenant_id = $1"
                " GROUP BY channel_id",
                tenant_id,
            )
        heads.update({str(r["channel_id"]): int(r["head"]) for r in rows})
        await _decrypt_all(engine, cipher, tenant_id, result)
    if "audit_log" in facts.row_counts:
        audit = AuditLog(engine)
        for tenant_id in tenants:
            checked, problem = await audit.verify(issue_scope(tenant_id))
            result.audit_entries_verified += checked
            if problem is not None:
                result.problems.append(f"tenant {tenant_id}: audit chain: {problem.describe()}")
    if heads != facts.channel_heads:
        differing = sorted(set(heads.items()) ^ set(facts.channel_heads.items()))
        result.problems.append(
            f"channel sequence heads differ from the backup's for {len(differing)} channel(s)"
        )
    return result


async def _count(engine: Engine, table: str, tenants: list[str] | None) -> int:
    if tenants is None:
        async with engine.transaction("restore_count") as tx:
            return int(await tx.fetchval(f"SELECT COUNT(*) FROM {table}"))  # noqa: S608 - identifier()
    total = 0
    for tenant_id in tenants:
        async with engine.transaction("restore_count", tenant_id=tenant_id) as tx:
            total += int(
                await tx.fetchval(f"SELECT COUNT(*) FROM {table} WHERE tenant_id = $1", tenant_id)  # noqa: S608
            )
    return total


async def _decrypt_all(
    engine: Engine, cipher: MessageCipher, tenant_id: str, result: Verification
) -> None:
    shredded = not cipher.keystore.has(tenant_id)
    after = ""
    failed = 0
    while True:
        async with engine.transaction("restore_decrypt", tenant_id=tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT id, channel_id, envelope FROM messages WHERE tenant_id = $1 AND id > $2"
                " ORDER BY id LIMIT $3",
                tenant_id,
                after,
                _PAGE,
            )
        if not rows:
            break
        after = str(rows[-1]["id"])
        if shredded:
            result.shredded_tenants[tenant_id] = result.shredded_tenants.get(tenant_id, 0) + len(
                rows
            )
            continue
        for row in rows:
            try:
                cipher.decrypt(tenant_id, row["channel_id"], row["id"], row["envelope"])
                result.messages_decrypted += 1
            except KeyUnavailableError:
                failed += 1
    if shredded and tenant_id not in result.shredded_tenants:
        result.shredded_tenants[tenant_id] = 0
    if failed:
        result.problems.append(f"tenant {tenant_id}: {failed} message(s) fail to decrypt")


def elapsed_since(started: float) -> float:
    return time.monotonic() - started
