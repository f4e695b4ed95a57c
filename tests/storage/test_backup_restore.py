"""Backup and restore round trip on real databases, the refusals, and the crypto-shredding
proof: after a tenant is deleted, its messages in an older backup cannot be decrypted."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.auth.authority import scope_for_operator
from storage.backup import Manifest, take_backup
from storage.backupfile import DamagedBackupError, WrongKeyError
from storage.crypto import MessageCipher
from storage.engine import Engine, open_engine
from storage.erasure import Erasure, ErasureLedger
from storage.keys import KeyUnavailableError, MasterKeyring
from storage.restore import Verification, load_backup, verify
from storage.snapshot import NotEmptyError, Snapshotter, snapshotter_for
from storage.store import Store
from tests.backends import fresh_postgres
from tests.opsdata import keyring, tenant_with_channel, write_messages
from tests.storage.stores import opened_store

KEY = os.urandom(32)


@dataclass
class Target:
    url: str
    snapshotter: Snapshotter
    engine: Engine


@dataclass
class Backend:
    """A live store to back up, and empty targets to restore into, on one engine."""

    name: str
    store: Store
    source: Snapshotter
    owner_url: str
    stack: contextlib.AsyncExitStack
    tmp_path: Path

    async def target(self) -> Target:
        if self.name == "sqlite":
            url = f"sqlite:///{self.tmp_path / 'restored' / 'baychat.db'}"
            return Target(url, snapshotter_for(url), open_engine(url))
        db = await self.stack.enter_async_context(fresh_postgres())
        snapshotter = snapshotter_for(db.owner_url, app_role=db.app_role)
        return Target(db.owner_url, snapshotter, open_engine(db.owner_url))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with contextlib.AsyncExitStack() as stack:
        keys = tmp_path / "live" / "keys"
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'live' / 'baychat.db'}"
            owner_url = app_url = backup_url = url
        else:
            db = await stack.enter_async_context(fresh_postgres())
            owner_url, app_url, backup_url = db.owner_url, db.app_url, db.admin_url
        store = await stack.enter_async_context(opened_store(owner_url, app_url, keys))
        source = snapshotter_for(owner_url, source_url=backup_url)
        yield Backend(request.param, store, source, owner_url, stack, tmp_path)


async def is_empty(into: Target) -> bool:
    try:
        await into.snapshotter.check_empty()
    except NotEmptyError:
        return False
    return True


async def restore(
    backup: Path, into: Target, cipher: MessageCipher, key: bytes = KEY
) -> tuple[Manifest, Verification]:
    manifest = await load_backup(backup, key, into.snapshotter, into.engine.dialect)
    await into.engine.open()
    try:
        return manifest, await verify(into.engine, cipher, manifest.facts, scope_for_operator)
    finally:
        await into.engine.close()


async def test_round_trip_verifies_counts_heads_and_every_message(backend: Backend) -> None:
    store, tmp_path = backend.store, backend.tmp_path
    _, a = await tenant_with_channel(store)
    _, b = await tenant_with_channel(store)
    await write_messages(store, a, 40)
    ring = store.cipher.keyring
    store.cipher.use_keyring(MasterKeyring({**ring.keys, **keyring(2).keys}, 2))
    await write_messages(store, a, 10, start=41)
    await write_messages(store, b, 7)

    backup = await take_backup(backend.source, tmp_path / "backups", KEY)
    assert backup.stat().st_mode & 0o777 == 0o600
    into = await backend.target()
    manifest, result = await restore(backup, into, store.cipher)

    assert result.ok, result.problems
    assert result.messages_decrypted == 57
    assert result.audit_entries_verified >= 2  # every tenant's chain, from tenant.create on
    facts = manifest.facts
    assert facts.row_counts["messages"] == 57
    assert facts.channel_heads == {a.id: 50, b.id: 7}
    assert facts.key_versions == {1: 40, 2: 17}

    assert await into.snapshotter.isolation_problems() == []
    with pytest.raises(NotEmptyError):
        await load_backup(backup, KEY, into.snapshotter, into.engine.dialect)


async def test_damaged_or_foreign_backups_leave_the_target_untouched(backend: Backend) -> None:
    store, tmp_path = backend.store, backend.tmp_path
    _, channel = await tenant_with_channel(store)
    await write_messages(store, channel, 5)
    backup = await take_backup(backend.source, tmp_path / "backups", KEY)
    blob = bytearray(backup.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    altered = tmp_path / "altered.bcbk"
    altered.write_bytes(bytes(blob))
    truncated = tmp_path / "truncated.bcbk"
    truncated.write_bytes(backup.read_bytes()[:-100])
    into = await backend.target()

    for bad, key, error in (
        (altered, KEY, DamagedBackupError),
        (truncated, KEY, DamagedBackupError),
        (backup, os.urandom(32), WrongKeyError),
    ):
        with pytest.raises(error):
            await restore(bad, into, store.cipher, key)
        assert await is_empty(into)


async def test_a_deleted_tenant_stays_unreadable_in_an_older_backup(backend: Backend) -> None:
    store, tmp_path = backend.store, backend.tmp_path
    doomed, a = await tenant_with_channel(store)
    _, b = await tenant_with_channel(store)
    await write_messages(store, a, 12)
    await write_messages(store, b, 9)
    backup = await take_backup(backend.source, tmp_path / "backups", KEY)
    # Keep a copy of the key store as an operator's key-store backup would, minus the
    # deleted tenant (its key-store backups are pruned on their own schedule).
    ledger = ErasureLedger(tmp_path / "live" / "keys" / "erasures.jsonl")
    ledger.record("tenant", doomed.id)
    store.cipher.keystore.destroy(doomed.id)
    await purge(backend, doomed.id, ledger)

    into = await backend.target()
    cipher = MessageCipher(store.cipher.keyring, store.cipher.keystore)
    _, result = await restore(backup, into, cipher)

    assert result.shredded_tenants == {doomed.id: 12}
    assert result.messages_decrypted == 9
    assert result.ok
    await into.engine.open()
    try:
        async with into.engine.transaction("probe", tenant_id=doomed.id) as tx:
            rows = await tx.fetch("SELECT * FROM messages WHERE tenant_id = $1", doomed.id)
        assert len(rows) == 12
        for row in rows:
            with pytest.raises(KeyUnavailableError):
                cipher.decrypt(doomed.id, row["channel_id"], row["id"], row["envelope"])
        # The ledger then removes the deleted tenant's rows from the restored database.
        done = await Erasure(into.engine, cipher, ledger).reapply(scope_for_operator)
        assert done["tenants_purged"] == [doomed.id]
        async with into.engine.transaction("probe") as tx:
            live = "SELECT COUNT(*) FROM tenants WHERE deleted_at IS NULL"
            assert await tx.fetchval(live) == 1
    finally:
        await into.engine.close()


async def purge(backend: Backend, tenant_id: str, ledger: ErasureLedger) -> None:
    """As `baychat tenant delete` does it: with the owner's connection."""
    engine = open_engine(backend.owner_url)
    await engine.open()
    try:
        await Erasure(engine, backend.store.cipher, ledger).purge_tenant(
            scope_for_operator(tenant_id)
        )
    finally:
        await engine.close()
