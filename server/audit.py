"""Privilege checks that leave a trace, and the audit export.

A privileged action that is refused to an authenticated caller is itself recorded (result
``denied``) before ``ForbiddenError`` is raised. Successful actions are recorded by the
repositories, in the transaction of the action.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Literal, NoReturn

from protocol.errors import ForbiddenError
from server.auth.authority import scope_for
from server.auth.principal import Principal
from storage.auditchain import Actor, AuditEntry, AuditRecord, detail_text
from storage.store import Store

ExportFormat = Literal["jsonl", "csv"]
EXPORT_FIELDS = (
    "seq",
    "id",
    "time",
    "at",
    "tenant_id",
    "actor_kind",
    "actor_id",
    "action",
    "target",
    "ip",
    "result",
    "detail",
    "prev_hash",
    "hash",
)
FREE_PLAN_EXPORT = "audit log export is part of the paid plan; this tenant is on the free plan"


def actor_of(principal: Principal, ip: str) -> Actor:
    return Actor(principal.kind, principal.id, ip[:64])


async def refuse(
    store: Store, principal: Principal, ip: str, action: str, target: str, message: str
) -> NoReturn:
    """Record a refused privileged attempt, then refuse it."""
    await store.audit.record(
        scope_for(principal),
        AuditRecord(actor_of(principal, ip), action, target, result="denied"),
    )
    raise ForbiddenError(message)


async def require_admin(
    store: Store, principal: Principal, ip: str, action: str, target: str
) -> None:
    if not principal.is_admin:
        await refuse(store, principal, ip, action, target, "tenant owners and admins only")


def require_user(principal: Principal) -> None:
    """For endpoints about a person's own account, which agents do not have."""
    if principal.kind != "user":
        raise ForbiddenError("only users have sessions and passwords")


def _row(entry: AuditEntry) -> dict[str, object]:
    return {
        "seq": entry.seq,
        "id": entry.id,
        "time": datetime.fromtimestamp(entry.at / 1000, UTC).isoformat(timespec="milliseconds"),
        "at": entry.at,
        "tenant_id": entry.tenant_id,
        "actor_kind": entry.actor_kind,
        "actor_id": entry.actor_id,
        "action": entry.action,
        "target": entry.target,
        "ip": entry.ip,
        "result": entry.result,
        "detail": dict(entry.detail),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


async def export(
    store: Store, principal: Principal, ip: str, fmt: ExportFormat
) -> AsyncIterator[bytes]:
    """Check the caller may export, record the export, and return the tenant's entries
    (up to and including that record) as JSON lines or CSV, a page at a time."""
    target = f"tenant:{principal.tenant_id}"
    await require_admin(store, principal, ip, "audit.export", target)
    tenant = await store.tenants.get(principal.tenant_id)
    if tenant.plan != "paid":
        await refuse(store, principal, ip, "audit.export", target, FREE_PLAN_EXPORT)
    scope = scope_for(principal)
    marker = await store.audit.record(
        scope, AuditRecord(actor_of(principal, ip), "audit.export", target, detail={"format": fmt})
    )

    async def lines() -> AsyncIterator[bytes]:
        if fmt == "csv":
            yield _csv_line(EXPORT_FIELDS)
        async for entry in store.audit.entries(scope, upto=marker.seq):
            row = _row(entry)
            if fmt == "jsonl":
                yield json.dumps(row, sort_keys=True, separators=(",", ":")).encode() + b"\n"
            else:
                row["detail"] = detail_text(entry.detail)
                yield _csv_line([str(row[name]) for name in EXPORT_FIELDS])

    return lines()


def _csv_line(values: object) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)  # type: ignore[arg-type]
    return buffer.getvalue().encode()
