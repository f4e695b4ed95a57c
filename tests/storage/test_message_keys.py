"""What the messages table's keys guarantee, on every store: no message for a channel that
does not exist, and deleting a channel or a tenant deletes its messages. (Postgres checks
one composite key to the channel since migration 0004; SQLite keeps two keys.)"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from protocol.errors import ConflictError
from server.auth.authority import scope_for_system
from storage.engine import Engine, open_engine
from storage.ids import new_id
from storage.keys import TenantKeyStore
from storage.store import Store
from tests.backends import PostgresDatabase, on_every_store
from tests.storage.test_store_contract import Side, message, side, write

pytestmark = on_every_store


@contextlib.asynccontextmanager
async def behind_the_app(store: Store, database: PostgresDatabase | None) -> AsyncIterator[Engine]:
    """An engine that may delete channels and tenants (the application role may not)."""
    if database is None:
        yield store.engine
        return
    engine = open_engine(database.admin_url)
    await engine.open()
    try:
        yield engine
    finally:
        await engine.close()


async def stored(engine: Engine, s: Side) -> int:
    async with engine.transaction("count", tenant_id=s.tenant.id) as tx:
        return int(
            await tx.fetchval("SELECT COUNT(*) FROM messages WHERE tenant_id = $1", s.tenant.id)
        )


async def test_a_message_for_a_missing_channel_is_refused(store: Store) -> None:
    a = await side(store)
    orphan = replace(message(a, 1), channel_id=new_id())
    with pytest.raises(Exception):  # noqa: B017, PT011 - each driver's own integrity error
        await store.messages.insert_batch([(scope_for_system(a.tenant.id), orphan)])
    assert await stored(store.engine, a) == 0
    await write(store, message(a, 1))  # the tenant's real channel still takes messages
    assert await stored(store.engine, a) == 1


async def test_deleting_a_channel_deletes_its_messages(
    store: Store, database: PostgresDatabase | None
) -> None:
    a = await side(store)
    other = await store.channels.create(a.scope, "other", private=False, created_by=a.user.id)
    kept = replace(message(a, 3), channel_id=other.id)
    await write(store, message(a, 1), message(a, 2), kept)
    async with (
        behind_the_app(store, database) as engine,
        engine.transaction("delete_channel", tenant_id=a.tenant.id, write=True) as tx,
    ):
        await tx.execute("DELETE FROM channels WHERE id = $1", a.channel.id)
    async with store.engine.transaction("left", tenant_id=a.tenant.id) as tx:
        left = await tx.fetch("SELECT channel_id FROM messages WHERE tenant_id = $1", a.tenant.id)
    assert [row["channel_id"] for row in left] == [other.id]


async def test_deleting_a_tenant_deletes_its_messages(
    store: Store, database: PostgresDatabase | None, tmp_path: Path
) -> None:
    # A tenant made by the store starts an append-only audit chain that pins its row (a
    # deleted tenant is purged and renamed instead): this one is made behind the app's back.
    a, b = await side(store), await side(store)
    bare = replace(
        a, tenant=replace(a.tenant, id=new_id()), channel=replace(a.channel, id=new_id())
    )
    TenantKeyStore(tmp_path / "keys").create(bare.tenant.id)
    async with behind_the_app(store, database) as engine:
        async with engine.transaction("make_tenant", write=True) as tx:
            await tx.execute(
                "INSERT INTO tenants (id, slug, plan, created_at) VALUES ($1, $2, 'free', 0)",
                bare.tenant.id,
                f"bare-{bare.tenant.id}",
            )
            await tx.set_tenant(bare.tenant.id)
            await tx.execute(
                "INSERT INTO channels (tenant_id, id, name, private, created_by, created_at)"
                " VALUES ($1, $2, 'general', FALSE, 'nobody', 0)",
                bare.tenant.id,
                bare.channel.id,
            )
        await write(store, message(bare, 1), message(bare, 2), message(b, 1))
        assert await stored(store.engine, bare) == 2
        async with engine.transaction("delete_tenant", write=True) as tx:
            await tx.execute("DELETE FROM tenants WHERE id = $1", bare.tenant.id)
    assert await stored(store.engine, bare) == 0
    assert await stored(store.engine, b) == 1


async def test_a_refused_batch_is_replayed_exactly_once(store: Store) -> None:
    # The batch's channels are written by several lanes (transactions) at once on Postgres:
    # the lanes that committed before another one failed are skipped on the replay.
    sides = [await side(store) for _ in range(4)]
    good = [message(s, seq) for s in sides for seq in (1, 2, 3)]
    orphan = replace(message(sides[0], 4), channel_id=new_id())
    with pytest.raises(Exception):  # noqa: B017, PT011 - each driver's own integrity error
        await write(store, *good, orphan)
    await write(store, *good)
    await write(store, *good)
    for s in sides:
        got = await store.messages.after(s.scope, s.channel.id, s.channel.name, 0, 10)
        assert [m.seq for m in got] == [1, 2, 3]


async def test_a_large_batch_failing_in_a_later_chunk_commits_none_of_that_lane(
    store: Store,
) -> None:
    # 2,400 rows: several lanes on Postgres, several chunks in each, each lane encrypting its
    # next chunk while its insert runs. One channel's second chunk hits a taken seq, so its
    # insert fails while the lane is already on the next chunk: that lane's transaction
    # must roll back whole and leave its connection usable; the replay stores every
    # message exactly once.
    sides = [await side(store) for _ in range(4)]
    taken = message(sides[0], 400)
    await write(store, taken)
    batch = [message(s, seq) for s in sides for seq in range(1, 601)]
    with pytest.raises(ConflictError):
        await write(store, *batch)
    assert await stored(store.engine, sides[0]) == 1  # only the row stored before
    replay = [m for m in batch if not (m.channel_id == taken.channel_id and m.seq == 400)]
    await write(store, *replay)
    await write(store, *replay)
    for s in sides:
        got = await store.messages.after(s.scope, s.channel.id, s.channel.name, 0, 1000)
        assert [m.seq for m in got] == list(range(1, 601))
        expected_ids = {m.id for m in batch if m.channel_id == s.channel.id} | (
            {taken.id} if s is sides[0] else set()
        )
        assert {m.id for m in got} <= expected_ids
