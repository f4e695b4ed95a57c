"""Shared plumbing of the operator commands (docs/OPERATIONS.md): each prints one JSON
object on stdout (progress and advice go to stderr) and exits non-zero with a one-line reason
when it refuses or fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from protocol.errors import BayChatError
from server.auth.authority import scope_for_operator
from server.config import Settings
from server.runtime import (
    open_store,
)
from storage.auditchain import OPERATOR, AuditRecord
from storage.backupfile import BackupError
from storage.engine import database_user
from storage.keys import KeyringError
from storage.rewrap import tenant_ids
from storage.snapshot import NotEmptyError, SnapshotError
from storage.store import Store

T = TypeVar("T")
_FAILURES = (BayChatError, KeyringError, BackupError, SnapshotError, NotEmptyError, OSError)
DEFAULT_GRACE_S = 60.0


def emit(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


def note(text: str) -> None:
    click.echo(text, err=True)


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def guard(work: Callable[[], T]) -> T:
    try:
        return work()
    except _FAILURES as exc:
        raise click.ClickException(str(exc)) from None


def with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` with the owner's store (operator commands act on every tenant)."""

    async def main() -> T:
        store = open_store(settings, owner=True)
        await store.open(migrate_schema=True, app_role=database_user(settings.database_url))
        try:
            return await work(store)
        finally:
            await store.close()

    return guard(lambda: asyncio.run(main()))


async def audit_everywhere(store: Store, action: str, target: str, detail: dict[str, Any]) -> None:
    """A deployment-wide key event goes into every live tenant's audit chain: each tenant's
    export shows its keys were rotated on schedule."""
    for tenant_id in await tenant_ids(store.engine):
        await store.audit.record(
            scope_for_operator(tenant_id), AuditRecord(OPERATOR, action, target, detail=detail)
        )


def audit(settings: Settings, action: str, target: str, detail: dict[str, Any]) -> None:
    with_store(settings, lambda store: audit_everywhere(store, action, target, detail))


def grace_period(settings: Settings, grace: float | None) -> float:
    floor = 3 * settings.key_reload_s
    if grace is None:
        return max(DEFAULT_GRACE_S, floor)
    if grace < floor:
        raise click.BadParameter(
            f"at least {floor:g} s (three key reload intervals), so every node has the new"
            " key before any node uses it",
            param_hint="--grace",
        )
    return grace
