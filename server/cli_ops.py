"""Operator commands: keys, backups, restore, tenant deletion (docs/OPERATIONS.md).

Each prints one JSON object on stdout (progress and advice go to stderr) and exits non-zero
with a one-line reason when it refuses or fails.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from protocol.errors import BayChatError
from server.auth.authority import scope_for_operator
from server.config import Settings
from server.keyfiles import (
    backup_key,
    editing_jwt_keys,
    editing_master_keys,
    erasure_ledger,
    save_jwt_keys,
    save_master_keys,
)
from server.runtime import (
    TENANT_DELETED,
    load_keyring,
    load_signing_keys,
    make_passwords,
    open_store,
)
from storage.auditchain import OPERATOR, AuditRecord
from storage.backup import PREFIX, SUFFIX, read_manifest, take_backup
from storage.backupfile import BackupError
from storage.crypto import MessageCipher
from storage.engine import database_user, open_engine
from storage.erasure import Erasure
from storage.ids import now_ms
from storage.keys import KeyringError, TenantKeyStore
from storage.restore import RestoreReport, load_backup, verify
from storage.retention import prune
from storage.rewrap import Rewrap, key_version_counts, tenant_ids
from storage.snapshot import NotEmptyError, SnapshotError, Snapshotter, snapshotter_for
from storage.store import Store

T = TypeVar("T")
_FAILURES = (BayChatError, KeyringError, BackupError, SnapshotError, NotEmptyError, OSError)
DEFAULT_GRACE_S = 60.0


def _emit(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


def _note(text: str) -> None:
    click.echo(text, err=True)


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def _guard(work: Callable[[], T]) -> T:
    try:
        return work()
    except _FAILURES as exc:
        raise click.ClickException(str(exc)) from None


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` with the owner's store (operator commands act on every tenant)."""

    async def main() -> T:
        store = open_store(settings, owner=True)
        await store.open(migrate_schema=True, app_role=database_user(settings.database_url))
        try:
            return await work(store)
        finally:
            await store.close()

    return _guard(lambda: asyncio.run(main()))


async def _audit_everywhere(store: Store, action: str, target: str, detail: dict[str, Any]) -> None:
    """A deployment-wide key event goes into every live tenant's audit chain: each tenant's
    export shows its keys were rotated on schedule."""
    for tenant_id in await tenant_ids(store.engine):
        await store.audit.record(
            scope_for_operator(tenant_id), AuditRecord(OPERATOR, action, target, detail=detail)
        )


def _audit(settings: Settings, action: str, target: str, detail: dict[str, Any]) -> None:
    _with_store(settings, lambda store: _audit_everywhere(store, action, target, detail))


def _grace(settings: Settings, grace: float | None) -> float:
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


# -- keys -------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Master keys and JWT signing keys: status, rotation, re-encryption, retirement."""


@keys.command("status")
def keys_status() -> None:
    """How many messages each master key version protects; which JWT key signs."""
    settings = Settings.from_env()
    ring = _guard(lambda: load_keyring(settings))
    jwt = _guard(lambda: load_signing_keys(settings))
    counts = _with_store(settings, lambda store: key_version_counts(store.engine))
    versions = sorted(set(ring.keys) | set(counts))
    now = time.time()
    _emit(
        {
            "master_keys": {
                "source": "env" if settings.master_keys else "file",
                "active": ring.active,
                "pending": None
                if ring.pending is None or ring.active == ring.pending.version
                else {"version": ring.pending.version, "activates_at": _iso(ring.pending.at)},
                "versions": {
                    str(v): {"loaded": v in ring.keys, "messages": counts.get(v, 0)}
                    for v in versions
                },
                "messages_to_rewrap": sum(n for v, n in counts.items() if v < ring.active),
            },
            "jwt_keys": {
                "source": "env" if settings.jwt_keys else "file",
                "signing": jwt.current(),
                "pending": None
                if jwt.pending is None or jwt.current() == jwt.pending
                else {"kid": jwt.pending, "signs_from": _iso(jwt.pending_at)},
                "keys": {
                    kid: {
                        "retirable_at": None
                        if kid in (jwt.current(), jwt.pending) or kid not in jwt.stopped
                        else _iso(max(now, jwt.stopped[kid] + settings.access_ttl_s + 60)),
                    }
                    for kid in sorted(jwt.keys)
                },
            },
        }
    )


