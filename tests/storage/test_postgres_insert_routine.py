"""The routine that stores a small batch of messages in one round trip (migration 0007,
``PostgresEngine.insert_committed``): used for every one-tenant batch of the worker, held to
row-level security and the channel check as the transaction it replaces, committed or not
at all, skipping what is stored already, and untouched by session state left on a pooled
connection."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from protocol.errors import ConflictError
from server.auth.authority import scope_for_operator, scope_for_system
from storage.ids import new_id, now_ms
from storage.messages import ROW_COLUMNS
from storage.models import Message
from storage.postgres import PostgresEngine
from storage.store import Store
from tests.backends import PostgresDatabase
from tests.storage.stores import opened_store

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

SIGNATURE = (
    "insert_messages(text, integer, text[], bigint[], text[], text[], text[], bytea[], bigint[])"
)


@dataclass
class Tenant:
    id: str
    channel_id: str
    user_id: str


@pytest_asyncio.fixture(loop_scope="module")
async def store(db: PostgresDatabase, tmp_path: Path) -> AsyncIterator[Store]:
    async with opened_store(db.owner_url, db.app_url, tmp_path / "keys") as opened:
        yield opened


async def new_tenant(store: Store) -> Tenant:
    tenant = await store.tenants.create(f"t-{secrets.token_hex(4)}")
    scope = scope_for_operator(tenant.id)
    user = await store.users.create(scope, "alice@example.com", "hash", "owner")
    channel = await store.channels.create(scope, "general", private=False, created_by=user.id)
    return Tenant(tenant.id, channel.id, user.id)


def messages(tenant: Tenant, seqs: range) -> list[Message]:
    return [
        Message(
            tenant.id,
            tenant.channel_id,
            "general",
            seq,
            new_id(),
            tenant.user_id,
            f"m{seq}",
            now_ms(),
        )
        for seq in seqs
    ]


async def stored_seqs(store: Store, tenant: Tenant) -> list[int]:
    scope = scope_for_system(tenant.id)
    return [m.seq for m in await store.messages.after(scope, tenant.channel_id, "general", 0, 1000)]


async def test_a_one_tenant_batch_is_stored_by_the_routine(
    db: PostgresDatabase, store: Store
) -> None:
    """The worker's small batch goes through the routine: with it out of the way, the batch
    fails and nothing is stored; with it back, the same batch is stored once, in order."""
    tenant = await new_tenant(store)
    batch = [(scope_for_system(tenant.id), m) for m in messages(tenant, range(1, 6))]
    owner = await asyncpg.connect(db.owner_url)
    try:
        await owner.execute(f"ALTER FUNCTION {SIGNATURE} RENAME TO insert_messages_away")
        try:
            with pytest.raises(asyncpg.UndefinedFunctionError):
                await store.messages.insert_batch(batch)
        finally:
            await owner.execute(
                f"ALTER FUNCTION insert_messages_away{SIGNATURE.removeprefix('insert_messages')}"
                " RENAME TO insert_messages"
            )
    finally:
        await owner.close()
    assert await stored_seqs(store, tenant) == []
    await store.messages.insert_batch(batch)
    assert await stored_seqs(store, tenant) == [1, 2, 3, 4, 5]
    scope = scope_for_system(tenant.id)
    read = await store.messages.after(scope, tenant.channel_id, "general", 0, 10)
    assert [m.body for m in read] == ["m1", "m2", "m3", "m4", "m5"]  # encrypted, decrypted


async def test_a_replayed_batch_is_stored_exactly_once(store: Store) -> None:
    """A batch replayed after a crash (some of its rows stored, some not) stores the rest
    and skips what is there: the routine's fallback after a unique violation."""
    tenant = await new_tenant(store)
    scope = scope_for_system(tenant.id)
    batch = messages(tenant, range(1, 8))
    await store.messages.insert_batch([(scope, m) for m in batch[2:5]])
    await store.messages.insert_batch([(scope, m) for m in batch])
    await store.messages.insert_batch([(scope, m) for m in batch])
    assert await stored_seqs(store, tenant) == [1, 2, 3, 4, 5, 6, 7]


async def test_a_conflicting_row_fails_the_whole_call(store: Store) -> None:
    """A row that is not a replay (another id for a stored seq) is refused, and the rows
    sent with it are not stored: the call's implicit transaction rolls back."""
    tenant = await new_tenant(store)
    scope = scope_for_system(tenant.id)
    await store.messages.insert_batch([(scope, m) for m in messages(tenant, range(1, 3))])
    clash = messages(tenant, range(2, 5))  # seq 2 again, under a new id
    with pytest.raises(ConflictError):
        await store.messages.insert_batch([(scope, m) for m in clash])
    assert await stored_seqs(store, tenant) == [1, 2]


