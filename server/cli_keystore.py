"""`baychat keys backup [prune|verify]` and `baychat keys restore`: the tenant key store's
own backups (docs/OPERATIONS.md, "The key store's own backup").

Backing up, pruning and verifying change no key and no tenant's data, so, like
`baychat backup`, they write no audit entry (their JSON output is the scheduler's record),
and they need no database: the scheduled job runs with the key store mounted read-only and
no database credentials. A restore puts key material back, so it is audited: a
`keys.restore` entry in the chain of every restored tenant that is live in the database,
when there is one. It never creates or migrates a database (a full recovery restores the
key store first, then `baychat restore` into an empty database).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from server.auth.authority import scope_for_operator
from server.cli_common import emit, guard, iso, note
from server.config import Settings
from server.keyfiles import backup_key
from storage.audit import AuditLog
from storage.auditchain import OPERATOR, AuditRecord
from storage.engine import Engine, open_engine
from storage.ids import now_ms
from storage.keybackup import (
    KEYSTORE,
    KeystoreCopy,
    RestorePlan,
    check_empty,
    open_keystore_backup,
    plan_restore,
    take_keystore_backup,
    write_keystore,
)
from storage.migrations import current_version
from storage.retention import prune


@click.group("backup", invoke_without_command=True)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the file (default: BAYCHAT_KEYSTORE_BACKUP_DIR).",
)
@click.pass_context
def keys_backup(ctx: click.Context, out: Path | None) -> None:
    """Write one encrypted backup file of the tenant key store: every tenant secret and the
    erasure ledger (subcommands: prune, verify)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings.from_env()
    directory = out or settings.keystore_backups_dir

    def work() -> dict[str, Any]:
        key = backup_key(settings, create=True)
        path, manifest, ignored = take_keystore_backup(settings.keystore_dir, directory, key)
        return {
            "file": str(path),
            "bytes": path.stat().st_size,
            "created_at": iso(manifest.created_at_ms / 1000),
            "tenants": len(manifest.tenant_ids),
            "ledger_entries": manifest.ledger.entries,
            "ignored": ignored,
        }

    doc = guard(work)
    if doc["ignored"]:
        note(
            f"left out {len(doc['ignored'])} entr(ies) of the key store that are neither a"
            f" tenant secret nor the erasure ledger: {', '.join(doc['ignored'])}"
        )
    emit(doc)


@keys_backup.command("prune")
@click.option(
    "--keep-days",
    type=click.IntRange(min=1),
    default=None,
    help="Retention in days (default: BAYCHAT_KEYSTORE_BACKUP_KEEP_DAYS, 35).",
)
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None)
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
def keys_backup_prune(keep_days: int | None, directory: Path | None, dry_run: bool) -> None:
    """Delete key-store backups older than the retention period (never a younger one, never
    the newest, never a file that is not a key-store backup)."""
    settings = Settings.from_env()
    days = keep_days if keep_days is not None else settings.keystore_backup_keep_days
    result = guard(
        lambda: prune(
            directory or settings.keystore_backups_dir,
            keep_days=days,
            now_ms=now_ms(),
            dry_run=dry_run,
            family=KEYSTORE,
        )
    )
    emit(result.report(days, dry_run))


@keys_backup.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def keys_backup_verify(file: Path) -> None:
    """Authenticate a key-store backup completely, check every file in it against its
    checksum, and print its manifest."""
    settings = Settings.from_env()
    copy = guard(lambda: open_keystore_backup(file, backup_key(settings, create=False)))
    emit(copy.manifest.to_doc())


@dataclass
class _Database:
    """What the configured database says about tenants (None when it has no schema yet)."""

    engine: Engine
    live: set[str] = field(default_factory=set)
    deleted: dict[str, int] = field(default_factory=dict)