@keys.command("rotate")
@click.option("--grace", type=float, default=None, help="Seconds until the new version is used.")
def keys_rotate(grace: float | None) -> None:
    """Add a new master key version; it becomes active after --grace seconds."""
    settings = Settings.from_env()
    grace_s = _grace(settings, grace)
    if settings.master_keys:
        ring = _guard(lambda: load_keyring(settings).rotated(grace_s=grace_s))
        assert ring.pending is not None
        _audit(settings, "keys.rotate", f"master-key:v{ring.pending.version}", {"source": "env"})
        _note(
            "The master keys come from the environment. Deploy this value of"
            " BAYCHAT_MASTER_KEYS to every node before the activation time, then run"
            " `baychat keys rewrap`."
        )
        _emit(
            {
                "version": ring.pending.version,
                "activates_at": _iso(ring.pending.at),
                "BAYCHAT_MASTER_KEYS": ring.to_env(),
            }
        )
        return

    def work() -> dict[str, Any]:
        with editing_master_keys(settings) as current:
            ring = current.rotated(grace_s=grace_s)
            save_master_keys(settings, ring)
        assert ring.pending is not None
        return {"version": ring.pending.version, "activates_at": _iso(ring.pending.at)}

    doc = _guard(work)
    _audit(settings, "keys.rotate", f"master-key:v{doc['version']}", {"source": "file"})
    _note(f"Running servers load it within {settings.key_reload_s:g} s (or at once on SIGHUP).")
    _emit(doc)


