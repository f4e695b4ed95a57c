"""`baychat backup`, `baychat restore` and `baychat tenant delete` (docs/OPERATIONS.md)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click

from protocol.errors import BayChatError
from server.auth.authority import scope_for_operator
from server.cli_common import (
    emit,
    guard,
    note,
    with_store,
)
from server.config import Settings
from server.keyfiles import (
    backup_key,
    erasure_ledger,
)
from server.runtime import (
    TENANT_DELETED,
    load_keyring,
    make_passwords,
)
from storage.backup import read_manifest, take_backup
from storage.crypto import MessageCipher
from storage.engine import database_user, open_engine
from storage.erasure import Erasure
from storage.ids import now_ms
from storage.keys import TenantKeyStore
from storage.restore import RestoreReport, load_backup, verify
from storage.retention import prune
from storage.snapshot import Snapshotter, snapshotter_for
from storage.store import Store


def _snapshotter_for_source(settings: Settings) -> Snapshotter:
    return snapshotter_for(
        settings.database_owner_url,
        source_url=settings.backup_database_url or settings.database_owner_url,
        app_role=database_user(settings.database_url),
    )


@click.group(invoke_without_command=True)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory for the backup file (default: BAYCHAT_BACKUP_DIR).",
)
@click.pass_context
def backup(ctx: click.Context, out: Path | None) -> None:
    """Write one encrypted backup file of the database (subcommands: prune, verify)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings.from_env()
    directory = out or settings.backups_dir
    started = time.monotonic()

    async def work() -> dict[str, Any]:
        key = backup_key(settings, create=True)
        path = await take_backup(_snapshotter_for_source(settings), directory, key)
        return {
            "file": str(path),
            "bytes": path.stat().st_size,
            "seconds": round(time.monotonic() - started, 3),
        }

    emit(guard(lambda: asyncio.run(work())))


@backup.command("prune")
@click.option(
    "--keep-days",
    type=click.IntRange(min=1),
    default=None,
    help="Retention in days (default: BAYCHAT_BACKUP_KEEP_DAYS, 35).",
)
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None)
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
def backup_prune(keep_days: int | None, directory: Path | None, dry_run: bool) -> None:
    """Delete BayChat backups older than the retention period (never a younger one, never
    the newest, never a file that is not a BayChat backup)."""
    settings = Settings.from_env()
    days = keep_days if keep_days is not None else settings.backup_keep_days
    result = guard(
        lambda: prune(
            directory or settings.backups_dir, keep_days=days, now_ms=now_ms(), dry_run=dry_run
        )
    )
    emit(result.report(days, dry_run))


@backup.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def backup_verify(file: Path) -> None:
    """Authenticate a backup file completely and print its manifest."""
    settings = Settings.from_env()
    manifest = guard(lambda: read_manifest(file, backup_key(settings, create=False)))
    emit(manifest.to_doc())


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--into",
    "into",
    default=None,
    help="Target database URL (default: BAYCHAT_DATABASE_OWNER_URL); must be empty.",
)
@click.option(
    "--app-role", default=None, help="Postgres: the role to grant the application's privileges to."
)
@click.option(
    "--no-reapply-erasures",
    is_flag=True,
    help="Leave erased users and deleted tenants in the restored database.",
)
def restore(file: Path, into: str | None, app_role: str | None, no_reapply_erasures: bool) -> None:
    """Restore a backup into an empty database and verify it."""
    settings = Settings.from_env()
    target = into or settings.database_owner_url
    started = time.monotonic()

    async def work() -> RestoreReport:
        key = backup_key(settings, create=False)
        snapshotter = snapshotter_for(
            target, app_role=app_role or database_user(settings.database_url)
        )
        engine = open_engine(target)
        manifest = await load_backup(file, key, snapshotter, engine.dialect)
        cipher = MessageCipher(load_keyring(settings), TenantKeyStore(settings.keystore_dir))
        await engine.open()
        try:
            verification = await verify(engine, cipher, manifest.facts, scope_for_operator)
            verification.problems.extend(await snapshotter.isolation_problems())
            extra: dict[str, Any] = {"into": _redacted(target)}
            if not no_reapply_erasures:
                erasure = Erasure(engine, cipher, erasure_ledger(settings))
                extra["erasures_reapplied"] = await erasure.reapply(scope_for_operator)
        finally:
            await engine.close()
        return RestoreReport(manifest, verification, time.monotonic() - started, extra)

    report = guard(lambda: asyncio.run(work()))
    emit(report.to_doc())
    if report.verification.shredded_tenants:
        note(
            f"{len(report.verification.shredded_tenants)} tenant(s) have no key material:"
            " their messages cannot be decrypted (deleted tenants, or a key store not restored)"
        )
    if not report.verification.ok:
        raise click.ClickException("restored, but verification found problems (see above)")


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


# -- tenant deletion --------------------------------------------------------------------


@click.command("delete")
@click.argument("slug")
@click.option("--confirm", required=True, help="The tenant's slug again.")
@click.option(
    "--owner-stdin",
    is_flag=True,
    required=True,
    help="Read an owner's email and password (two lines) from stdin.",
)
def tenant_delete(slug: str, confirm: str, owner_stdin: bool) -> None:
    """Delete a tenant for good: destroy its key material (crypto-shredding every copy of
    its messages, backups included), then purge its rows."""
    if confirm != slug:
        raise click.BadParameter("must repeat the tenant's slug exactly", param_hint="--confirm")
    email = sys.stdin.readline().strip().lower()
    password = sys.stdin.readline().rstrip("\r\n")
    settings = Settings.from_env()

    async def work(store: Store) -> dict[str, Any]:
        tenant = await store.tenants.by_slug(slug)
        scope = scope_for_operator(tenant.id)
        try:
            owner = await store.users.by_email(scope, email)
        except BayChatError:
            owner = None
        ok = await make_passwords(settings).verify(owner.password_hash if owner else None, password)
        if not ok or owner is None or owner.role != "owner" or owner.disabled:
            raise click.ClickException("not confirmed: an owner's email and password are needed")
        ledger = erasure_ledger(settings)
        ledger.record("tenant", tenant.id)
        # Key material first: from here on no copy of its messages, in any backup, decrypts.
        store.cipher.keystore.destroy(tenant.id)
        store.cipher.forget_tenant(tenant.id)
        await _announce(settings, tenant.id)
        erasure = Erasure(store.engine, store.cipher, ledger, store.audit)
        deleted = await erasure.purge_tenant(scope)
        return {"deleted": slug, "tenant_id": tenant.id, "rows_deleted": deleted}

    emit(with_store(settings, work))


async def _announce(settings: Settings, tenant_id: str) -> None:
    """Tell every node to forget the tenant's keys and close its sockets, and drop the
    broker's recent windows of the tenant. (An in-process broker reaches no other process
    from here: an embedded server's key reloader notices the destroyed key file within one
    reload interval.)"""
    from server.broker.base import ControlEvent, open_broker
    from server.node import Node

    async def no_seed(tenant: str, channel: str) -> Any:
        raise RuntimeError("the operator's broker connection publishes control events only")

    broker = open_broker(settings.broker_url, no_seed, node_id=f"cli-{now_ms()}")
    await broker.start(Node())
    try:
        await broker.publish_control(ControlEvent(TENANT_DELETED, tenant_id, tenant_id))
        await broker.forget_recent(tenant_id)
    finally:
        await broker.close()
