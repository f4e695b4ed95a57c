"""A message's channel must exist, and deleting the channel deletes its messages, on
Postgres also under concurrency: a channel deleted while a batch that names it is being
inserted, in every order the two can commit in. Raw asyncpg connections so each step's
transaction is under the test's control; a step that must wait for the other transaction's
lock is seen waiting in pg_stat_activity before the other one ends.

These are the guarantees the composite foreign key messages (tenant_id, channel_id) ->
channels (tenant_id, id) gave; migration 0006 gives them with statement-level triggers.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import pytest

from protocol.errors import ConflictError
from storage.engine import open_engine
from storage.ids import new_id
from storage.messages import ROW_COLUMNS
from storage.migrations import available, latest_version, migrate, render, split_statements
from storage.postgres import PostgresEngine
from tests.backends import PostgresDatabase, fresh_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

SET_TENANT = "SELECT set_config('app.tenant_id', $1, true)"
INSERT = (
    "INSERT INTO messages (tenant_id, channel_id, seq, id, sender_id, client_msg_id,"
    " key_version, envelope, sent_at)"
    " SELECT $1, $2, s, gen_random_uuid()::text, 'u', NULL, 1, '\\x01'::bytea, 0"
    " FROM generate_series($3::bigint, $4::bigint) AS s"
)
INSERT_ROWS = (
    "INSERT INTO messages (tenant_id, channel_id, seq, id, sender_id, client_msg_id,"
    " key_version, envelope, sent_at) SELECT * FROM unnest($1::text[], $2::text[],"
    " $3::bigint[], $4::text[], $5::text[], $6::text[], $7::integer[], $8::bytea[],"
    " $9::bigint[])"
)


async def connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url)
    return conn


async def tenant_with_channel(db: PostgresDatabase) -> tuple[str, str]:
    """A tenant and one of its channels, made by the owner role."""
    tenant_id, channel_id = new_id(), new_id()
    owner = await connect(db.owner_url)
    try:
        async with owner.transaction():
            await owner.execute(
                "INSERT INTO tenants (id, slug, plan, created_at) VALUES ($1, $2, 'free', 0)",
                tenant_id,
                f"t-{secrets.token_hex(4)}",
            )
            await owner.execute(SET_TENANT, tenant_id)
            await owner.execute(
                "INSERT INTO channels (tenant_id, id, name, private, created_by, created_at)"
                " VALUES ($1, $2, 'c', FALSE, 'u', 0)",
                tenant_id,
                channel_id,
            )
    finally:
        await owner.close()
    return tenant_id, channel_id


async def as_tenant(conn: asyncpg.Connection, tenant_id: str, sql: str, *args: object) -> None:
    async with conn.transaction():
        await conn.execute(SET_TENANT, tenant_id)
        await conn.execute(sql, *args)


async def insert_rows(
    engine: PostgresEngine, tenant_id: str, rows: Sequence[Sequence[object]]
) -> None:
    """Full rows (``INSERT_ROWS``' column order), sent as the worker sends them: tenant_id
    and key_version once, as constants, the other columns as arrays."""
    (version,) = {row[6] for row in rows}
    assert {row[0] for row in rows} == {tenant_id}
    async with engine.transaction("test_insert_rows", write=True) as tx:
        await tx.set_tenant(tenant_id)
        await tx.insert_rows(
            "messages",
            ROW_COLUMNS,
            [(*row[1:6], *row[7:]) for row in rows],
            constants=(("tenant_id", "text", tenant_id), ("key_version", "integer", version)),
            skip_duplicates_of="id",
        )


async def stored(db: PostgresDatabase, channel_id: str) -> int:
    admin = await connect(db.admin_url)
    try:
        count: int = await admin.fetchval(
            "SELECT count(*) FROM messages WHERE channel_id = $1", channel_id
        )
        return count
    finally:
        await admin.close()


async def waiting_on_a_lock(db: PostgresDatabase, pid: int) -> None:
    """Return once backend ``pid`` waits for a lock (fails after 10 s)."""
    admin = await connect(db.admin_url)
    try:
        for _ in range(1000):
            event = await admin.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
            )
            if event == "Lock":
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"backend {pid} never waited for a lock")
    finally:
        await admin.close()


async def test_a_message_needs_its_channel_in_its_own_tenant(db: PostgresDatabase) -> None:
    tenant_a, channel_a = await tenant_with_channel(db)
    tenant_b, _ = await tenant_with_channel(db)
    app = await connect(db.app_url)
    try:
        for tenant_id, channel_id in ((tenant_a, new_id()), (tenant_b, channel_a)):
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await as_tenant(app, tenant_id, INSERT, tenant_id, channel_id, 1, 3)
        async with app.transaction():
            await app.execute(SET_TENANT, tenant_a)
            await app.execute(INSERT, tenant_a, channel_a, 1, 3)
            # One statement naming a good and a missing channel fails whole.
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                async with app.transaction():
                    await app.execute(
                        INSERT.replace(
                            "SELECT $1, $2", "SELECT $1, CASE WHEN s = 5 THEN 'x' ELSE $2 END"
                        ),
                        tenant_a,
                        channel_a,
                        4,
                        6,
                    )
    finally:
        await app.close()
    assert await stored(db, channel_a) == 3


async def test_a_message_cannot_move_to_a_missing_channel_nor_a_channel_key_change(
    db: PostgresDatabase,
) -> None:
    tenant_id, channel_id = await tenant_with_channel(db)
    owner = await connect(db.owner_url)
    try:
        async with owner.transaction():
            await owner.execute(SET_TENANT, tenant_id)
            await owner.execute(INSERT, tenant_id, channel_id, 1, 2)
        move = "UPDATE messages SET channel_id = 'nowhere' WHERE seq = 1 AND channel_id = $1"
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await as_tenant(owner, tenant_id, move, channel_id)
        rename = "UPDATE channels SET id = 'renamed' WHERE id = $1"
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await as_tenant(owner, tenant_id, rename, channel_id)
        # Updates that leave the key alone pass (erasure rewrites sender and envelope).
        async with owner.transaction():
            await owner.execute(SET_TENANT, tenant_id)
            await owner.execute(
                "UPDATE messages SET sender_id = 'erased' WHERE channel_id = $1", channel_id
            )
            await owner.execute(
                "UPDATE channels SET created_by = 'erased' WHERE id = $1", channel_id
            )
    finally:
        await owner.close()
    assert await stored(db, channel_id) == 2


async def test_deleting_a_channel_or_its_tenant_deletes_its_messages(
    db: PostgresDatabase,
) -> None:
    tenant_id, channel_id = await tenant_with_channel(db)
    _, kept = await tenant_with_channel(db)
    other_channel = new_id()
    owner = await connect(db.owner_url)
    try:
        async with owner.transaction():
            await owner.execute(SET_TENANT, tenant_id)
            await owner.execute(
                "INSERT INTO channels (tenant_id, id, name, private, created_by, created_at)"
                " VALUES ($1, $2, 'd', FALSE, 'u', 0)",
                tenant_id,
                other_channel,
            )
            await owner.execute(INSERT, tenant_id, channel_id, 1, 5)
            await owner.execute(INSERT, tenant_id, other_channel, 1, 5)
        async with owner.transaction():
            await owner.execute(SET_TENANT, tenant_id)
            await owner.execute("DELETE FROM channels WHERE id = $1", channel_id)
        assert await stored(db, channel_id) == 0
        assert await stored(db, other_channel) == 5
        # The tenant's row goes with no tenant set: the cascade reaches channels, then
        # messages, whatever row-level security would show the deleting role.
        await owner.execute("DELETE FROM tenants WHERE id = $1", tenant_id)
    finally:
        await owner.close()
    assert await stored(db, other_channel) == 0
    admin = await connect(db.admin_url)
    try:
        assert (
            await admin.fetchval("SELECT count(*) FROM channels WHERE tenant_id = $1", tenant_id)
            == 0
        )
        assert await admin.fetchval("SELECT count(*) FROM channels WHERE id = $1", kept) == 1
    finally:
        await admin.close()


async def test_a_channel_deleted_while_a_batch_naming_it_is_uncommitted(
    db: PostgresDatabase,
) -> None:
    """The insert committed first: the delete waits for it, then takes its messages too."""
    tenant_id, channel_id = await tenant_with_channel(db)
    app, owner = await connect(db.app_url), await connect(db.owner_url)
    try:
        insert = app.transaction()
        await insert.start()
        await app.execute(SET_TENANT, tenant_id)
        await app.execute(INSERT, tenant_id, channel_id, 1, 100)

        async def delete() -> None:
            async with owner.transaction():
                await owner.execute(SET_TENANT, tenant_id)
                await owner.execute("DELETE FROM channels WHERE id = $1", channel_id)

        deleting = asyncio.ensure_future(delete())
        await waiting_on_a_lock(db, owner.get_server_pid())
        await insert.commit()
        await deleting
    finally:
        await app.close()
        await owner.close()
    assert await stored(db, channel_id) == 0


@pytest.mark.parametrize("delete_commits", [True, False])
async def test_a_batch_inserted_while_its_channel_is_being_deleted(
    db: PostgresDatabase, delete_commits: bool
) -> None:
    """The delete came first: the insert waits for it, and fails if the delete commits."""
    tenant_id, channel_id = await tenant_with_channel(db)
    app, owner = await connect(db.app_url), await connect(db.owner_url)
    try:
        delete = owner.transaction()
        await delete.start()
        await owner.execute(SET_TENANT, tenant_id)
        await owner.execute("DELETE FROM channels WHERE id = $1", channel_id)

        async def insert() -> None:
            async with app.transaction():
                await app.execute(SET_TENANT, tenant_id)
                await app.execute(INSERT, tenant_id, channel_id, 1, 100)

        inserting = asyncio.ensure_future(insert())
        await waiting_on_a_lock(db, app.get_server_pid())
        if delete_commits:
            await delete.commit()
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await inserting
        else:
            await delete.rollback()
            await inserting
    finally:
        await app.close()
        await owner.close()
    assert await stored(db, channel_id) == (0 if delete_commits else 100)


async def test_the_migration_keeps_existing_messages_and_checks_new_ones(
    tmp_path: Path,
) -> None:
    """0006 on a database that already holds messages (migrated to 0005 and used)."""
    async with fresh_postgres() as db:
        owner = await connect(db.owner_url)
        try:
            await owner.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for migration in available("postgres"):
                if migration.version > 5:
                    break
                async with owner.transaction():
                    for statement in split_statements(render(migration, db.app_role)):
                        await owner.execute(statement)
                    await owner.execute(
                        "INSERT INTO schema_version (version) VALUES ($1)", migration.version
                    )
        finally:
            await owner.close()
        tenant_id, channel_id = await tenant_with_channel(db)
        app = await connect(db.app_url)
        try:
            async with app.transaction():
                await app.execute(SET_TENANT, tenant_id)
                await app.execute(INSERT, tenant_id, channel_id, 1, 50)
        finally:
            await app.close()
        engine = open_engine(db.owner_url)
        await engine.open()
        try:
            applied = await migrate(engine, app_role=db.app_role)
        finally:
            await engine.close()
        assert applied == list(range(6, latest_version("postgres") + 1))
        assert await stored(db, channel_id) == 50
        app = await connect(db.app_url)
        try:
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await as_tenant(app, tenant_id, INSERT, tenant_id, new_id(), 1, 1)
            async with app.transaction():
                await app.execute(SET_TENANT, tenant_id)
                await app.execute(INSERT, tenant_id, channel_id, 51, 60)
        finally:
            await app.close()
        assert await stored(db, channel_id) == 60
        owner = await connect(db.owner_url)
        try:
            async with owner.transaction():
                await owner.execute(SET_TENANT, tenant_id)
                await owner.execute("DELETE FROM channels WHERE id = $1", channel_id)
        finally:
            await owner.close()
        assert await stored(db, channel_id) == 0


# -- the batch insert's replay path (storage/postgres.py insert_rows) -------------------


# A small batch goes straight to ON CONFLICT DO NOTHING; a large one tries a plain INSERT in
# a savepoint first (storage/postgres.py _SAVEPOINT_MIN_ROWS): the same outcome either way.
@pytest.mark.parametrize("size", [10, 200])
async def test_a_batch_replayed_while_its_first_delivery_is_uncommitted_is_stored_once(
    db: PostgresDatabase, size: int
) -> None:
    """Two workers with the same batch (a redelivery): the second waits on the first's
    uncommitted rows, then skips every one of them; a batch mixing stored and new rows
    stores only the new ones; a different message on a taken (channel, seq) is refused."""
    tenant_id, channel_id = await tenant_with_channel(db)
    rows = [
        (tenant_id, channel_id, s, new_id(), "u", None, 1, b"\x01", 0) for s in range(1, size + 1)
    ]
    engine = PostgresEngine(db.app_url)
    await engine.open()
    try:
        first = await connect(db.app_url)
        try:
            async with first.transaction():
                await first.execute(SET_TENANT, tenant_id)
                await first.execute(
                    INSERT_ROWS, *(list(column) for column in zip(*rows, strict=True))
                )

                replaying = asyncio.ensure_future(insert_rows(engine, tenant_id, rows))
                admin = await connect(db.admin_url)
                try:
                    for _ in range(1000):
                        pids = await admin.fetch(
                            "SELECT pid FROM pg_stat_activity WHERE datname = $1"
                            " AND application_name = 'baychat' AND wait_event_type = 'Lock'",
                            db.name,
                        )
                        if pids:
                            break
                        await asyncio.sleep(0.01)
                    else:
                        raise AssertionError("the replay never waited for the first delivery")
                finally:
                    await admin.close()
            await replaying
        finally:
            await first.close()
        assert await stored(db, channel_id) == size
        more = [
            (tenant_id, channel_id, s, new_id(), "u", None, 1, b"\x01", 0)
            for s in (size + 1, size + 2)
        ]
        await insert_rows(engine, tenant_id, rows[5:] + more)
        assert await stored(db, channel_id) == size + 2
        taken = (tenant_id, channel_id, 3, new_id(), "u", None, 1, b"\x02", 0)
        with pytest.raises(ConflictError):
            await insert_rows(engine, tenant_id, [taken])
    finally:
        await engine.close()
    assert await stored(db, channel_id) == size + 2