@keys.command("rewrap")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True)
def keys_rewrap(batch: int) -> None:
    """Re-encrypt messages under the active master key version (resumable, online)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    settings = Settings.from_env()

    async def work(store: Store) -> dict[str, Any]:
        ring = store.cipher.keyring
        if ring.pending is not None and ring.active != ring.pending.version:
            _note(
                f"version {ring.pending.version} becomes active at {_iso(ring.pending.at)};"
                f" rewrapping to version {ring.active} now, run again after that"
            )
        rewrap = Rewrap(store.engine, store.cipher, batch_size=batch)

        async def audit_rewrap(tenant_id: str, version: int, count: int) -> None:
            await store.audit.record(
                scope_for_operator(tenant_id),
                AuditRecord(
                    OPERATOR, "keys.rewrap", f"master-key:v{version}", detail={"messages": count}
                ),
            )

        total = await rewrap.remaining()
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task(f"rewrap to v{ring.active}", total=total)
            result = await rewrap.run(lambda n: progress.advance(task, n), audit_rewrap)
        return {
            "target_version": result.target,
            "rewrapped": result.rewrapped,
            "unreadable": result.unreadable,
            "skipped_shredded_tenants": result.shredded_tenants,
            "remaining": await rewrap.remaining(result.target),
        }

    doc = _with_store(settings, work)
    _emit(doc)
    if doc["unreadable"]:
        raise click.ClickException(f"{doc['unreadable']} message(s) could not be decrypted")


def _versions_in_backups(settings: Settings) -> tuple[dict[int, list[str]], list[str]]:
    """Master key versions that retained backups still need, and backups not readable."""
    needed: dict[int, list[str]] = {}
    unreadable: list[str] = []
    directory = settings.backups_dir
    if not directory.is_dir():
        return needed, unreadable
    key = backup_key(settings, create=False)
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}")):
        try:
            manifest = read_manifest(path, key)
        except BackupError:
            unreadable.append(path.name)
            continue
        for version, count in manifest.facts.key_versions.items():
            if count:
                needed.setdefault(version, []).append(path.name)
    return needed, unreadable


@keys.command("retire")
@click.argument("version", type=int)
@click.option(
    "--ignore-backups",
    is_flag=True,
    help="Retire even though retained backups need it (their messages become unreadable).",
)
def keys_retire(version: int, ignore_backups: bool) -> None:
    """Remove a master key version nothing uses any more."""
    settings = Settings.from_env()
    counts = _with_store(settings, lambda store: key_version_counts(store.engine))
    if counts.get(version):
        raise click.ClickException(
            f"{counts[version]} message(s) still use version {version}: run"
            " `baychat keys rewrap` first"
        )
    if not ignore_backups:
        needed, unreadable = _guard(lambda: _versions_in_backups(settings))
        if version in needed:
            raise click.ClickException(
                f"{len(needed[version])} retained backup(s) hold messages under version"
                f" {version} (newest: {needed[version][-1]}); retire it after they are pruned"
            )
        if unreadable:
            _note(f"warning: could not read {len(unreadable)} backup(s): {', '.join(unreadable)}")
    if settings.master_keys:
        ring = _guard(lambda: load_keyring(settings).without(version))
        _audit(settings, "keys.retire", f"master-key:v{version}", {"source": "env"})
        _note("Deploy this value of BAYCHAT_MASTER_KEYS to every node.")
        _emit({"retired": version, "BAYCHAT_MASTER_KEYS": ring.to_env()})
        return

    def work() -> None:
        with editing_master_keys(settings) as current:
            save_master_keys(settings, current.without(version))

    _guard(work)
    _audit(settings, "keys.retire", f"master-key:v{version}", {"source": "file"})
    _emit({"retired": version})


@keys.command("rotate-jwt")
@click.option("--grace", type=float, default=None, help="Seconds until the new key signs.")
def keys_rotate_jwt(grace: float | None) -> None:
    """Add a new JWT signing key; it signs after --grace seconds, the old one keeps
    verifying until it is retired."""
    settings = Settings.from_env()
    grace_s = _grace(settings, grace)
    if settings.jwt_keys:
        new = _guard(lambda: load_signing_keys(settings).rotated(grace_s=grace_s))
        _audit(settings, "keys.rotate_jwt", f"jwt-key:{new.pending}", {"source": "env"})
        _note("The JWT keys come from the environment. Deploy this BAYCHAT_JWT_KEYS to every node.")
        _emit(
            {
                "kid": new.pending,
                "signs_from": _iso(new.pending_at),
                "BAYCHAT_JWT_KEYS": new.to_json().decode(),
            }
        )
        return

    def work() -> dict[str, Any]:
        with editing_jwt_keys(settings) as current:
            new = current.rotated(grace_s=grace_s)
            save_jwt_keys(settings, new)
        return {
            "kid": new.pending,
            "signs_from": _iso(new.pending_at),
            "previous": new.active,
            "previous_retirable_at": _iso(new.pending_at + settings.access_ttl_s + 60),
        }

    doc = _guard(work)
    _audit(settings, "keys.rotate_jwt", f"jwt-key:{doc['kid']}", {"source": "file"})
    _emit(doc)


@keys.command("retire-jwt")
@click.argument("kid")
def keys_retire_jwt(kid: str) -> None:
    """Remove a JWT key once every token it signed has expired."""
    settings = Settings.from_env()
    if settings.jwt_keys:
        new = _guard(
            lambda: load_signing_keys(settings).without(kid, access_ttl_s=settings.access_ttl_s)
        )
        _audit(settings, "keys.retire_jwt", f"jwt-key:{kid}", {"source": "env"})
        _note("Deploy this BAYCHAT_JWT_KEYS to every node.")
        _emit({"retired": kid, "BAYCHAT_JWT_KEYS": new.to_json().decode()})
        return

    def work() -> None:
        with editing_jwt_keys(settings) as current:
            save_jwt_keys(settings, current.without(kid, access_ttl_s=settings.access_ttl_s))

    _guard(work)
    _audit(settings, "keys.retire_jwt", f"jwt-key:{kid}", {"source": "file"})
    _emit({"retired": kid})


# -- backups ----------------------------------------------------------------------------


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

    _emit(_guard(lambda: asyncio.run(work())))


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
    result = _guard(
        lambda: prune(
            directory or settings.backups_dir, keep_days=days, now_ms=now_ms(), dry_run=dry_run
        )
    )
    _emit(
        {
            "keep_days": days,
            "dry_run": dry_run,
            "deleted": [p.name for p in result.deleted],
            "kept": [p.name for p in result.kept],
            "ignored": [p.name for p in result.ignored],
        }
    )


@backup.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def backup_verify(file: Path) -> None:
    """Authenticate a backup file completely and print its manifest."""
    settings = Settings.from_env()
    manifest = _guard(lambda: read_manifest(file, backup_key(settings, create=False)))
    _emit(manifest.to_doc())


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

    report = _guard(lambda: asyncio.run(work()))
    _emit(report.to_doc())
    if report.verification.shredded_tenants:
        _note(
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

    _emit(_with_store(settings, work))


async def _announce(settings: Settings, tenant_id: str) -> None:
    """Tell every node to forget the tenant's keys and close its sockets. With the in-process
    broker there is nobody to tell from here: the server's key reloader notices the destroyed
    key file within one reload interval."""
    if settings.broker_url.startswith("memory:"):
        return
    from server.broker.base import ControlEvent, open_broker
    from server.node import Node

    async def no_seed(tenant: str, channel: str) -> Any:
        raise RuntimeError("the operator's broker connection publishes control events only")

    broker = open_broker(settings.broker_url, no_seed, node_id=f"cli-{now_ms()}")
    await broker.start(Node())
    try:
        await broker.publish_control(ControlEvent(TENANT_DELETED, tenant_id, tenant_id))
    finally:
        await broker.close()
