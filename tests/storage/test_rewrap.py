"""Rotation and rewrap on a real store: new writes use the new version, old rows still
decrypt, rewrap converts everything, survives an interruption and a concurrent writer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.auth.authority import scope_for_operator
from storage.keys import MasterKeyring, TenantKeyStore
from storage.rewrap import Rewrap, key_version_counts
from storage.store import Store
from tests.backends import fresh_postgres
from tests.opsdata import bodies, keyring, tenant_with_channel, write_messages


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh database per test (the counts below are global), opened by its owner as
    `baychat keys rewrap` opens it."""
    async with contextlib.AsyncExitStack() as stack:
        owner_url, app_role = f"sqlite:///{tmp_path / 'baychat.db'}", None
        if request.param == "postgres":
            db = await stack.enter_async_context(fresh_postgres())
            owner_url, app_role = db.owner_url, db.app_role
        store = Store.from_url(owner_url, keyring(1), TenantKeyStore(tmp_path / "keys"))
        await store.open(migrate_schema=True, app_role=app_role)
        stack.push_async_callback(store.close)
        yield store


def rotate(store: Store) -> MasterKeyring:
    ring = store.cipher.keyring
    rotated = MasterKeyring({**ring.keys, **keyring(max(ring.keys) + 1).keys}, max(ring.keys) + 1)
    store.cipher.use_keyring(rotated)
    return rotated


class Interrupted(Exception):
    pass


async def test_rotation_rewrap_and_status(store: Store) -> None:
    _, a = await tenant_with_channel(store)
    _, b = await tenant_with_channel(store)
    await write_messages(store, a, 30)
    await write_messages(store, b, 12)
    assert await key_version_counts(store.engine) == {1: 42}

    rotate(store)
    await write_messages(store, a, 5, start=31)
    assert await key_version_counts(store.engine) == {1: 42, 2: 5}
    assert len(await bodies(store, a)) == 35  # old rows still decrypt

    batches: list[int] = []

    def interrupt_after_two(n: int) -> None:
        batches.append(n)
        if len(batches) == 2:
            raise Interrupted()

    rewrap = Rewrap(store.engine, store.cipher, batch_size=7)
    with pytest.raises(Interrupted):
        await rewrap.run(interrupt_after_two)
    halfway = await key_version_counts(store.engine)
    assert halfway[1] + halfway[2] == 47
    assert 0 < halfway[1] < 42  # two batches committed, the rest untouched
    assert await rewrap.remaining() == halfway[1]

    result = await rewrap.run()
    assert result.rewrapped == halfway[1]
    assert await key_version_counts(store.engine) == {2: 47}
    assert await rewrap.remaining() == 0
    assert (await bodies(store, a))[0] == "message 1 from someone"
    assert len(await bodies(store, b)) == 12
    assert (await rewrap.run()).rewrapped == 0  # idempotent


async def test_rewrap_reaches_every_channel_of_every_tenant(store: Store) -> None:
    # The sweep walks channel by channel: rows spread over several channels per tenant, with
    # batches that end inside a channel and channels that end inside a batch, all convert.
    tenant, first = await tenant_with_channel(store)
    scope = scope_for_operator(tenant.id)
    second = await store.channels.create(scope, "random", private=False, created_by="someone")
    empty = await store.channels.create(scope, "empty", private=False, created_by="someone")
    _, other = await tenant_with_channel(store)
    await write_messages(store, first, 11)
    await write_messages(store, second, 4)
    await write_messages(store, other, 9)
    rotate(store)
    await write_messages(store, second, 3, start=5)  # already new: left as they are

    result = await Rewrap(store.engine, store.cipher, batch_size=4).run()
    assert result.rewrapped == 24
    assert result.by_tenant == {tenant.id: 15, other.tenant_id: 9}
    assert await key_version_counts(store.engine) == {2: 27}
    assert len(await bodies(store, first)) == 11
    assert len(await bodies(store, second)) == 7
    assert await bodies(store, empty) == []


async def test_rewrap_alongside_a_concurrent_writer(store: Store) -> None:
    _, channel = await tenant_with_channel(store)
    await write_messages(store, channel, 200)
    rotate(store)

    async def writer() -> None:
        for i in range(10):
            await write_messages(store, channel, 5, start=201 + 5 * i)
            await asyncio.sleep(0)

    result, _ = await asyncio.gather(
        Rewrap(store.engine, store.cipher, batch_size=20).run(), writer()
    )
    assert result.rewrapped == 200
    assert await key_version_counts(store.engine) == {2: 250}
    assert len(await bodies(store, channel)) == 250


async def test_a_retired_version_leaves_rows_unreadable_until_rewrapped(store: Store) -> None:
    _, channel = await tenant_with_channel(store)
    await write_messages(store, channel, 3)
    ring = rotate(store)
    store.cipher.use_keyring(ring.without(1))
    result = await Rewrap(store.engine, store.cipher).run()
    assert result.unreadable == 3  # which is why `keys retire` refuses while rows use it