async def _read_tenants(engine: Engine) -> _Database | None:
    if await current_version(engine) == 0:
        return None
    found = _Database(engine)
    async with engine.transaction("keystore_restore_tenants") as tx:
        rows = await tx.fetch("SELECT id, deleted_at FROM tenants")
    for row in rows:
        if row["deleted_at"] is None:
            found.live.add(str(row["id"]))
        else:
            found.deleted[str(row["id"])] = int(row["deleted_at"])
    return found


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--into",
    "into",
    type=click.Path(path_type=Path),
    default=None,
    help="Target key store directory (default: BAYCHAT_KEYSTORE_DIR); missing or empty.",
)
@click.option(
    "--ledger",
    "ledger",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The current erasure ledger (erasures.jsonl of the key store being replaced):"
    " tenants it records as deleted do not get their secrets back.",
)
@click.option(
    "--no-database",
    is_flag=True,
    help="Do not read the database (BAYCHAT_DATABASE_OWNER_URL) for deleted tenants, and"
    " write no audit entry: for when it cannot be reached.",
)
def keys_restore(file: Path, into: Path | None, ledger: Path | None, no_database: bool) -> None:
    """Restore a key-store backup into an empty key store directory."""
    settings = Settings.from_env()
    target = into or settings.keystore_dir
    guard(lambda: check_empty(target))
    copy = guard(lambda: open_keystore_backup(file, backup_key(settings, create=False)))
    current = guard(lambda: ledger.read_bytes()) if ledger is not None else b""
    doc = asyncio.run(_restore(settings, file, copy, current, target, no_database))
    if doc["skipped_deleted_tenants"]:
        note(
            f"{len(doc['skipped_deleted_tenants'])} tenant(s) in this backup were deleted"
            " (erasure ledger or database): their secrets were not restored"
        )
    if doc["tenants_without_secret"]:
        note(
            f"{len(doc['tenants_without_secret'])} live tenant(s) have no secret in this"
            " backup (created after it was taken): their messages cannot be decrypted"
        )
    emit(doc)
    if doc["audit"].get("error"):
        raise click.ClickException(
            "restored, but the audit entries could not be written: " + doc["audit"]["error"]
        )


async def _restore(
    settings: Settings,
    file: Path,
    copy: KeystoreCopy,
    current_ledger: bytes,
    target: Path,
    no_database: bool,
) -> dict[str, Any]:
    engine = None if no_database else open_engine(settings.database_owner_url)
    try:
        database: _Database | None = None
        if engine is not None:
            try:
                await engine.open()
                database = await _read_tenants(engine)
            except Exception as exc:  # any failure to read it: say so, stop
                raise click.ClickException(
                    "cannot read the database to check for deleted tenants"
                    f" ({type(exc).__name__}: {exc}); start it, or pass --no-database"
                    " (then only the erasure ledgers are consulted and nothing is audited)"
                ) from None
        plan = plan_restore(
            copy,
            current_ledger=current_ledger,
            deleted_in_database=database.deleted if database else None,
        )
        guard(lambda: write_keystore(target, plan))
        audit = await _audit(database, plan, copy, file)
    finally:
        if engine is not None:
            await engine.close()
    return {
        "file": str(file),
        "into": str(target),
        "backup_created_at": iso(copy.manifest.created_at_ms / 1000),
        "restored_tenants": len(plan.secrets),
        "skipped_deleted_tenants": plan.skipped_deleted,
        "ledger_entries": sum(1 for line in plan.ledger.splitlines() if line.strip()),
        "database": "skipped" if no_database else ("read" if database else "none yet"),
        "tenants_without_secret": sorted(database.live - set(plan.secrets)) if database else [],
        "audit": audit,
    }


async def _audit(
    database: _Database | None, plan: RestorePlan, copy: KeystoreCopy, file: Path
) -> dict[str, Any]:
    if database is None:
        return {"tenants": 0, "note": "no database: nothing audited"}
    log = AuditLog(database.engine)
    restored = sorted(database.live & set(plan.secrets))
    detail = {
        "backup_created_at": iso(copy.manifest.created_at_ms / 1000),
        "file": file.name,
    }
    done = 0
    try:
        for tenant_id in restored:
            await log.record(
                scope_for_operator(tenant_id),
                AuditRecord(OPERATOR, "keys.restore", "keystore", detail=detail),
            )
            done += 1
    except Exception as exc:  # the key store is restored: report it
        return {"tenants": done, "error": f"{type(exc).__name__}: {exc}"}
    return {"tenants": done}
