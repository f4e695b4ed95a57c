"""The key store's own backups as an operator runs them: `baychat keys backup`, `keys backup
verify`, `keys backup prune` and `keys restore`, on real files through the real command
line; a server started on a restored key store; and the crypto-shred story with both kinds
of backup."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from server.auth.authority import scope_for_operator
from server.runtime import open_store
from storage.backupfile import HEADER_SIZE
from storage.ids import now_ms
from storage.keybackup import KEYSTORE, take_keystore_backup
from storage.retention import DAY_MS, prune
from tests.backends import PostgresDatabase, migrated_postgres
from tests.harness import (
    PASSWORD,
    expect,
    expect_messages,
    live_server,
    make_settings,
    publish,
    send,
    subscribe,
)
from tests.opsdata import bodies
from tests.server.test_cli_ops import audit_actions, baychat, ok, seed


def key_files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in directory.iterdir()}


def refused(done: Any, *needles: str) -> None:
    assert done.returncode != 0, done.stdout
    for needle in needles:
        assert needle in done.stderr, done.stderr


async def readable_bodies(data: Path, tenant_id: str) -> list[str]:
    store = open_store(make_settings(data))
    await store.open()
    try:
        channel = await store.channels.by_name(scope_for_operator(tenant_id), "general")
        return await bodies(store, channel)
    finally:
        await store.close()


async def test_backup_verify_and_restore_into_an_empty_key_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, first = await seed(data, 4)
    _, second = await seed(data, 3)
    keys = data / "keys"
    before = key_files(keys)

    made = ok(baychat(data, "keys", "backup"))
    backup = Path(made["file"])
    assert backup.parent == data / "keystore-backups"
    assert backup.name.startswith("baychat-keys-")
    assert backup.suffix == ".bckeys"
    [(sealed, mode)] = key_files(backup.parent).values()
    assert mode == 0o600
    assert made["tenants"] == 2
    for secret, _ in before.values():
        assert secret not in sealed

    manifest = ok(baychat(data, "keys", "backup", "verify", str(backup)))
    assert manifest["format"] == "baychat-keystore-backup/1"
    assert manifest["tenants"] == {"count": 2, "ids": sorted([first, second])}
    assert {f["name"] for f in manifest["files"]} == {f"{first}.key", f"{second}.key"} | {
        "erasures.jsonl"
    }

    # The key store is lost: restore it where it was.
    refused(baychat(data, "keys", "restore", str(backup)), "not empty")
    assert key_files(keys) == before
    shutil.rmtree(keys)
    restored = ok(baychat(data, "keys", "restore", str(backup)))
    assert restored["restored_tenants"] == 2
    assert restored["skipped_deleted_tenants"] == []
    assert restored["database"] == "read"
    assert restored["audit"] == {"tenants": 2}
    assert key_files(keys) == before  # byte-identical, each 0600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert await readable_bodies(data, first) == [f"message {i} from someone" for i in (1, 2, 3, 4)]
    assert (await audit_actions(data, first))[-1] == "keys.restore"
    assert (await audit_actions(data, second))[-1] == "keys.restore"


async def test_refused_files_and_targets_write_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await seed(data, 2)
    backup = Path(ok(baychat(data, "keys", "backup"))["file"])
    database = Path(ok(baychat(data, "backup"))["file"])
    [(blob, _)] = key_files(backup.parent).values()
    bad = tmp_path / "bad"
    bad.mkdir()
    altered = bad / "altered.bckeys"
    altered.write_bytes(
        blob[: HEADER_SIZE + 5] + bytes([blob[HEADER_SIZE + 5] ^ 1]) + blob[HEADER_SIZE + 6 :]
    )
    truncated = bad / "truncated.bckeys"
    truncated.write_bytes(blob[:-20])
    foreign = bad / "foreign.bckeys"
    foreign.write_text("not a backup\n" * 20)
    target = tmp_path / "target"

    cases = [
        ((str(altered),), {}, "fails authentication"),
        ((str(truncated),), {}, "truncated"),
        ((str(foreign),), {}, "not a BayChat backup"),
        ((str(database),), {}, "this is a database backup, not a key-store backup"),
        ((str(backup),), {"BAYCHAT_BACKUP_KEY": "A" * 43 + "="}, "another backup key"),
    ]
    for args, env, message in cases:
        done = baychat_env(data, env, "keys", "restore", *args, "--into", str(target))
        refused(done, message)
        assert not target.exists(), message
        if not env:
            refused(baychat(data, "keys", "backup", "verify", *args), message)

    # And the database restore refuses a key-store backup, touching no database.
    new_db = tmp_path / "new.db"
    done = baychat(data, "restore", str(backup), "--into", f"sqlite:///{new_db}")
    refused(done, "this is a key-store backup, not a database backup", "baychat keys restore")
    assert not new_db.exists()
    refused(baychat(data, "backup", "verify", str(backup)), "key-store backup")

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    refused(baychat(data, "keys", "restore", str(backup), "--into", str(occupied)), "not empty")
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]


def baychat_env(data: Path, env: dict[str, str], *args: str, stdin: str = "") -> Any:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return baychat(data, *args, stdin=stdin)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_prune_keeps_younger_and_newest_and_ignores_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = data / "keys"
    keys.mkdir(parents=True)
    (keys / "t-1.key").write_bytes(os.urandom(32))
    out = data / "keystore-backups"
    now = now_ms()

    def aged(days: float) -> Path:
        made, _, _ = take_keystore_backup(
            keys, out, os.urandom(32), created_at_ms=now - int(days * DAY_MS)
        )
        return made

    old, older, young = aged(50), aged(40), aged(3)
    foreign = out / "baychat-keys-notes.bckeys"
    foreign.write_text("not ours")
    other = out / "readme.txt"
    other.write_text("keep")

    listed = ok(baychat(data, "keys", "backup", "prune", "--dry-run"))
    assert listed["keep_days"] == 35
    assert sorted(listed["deleted"]) == sorted([old.name, older.name])
    assert old.exists()
    assert older.exists()
    pruned = ok(baychat(data, "keys", "backup", "prune"))
    assert sorted(pruned["deleted"]) == sorted([old.name, older.name])
    assert pruned["kept"] == [young.name]
    assert set(pruned["ignored"]) == {foreign.name, other.name}
    assert not old.exists()
    assert not older.exists()
    assert young.exists()
    assert foreign.exists()
    assert other.exists()

    # The newest survives whatever its age; the retention is configurable; 0 is refused.
    refused(baychat(data, "keys", "backup", "prune", "--keep-days", "0"), "--keep-days")
    again = ok(baychat(data, "keys", "backup", "prune", "--keep-days", "1", "--dir", str(out)))
    assert again["deleted"] == []
    assert again["kept"] == [young.name]
    os.environ["BAYCHAT_KEYSTORE_BACKUP_KEEP_DAYS"] = "2"
    try:
        assert ok(baychat(data, "keys", "backup", "prune", "--dry-run"))["keep_days"] == 2
    finally:
        del os.environ["BAYCHAT_KEYSTORE_BACKUP_KEEP_DAYS"]


async def test_a_server_on_the_restored_key_store_decrypts_history(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    async with live_server(settings) as server:
        tenant = await server.tenant()
        alice, bob = await server.user(tenant), await server.user(tenant)
        await server.channel(tenant, "general", alice)
        wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
        await subscribe(wb, "general")
        for i in range(5):
            await publish(wa, "general", f"kept safe {i}")
        await expect_messages(wb, 5)
        backup = ok(baychat(settings.data_dir, "keys", "backup"))["file"]

    # The key store's disk is gone; the database is intact. Restore the key store only.
    shutil.rmtree(settings.keystore_dir)
    done = ok(baychat(settings.data_dir, "keys", "restore", backup))
    assert done["restored_tenants"] == 1
    assert done["tenants_without_secret"] == []

    async with live_server(settings) as server:
        wb = await server.session(tenant, bob)
        await send(wb, {"type": "history", "channel": "general", "id": "h"})
        history = await expect(wb, "history", skip=("presence", "typing", "ack"))
        assert sorted(m["body"] for m in history["messages"]) == [
            f"kept safe {i}" for i in range(5)
        ]


async def test_a_deleted_tenant_stays_shredded_across_both_restores(tmp_path: Path) -> None:
    """Key-store backup and database backup, then the tenant is deleted. A database restore
    leaves it unreadable while the key store is not rolled back; a key-store restore given
    the current ledger (or a database that knows) does not roll it back. Only a blind
    restore of a key-store backup older than the deletion brings the secret back: the
    window that lasts until that backup is pruned (docs/OPERATIONS.md)."""
    data = tmp_path / "data"
    doomed_slug, doomed = await seed(data, 6)
    _, other = await seed(data, 4)
    db_backup = ok(baychat(data, "backup"))["file"]
    ks_backup = ok(baychat(data, "keys", "backup"))["file"]
    ok(
        baychat(
            data, "tenant", "delete", doomed_slug, "--confirm", doomed_slug, "--owner-stdin",
            stdin=f"owner@example.com\n{PASSWORD}\n",
        )
    )  # fmt: skip
    ks_after = ok(baychat(data, "keys", "backup"))["file"]
    assert doomed not in ok(baychat(data, "keys", "backup", "verify", ks_after))["tenants"]["ids"]

    # 1. The database is lost; the key store is not. Restore the older database backup.
    for leftover in data.glob("baychat.db*"):
        leftover.unlink()
    report = ok(baychat(data, "restore", db_backup))
    assert report["shredded_tenants"] == {doomed: 6}
    assert report["messages_decrypted"] == 4
    assert report["erasures_reapplied"]["tenants_purged"] == [doomed]
    assert await readable_bodies(data, other) == [f"message {i} from someone" for i in range(1, 5)]

    # 2. Then the key store is lost too. Restoring the older key-store backup (which still
    #    holds the doomed secret) with the current ledger does not bring it back...
    lost = data / "keys.lost"
    (data / "keys").rename(lost)
    restored = ok(
        baychat(data, "keys", "restore", ks_backup, "--ledger", str(lost / "erasures.jsonl"))
    )
    assert restored["skipped_deleted_tenants"] == [doomed]
    assert not (data / "keys" / f"{doomed}.key").exists()
    assert (data / "keys" / f"{other}.key").read_bytes() == (lost / f"{other}.key").read_bytes()
    # ... nor does it without the ledger, as long as the database records the deletion.
    shutil.rmtree(data / "keys")
    from_db = ok(baychat(data, "keys", "restore", ks_backup))
    assert from_db["skipped_deleted_tenants"] == [doomed]
    ledger = [
        json.loads(line) for line in (data / "keys" / "erasures.jsonl").read_text().splitlines()
    ]
    assert {"kind": "tenant", "tenant_id": doomed} in [
        {k: e[k] for k in ("kind", "tenant_id")} for e in ledger
    ]

    # 3. The window: with neither a ledger nor a database that remembers, the older
    #    key-store backup gives the secret back, and the older database backup decrypts.
    blind_keys = tmp_path / "blind-keys"
    blind = ok(
        baychat(data, "keys", "restore", ks_backup, "--into", str(blind_keys), "--no-database")
    )
    assert blind["skipped_deleted_tenants"] == []
    assert blind["restored_tenants"] == 2
    assert blind["database"] == "skipped"
    assert blind["audit"]["tenants"] == 0
    blind_data = tmp_path / "blind"
    (blind_data / "secrets").mkdir(parents=True)
    shutil.copy(data / "secrets" / "master-keys.json", blind_data / "secrets")
    shutil.copy(data / "secrets" / "backup.key", blind_data / "secrets")
    shutil.move(blind_keys, blind_data / "keys")
    resurrected = ok(baychat(blind_data, "restore", db_backup, "--no-reapply-erasures"))
    assert resurrected["shredded_tenants"] == {}
    assert resurrected["messages_decrypted"] == 10

    # The window closes when the last key-store backup holding the secret is pruned.
    result = prune(
        Path(ks_backup).parent, keep_days=35, now_ms=now_ms() + 36 * DAY_MS, family=KEYSTORE
    )
    assert [p.name for p in result.deleted] == [Path(ks_backup).name]
    assert [p.name for p in result.kept] == [Path(ks_after).name]


def baychat_on(data: Path, db: PostgresDatabase, *args: str, stdin: str = "") -> Any:
    env = {"BAYCHAT_DATABASE_URL": db.app_url, "BAYCHAT_DATABASE_OWNER_URL": db.owner_url}
    return baychat_env(data, env, *args, stdin=stdin)


@pytest.mark.postgres
async def test_restore_reads_deletions_from_postgres_and_audits_there(tmp_path: Path) -> None:
    """The key store and its ledger are both lost; only Postgres remembers the deletion."""
    data = tmp_path / "data"
    async with migrated_postgres() as db:
        kept = ok(baychat_on(data, db, "tenant", "create", "kept"))["id"]
        gone = ok(baychat_on(data, db, "tenant", "create", "gone"))["id"]
        ok(
            baychat_on(
                data, db, "user", "create", "gone", "o@example.com", "--role", "owner",
                "--password-stdin", stdin=f"{PASSWORD}\n",
            )
        )  # fmt: skip
        backup = ok(baychat(data, "keys", "backup"))["file"]  # needs no database
        ok(
            baychat_on(
                data, db, "tenant", "delete", "gone", "--confirm", "gone", "--owner-stdin",
                stdin=f"o@example.com\n{PASSWORD}\n",
            )
        )  # fmt: skip
        shutil.rmtree(data / "keys")

        done = ok(baychat_on(data, db, "keys", "restore", backup))
        assert done["database"] == "read"
        assert done["skipped_deleted_tenants"] == [gone]
        assert done["restored_tenants"] == 1
        assert done["audit"] == {"tenants": 1}
        assert {p.name for p in (data / "keys").iterdir()} == {"erasures.jsonl", f"{kept}.key"}
        chains = [json.loads(line) for line in ok_lines(baychat_on(data, db, "audit", "verify"))]
        verified = {c["tenant"]: c["ok"] for c in chains}
        assert verified == {"kept": True, f"deleted-{gone}": True}


def ok_lines(done: Any) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.strip()]


async def test_an_unreachable_database_stops_the_restore_unless_told(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await seed(data, 1)
    backup = ok(baychat(data, "keys", "backup"))["file"]
    target = tmp_path / "target"
    nowhere = {"BAYCHAT_DATABASE_OWNER_URL": "postgresql://nobody@127.0.0.1:1/none"}
    done = baychat_env(data, nowhere, "keys", "restore", backup, "--into", str(target))
    refused(done, "cannot read the database to check for deleted tenants", "--no-database")
    assert not target.exists()
    args = ("keys", "restore", backup, "--into", str(target), "--no-database")
    restored = ok(baychat_env(data, nowhere, *args))
    assert restored["database"] == "skipped"
    assert restored["restored_tenants"] == 1


async def test_full_recovery_restores_the_key_store_first_then_the_database(
    tmp_path: Path,
) -> None:
    """Both the database and the key store are lost: the documented order works."""
    data = tmp_path / "data"
    _, tenant_id = await seed(data, 5)
    db_backup = ok(baychat(data, "backup"))["file"]
    ks_backup = ok(baychat(data, "keys", "backup"))["file"]
    for leftover in data.glob("baychat.db*"):
        leftover.unlink()
    shutil.rmtree(data / "keys")

    keys = ok(baychat(data, "keys", "restore", ks_backup))
    assert keys["database"] == "none yet"  # nothing to read, nothing audited, nothing migrated
    assert keys["audit"]["tenants"] == 0
    report = ok(baychat(data, "restore", db_backup))
    assert report["ok"] is True
    assert report["shredded_tenants"] == {}
    assert report["messages_decrypted"] == 5
    assert await readable_bodies(data, tenant_id) == [
        f"message {i} from someone" for i in range(1, 6)
    ]
