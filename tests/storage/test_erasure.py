"""Erasure in the store: tombstones keep seq gap-free, a restore re-applies erasures from the
ledger, and messages in flight for a deleted tenant are dropped rather than retried."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol.errors import NotFoundError
from server.auth.authority import scope_for_operator, scope_for_system
from storage.auditchain import OPERATOR
from storage.backup import take_backup
from storage.engine import open_engine
from storage.erasure import ERASED, Erasure, ErasureLedger
from storage.restore import load_backup
from storage.snapshot import snapshotter_for
from storage.store import Store
from tests.opsdata import keyring, sqlite_store, tenant_with_channel, write_messages


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await sqlite_store(tmp_path / "live", keyring(1))
    yield store
    await store.close()


def erasure(store: Store, tmp_path: Path) -> Erasure:
    return Erasure(store.engine, store.cipher, ErasureLedger(tmp_path / "erasures.jsonl"))


async def test_tombstones_keep_the_sequence(store: Store, tmp_path: Path) -> None:
    tenant, channel = await tenant_with_channel(store)
    scope = scope_for_operator(tenant.id)
    user = await store.users.create(scope, "gone@example.com", "x" * 20, "member")
    await write_messages(store, channel, 2, sender="other")
    await write_messages(store, channel, 3, sender=user.id, start=3)
    result = await erasure(store, tmp_path).erase_user(scope, user.id, actor=OPERATOR)
    assert result.messages_tombstoned == 3
    after = await store.messages.after(scope, channel.id, channel.name, 0, 100)
    assert [m.seq for m in after] == [1, 2, 3, 4, 5]
    assert [(m.sender_id, m.body) for m in after[2:]] == [(ERASED, "")] * 3
    with pytest.raises(NotFoundError):
        await store.users.get(scope, user.id)


async def test_a_restore_erases_again_who_was_erased_after_the_backup(
    store: Store, tmp_path: Path
) -> None:
    tenant, channel = await tenant_with_channel(store)
    scope = scope_for_operator(tenant.id)
    user = await store.users.create(scope, "later@example.com", "x" * 20, "member")
    await write_messages(store, channel, 4, sender=user.id)
    key = os.urandom(32)
    source = snapshotter_for(f"sqlite:///{tmp_path / 'live' / 'baychat.db'}")
    backup = await take_backup(source, tmp_path / "backups", key)
    eraser = erasure(store, tmp_path)
    await eraser.erase_user(scope, user.id, actor=OPERATOR)

    url = f"sqlite:///{tmp_path / 'restored.db'}"
    await load_backup(backup, key, snapshotter_for(url), "sqlite")
    engine = open_engine(url)
    await engine.open()
    try:
        restored = Erasure(engine, store.cipher, eraser.ledger)
        assert (await restored.reapply(scope_for_operator))["users_erased"] == [user.id]
        async with engine.transaction("probe", tenant_id=tenant.id) as tx:
            assert await tx.fetchval("SELECT COUNT(*) FROM users WHERE id = $1", user.id) == 0
            senders = await tx.fetch("SELECT DISTINCT sender_id FROM messages")
        assert [r["sender_id"] for r in senders] == [ERASED]
    finally:
        await engine.close()


async def test_messages_of_a_deleted_tenant_in_flight_are_dropped(store: Store) -> None:
    doomed, gone_channel = await tenant_with_channel(store)
    _, kept_channel = await tenant_with_channel(store)
    store.cipher.keystore.destroy(doomed.id)
    await write_messages(store, gone_channel, 2)  # no error, nothing written
    await write_messages(store, kept_channel, 2)
    kept = scope_for_system(kept_channel.tenant_id)
    assert await store.messages.last_seq(scope_for_system(doomed.id), gone_channel.id) == 0
    assert await store.messages.last_seq(kept, kept_channel.id) == 2
