"""`baychat keys`: master keys and JWT signing keys (docs/OPERATIONS.md, "Keys"). The key
store's own backup and restore (`keys backup`, `keys restore`) are in server/cli_keystore.py."""

from __future__ import annotations

import time
from typing import Any

import click

from server.auth.authority import scope_for_operator
from server.cli_common import (
    audit,
    emit,
    grace_period,
    guard,
    iso,
    note,
    with_store,
)
from server.config import Settings
from server.keyfiles import (
    backup_key,
    editing_jwt_keys,
    editing_master_keys,
    save_jwt_keys,
    save_master_keys,
)
from server.runtime import (
    load_keyring,
    load_signing_keys,
)
from storage.auditchain import OPERATOR, AuditRecord
from storage.backup import PREFIX, SUFFIX, read_manifest
from storage.backupfile import BackupError
from storage.rewrap import Rewrap, key_version_counts
from storage.store import Store


@click.group()
def keys() -> None:
    """Master keys and JWT signing keys: status, rotation, re-encryption, retirement; the
    tenant key store's own backups (backup, restore)."""


@keys.command("status")
def keys_status() -> None:
    """How many messages each master key version protects; which JWT key signs."""
    settings = Settings.from_env()
    ring = guard(lambda: load_keyring(settings))
    jwt = guard(lambda: load_signing_keys(settings))
    counts = with_store(settings, lambda store: key_version_counts(store.engine))
    versions = sorted(set(ring.keys) | set(counts))
    now = time.time()
    emit(
        {
            "master_keys": {
                "source": "env" if settings.master_keys else "file",
                "active": ring.active,
                "pending": None
                if ring.pending is None or ring.active == ring.pending.version
                else {"version": ring.pending.version, "activates_at": iso(ring.pending.at)},
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
                else {"kid": jwt.pending, "signs_from": iso(jwt.pending_at)},
                "keys": {
                    kid: {
                        "retirable_at": None
                        if kid in (jwt.current(), jwt.pending) or kid not in jwt.stopped
                        else iso(max(now, jwt.stopped[kid] + settings.access_ttl_s + 60)),
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
    grace_s = grace_period(settings, grace)
    if settings.master_keys:
        ring = guard(lambda: load_keyring(settings).rotated(grace_s=grace_s))
        assert ring.pending is not None
        audit(settings, "keys.rotate", f"master-key:v{ring.pending.version}", {"source": "env"})
        note(
            "The master keys come from the environment. Deploy this value of"
            " BAYCHAT_MASTER_KEYS to every node before the activation time, then run"
            " `baychat keys rewrap`."
        )
        emit(
            {
                "version": ring.pending.version,
                "activates_at": iso(ring.pending.at),
                "BAYCHAT_MASTER_KEYS": ring.to_env(),
            }
        )
        return

    def work() -> dict[str, Any]:
        with editing_master_keys(settings) as current:
            ring = current.rotated(grace_s=grace_s)
            save_master_keys(settings, ring)
        assert ring.pending is not None
        return {"version": ring.pending.version, "activates_at": iso(ring.pending.at)}

    doc = guard(work)
    audit(settings, "keys.rotate", f"master-key:v{doc['version']}", {"source": "file"})
    note(f"Running servers load it within {settings.key_reload_s:g} s (or at once on SIGHUP).")
    emit(doc)


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
            note(
                f"version {ring.pending.version} becomes active at {iso(ring.pending.at)};"
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

    doc = with_store(settings, work)
    emit(doc)
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
    counts = with_store(settings, lambda store: key_version_counts(store.engine))
    if counts.get(version):
        raise click.ClickException(
            f"{counts[version]} message(s) still use version {version}: run"
            " `baychat keys rewrap` first"
        )
    if not ignore_backups:
        needed, unreadable = guard(lambda: _versions_in_backups(settings))
        if version in needed:
            raise click.ClickException(
                f"{len(needed[version])} retained backup(s) hold messages under version"
                f" {version} (newest: {needed[version][-1]}); retire it after they are pruned"
            )
        if unreadable:
            note(f"warning: could not read {len(unreadable)} backup(s): {', '.join(unreadable)}")
    if settings.master_keys:
        ring = guard(lambda: load_keyring(settings).without(version))
        audit(settings, "keys.retire", f"master-key:v{version}", {"source": "env"})
        note("Deploy this value of BAYCHAT_MASTER_KEYS to every node.")
        emit({"retired": version, "BAYCHAT_MASTER_KEYS": ring.to_env()})
        return

    def work() -> None:
        with editing_master_keys(settings) as current:
            save_master_keys(settings, current.without(version))

    guard(work)
    audit(settings, "keys.retire", f"master-key:v{version}", {"source": "file"})
    emit({"retired": version})


@keys.command("rotate-jwt")
@click.option("--grace", type=float, default=None, help="Seconds until the new key signs.")
def keys_rotate_jwt(grace: float | None) -> None:
    """Add a new JWT signing key; it signs after --grace seconds, the old one keeps
    verifying until it is retired."""
    settings = Settings.from_env()
    grace_s = grace_period(settings, grace)
    if settings.jwt_keys:
        new = guard(lambda: load_signing_keys(settings).rotated(grace_s=grace_s))
        audit(settings, "keys.rotate_jwt", f"jwt-key:{new.pending}", {"source": "env"})
        note("The JWT keys come from the environment. Deploy this BAYCHAT_JWT_KEYS to every node.")
        emit(
            {
                "kid": new.pending,
                "signs_from": iso(new.pending_at),
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
            "signs_from": iso(new.pending_at),
            "previous": new.active,
            "previous_retirable_at": iso(new.pending_at + settings.access_ttl_s + 60),
        }

    doc = guard(work)
    audit(settings, "keys.rotate_jwt", f"jwt-key:{doc['kid']}", {"source": "file"})
    emit(doc)


@keys.command("retire-jwt")
@click.argument("kid")
def keys_retire_jwt(kid: str) -> None:
    """Remove a JWT key once every token it signed has expired."""
    settings = Settings.from_env()
    if settings.jwt_keys:
        new = guard(
            lambda: load_signing_keys(settings).without(kid, access_ttl_s=settings.access_ttl_s)
        )
        audit(settings, "keys.retire_jwt", f"jwt-key:{kid}", {"source": "env"})
        note("Deploy this BAYCHAT_JWT_KEYS to every node.")
        emit({"retired": kid, "BAYCHAT_JWT_KEYS": new.to_json().decode()})
        return

    def work() -> None:
        with editing_jwt_keys(settings) as current:
            save_jwt_keys(settings, current.without(kid, access_ttl_s=settings.access_ttl_s))

    guard(work)
    audit(settings, "keys.retire_jwt", f"jwt-key:{kid}", {"source": "file"})
    emit({"retired": kid})