async def test_the_routine_is_held_to_row_level_security_and_the_channel_check(
    db: PostgresDatabase, store: Store
) -> None:
    """Called by the application role itself: rows for tenant A naming B's channel are
    refused (the channel check runs with A set, so B's channel does not exist for it), and
    the routine neither reveals nor writes B's rows."""
    a, b = await new_tenant(store), await new_tenant(store)
    app = await asyncpg.connect(db.app_url)
    try:
        call = (
            "SELECT insert_messages($1::text, 1, $2::text[], $3::bigint[], $4::text[],"
            " $5::text[], $6::text[], $7::bytea[], $8::bigint[])"
        )
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await app.execute(
                call, a.id, [b.channel_id], [100], [new_id()], [a.user_id], [None], [b"x"], [1]
            )
        assert not app.is_in_transaction()
        # Its own channel: stored, and the tenant it set is gone with its transaction.
        await app.execute(
            call, a.id, [a.channel_id], [100], [new_id()], [a.user_id], [None], [b"x"], [1]
        )
        assert await app.fetchval("SELECT current_setting('app.tenant_id', true)") in ("", None)
        assert await app.fetchval("SELECT count(*) FROM messages") == 0  # no tenant: no rows
        async with app.transaction():
            await app.execute("SELECT set_config('app.tenant_id', $1, true)", b.id)
            assert await app.fetchval("SELECT count(*) FROM messages WHERE seq = 100") == 0
        async with app.transaction():
            await app.execute("SELECT set_config('app.tenant_id', $1, true)", a.id)
            assert await app.fetchval("SELECT count(*) FROM messages WHERE seq = 100") == 1
        catalogue = await app.fetchrow(
            "SELECT prosecdef, has_function_privilege('public', p.oid, 'EXECUTE') AS public"
            " FROM pg_proc p WHERE p.oid = $1::regprocedure",
            SIGNATURE,
        )
    finally:
        await app.close()
    assert catalogue is not None
    assert catalogue["prosecdef"] is False  # the caller's rights: row-level security applies
    assert catalogue["public"] is False  # the application role's grant only


async def test_session_state_left_on_the_connection_does_not_reach_the_routine(
    db: PostgresDatabase, store: Store
) -> None:
    """As every engine transaction does, the routine resets the session first: a tenant
    and a setting left at session level on the pooled connection neither decide where its
    rows go nor outlive it."""
    a, b = await new_tenant(store), await new_tenant(store)
    engine = PostgresEngine(db.app_url, min_size=1, max_size=1)
    await engine.open()
    try:
        async with engine.transaction("test_leak", write=True) as tx:
            pid = await tx.fetchval("SELECT pg_backend_pid()")
            await tx.execute("SELECT set_config('app.tenant_id', $1, false)", b.id)
            await tx.execute("SET statement_timeout = 4321")
        rows = [(a.channel_id, 7, new_id(), a.user_id, None, b"x", now_ms())]
        await engine.insert_committed(
            "test_routine",
            "messages",
            ROW_COLUMNS,
            rows,
            tenant_id=a.id,
            skip_duplicates_of="id",
            constants=(("tenant_id", "text", a.id), ("key_version", "integer", 1)),
        )
        async with engine.transaction("test_after") as tx:
            assert await tx.fetchval("SELECT pg_backend_pid()") == pid
            assert await tx.fetchval("SHOW statement_timeout") != "4321ms"
            assert await tx.fetch("SELECT tenant_id FROM messages") == []
        for tenant, expected in ((a.id, 1), (b.id, 0)):
            async with engine.transaction("test_count", tenant_id=tenant) as tx:
                assert await tx.fetchval("SELECT count(*) FROM messages WHERE seq = 7") == expected
    finally:
        await engine.close()


async def test_rows_for_another_tenant_than_the_transactions_take_the_checked_path(
    db: PostgresDatabase, store: Store
) -> None:
    """The routine sets the tenant its rows carry; a call whose rows name another tenant
    than the one asked for is not sent to it but to the ordinary transaction, where
    row-level security refuses them."""
    a, b = await new_tenant(store), await new_tenant(store)
    engine = PostgresEngine(db.app_url)
    await engine.open()
    try:
        rows = [(b.channel_id, 9, new_id(), b.user_id, None, b"x", now_ms())]
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await engine.insert_committed(
                "test_mismatch",
                "messages",
                ROW_COLUMNS,
                rows,
                tenant_id=a.id,
                skip_duplicates_of="id",
                constants=(("tenant_id", "text", b.id), ("key_version", "integer", 1)),
            )
        async with engine.transaction("test_count", tenant_id=b.id) as tx:
            assert await tx.fetchval("SELECT count(*) FROM messages WHERE seq = 9") == 0
    finally:
        await engine.close()
