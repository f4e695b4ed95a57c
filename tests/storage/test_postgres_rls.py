"""Row-level security, proved from the catalogue and from behaviour, and the fail-closed
start-up check. Raw asyncpg as the application role: no repository filters in the way."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from server.auth.authority import scope_for_operator, scope_for_system
from server.runtime import Runtime
from storage.engine import PrivilegedRoleError, Tx, open_engine
from storage.ids import new_id, now_ms
from storage.messages import ROW_COLUMNS
from storage.migrations import SchemaVersionError, latest_version, migrate
from storage.models import Message
from storage.postgres import PostgresEngine
from storage.store import Store
from tests.backends import PostgresDatabase, fresh_postgres
from tests.harness import make_settings
from tests.storage.stores import opened_store, store_for

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

TENANT_TABLES = {"users", "channels", "channel_members", "messages", "sessions", "refresh_tokens"}
SET_TENANT = "SELECT set_config('app.tenant_id', $1, true)"


@dataclass
class Pair:
    a: str
    b: str


async def seed_tenant(store: Store) -> str:
    """A tenant with a row in every tenant table."""
    tenant = await store.tenants.create(f"t-{secrets.token_hex(4)}")
    scope = scope_for_operator(tenant.id)
    user = await store.users.create(scope, "alice@example.com", "hash", "owner")
    channel = await store.channels.create(scope, "secret", private=True, created_by=user.id)
    await store.channels.add_member(scope, channel.id, user.id)
    await store.sessions.create(scope, user.id, new_id(), lifetime_ms=60_000, user_agent="", ip="")
    message = Message(tenant.id, channel.id, "secret", 1, new_id(), user.id, "hi", now_ms())
    await store.messages.insert_batch([(scope_for_system(tenant.id), message)])
    return tenant.id


@pytest_asyncio.fixture(loop_scope="module")
async def pair(db: PostgresDatabase, tmp_path: Path) -> Pair:
    async with opened_store(db.owner_url, db.app_url, tmp_path / "keys") as store:
        return Pair(await seed_tenant(store), await seed_tenant(store))


@pytest_asyncio.fixture(loop_scope="module")
async def app(db: PostgresDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db.app_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="module")
async def one_connection(db: PostgresDatabase) -> AsyncIterator[PostgresEngine]:
    """The application's engine with a pool of one connection: every transaction of a test
    runs on the same pooled connection, so anything it leaked would show in the next."""
    engine = PostgresEngine(db.app_url, min_size=1, max_size=1)
    await engine.open()
    try:
        yield engine
    finally:
        await engine.close()


async def tenants_seen(conn: asyncpg.Connection, table: str) -> set[str]:
    return {r["tenant_id"] for r in await conn.fetch(f"SELECT tenant_id FROM {table}")}  # noqa: S608


# -- the catalogue ----------------------------------------------------------------------


async def test_every_table_with_a_tenant_id_has_forced_row_level_security(
    db: PostgresDatabase,
) -> None:
    admin = await asyncpg.connect(db.admin_url)
    try:
        rows = await admin.fetch(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND EXISTS ("
            "  SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid"
            "  AND a.attname = 'tenant_id' AND NOT a.attisdropped)"
        )
        policies = {
            r["tablename"]: r
            for r in await admin.fetch(
                "SELECT tablename, cmd, permissive, qual, with_check FROM pg_policies"
                " WHERE schemaname = 'public' AND policyname = 'tenant_isolation'"
            )
        }
        directory = await admin.fetchrow(
            "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.tenants'::regclass"
        )
    finally:
        await admin.close()
    assert {r["relname"] for r in rows} >= TENANT_TABLES
    for row in rows:
        table = row["relname"]
        assert (row["relrowsecurity"], row["relforcerowsecurity"]) == (True, True), table
        policy = policies[table]
        assert (policy["cmd"], policy["permissive"]) == ("ALL", "PERMISSIVE"), table
        for expression in (policy["qual"], policy["with_check"]):
            assert expression == "(tenant_id = current_setting('app.tenant_id'::text, true))"
    assert directory is not None
    assert directory["relrowsecurity"] is False  # the directory: slug -> id, no user content


async def test_app_role_owns_nothing_and_bypasses_nothing(
    db: PostgresDatabase, app: asyncpg.Connection
) -> None:
    flags = await app.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    assert flags is not None
    assert (flags["rolsuper"], flags["rolbypassrls"]) == (False, False)
    owned = await app.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND pg_has_role(current_user, c.relowner, 'MEMBER')"
    )
    assert owned == []
    assert await app.fetchval("SELECT current_user") == db.app_role


# -- behaviour --------------------------------------------------------------------------


async def test_tenant_a_reads_only_its_own_rows(pair: Pair, app: asyncpg.Connection) -> None:
    async with app.transaction():
        await app.execute(SET_TENANT, pair.a)
        for table in TENANT_TABLES:
            assert await tenants_seen(app, table) == {pair.a}, table
            assert (
                await app.fetchval(
                    f"SELECT count(*) FROM {table} WHERE tenant_id = $1",  # noqa: S608
                    pair.b,
                )
                == 0
            ), table


async def test_tenant_a_cannot_update_or_delete_tenant_bs_rows(
    db: PostgresDatabase, pair: Pair, app: asyncpg.Connection
) -> None:
    async with app.transaction():
        await app.execute(SET_TENANT, pair.a)
        assert (
            await app.execute(
                "UPDATE users SET email = 'owned@evil.example' WHERE tenant_id = $1", pair.b
            )
            == "UPDATE 0"
        )
        assert (
            await app.execute("UPDATE sessions SET revoked_at = 1 WHERE tenant_id = $1", pair.b)
            == "UPDATE 0"
        )
        # The application has no DELETE at all (migrate grants what the code uses).
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await app.execute("DELETE FROM messages WHERE tenant_id = $1", pair.b)
    # FORCE binds even the owner: with tenant A set, B's rows are out of its reach too.
    owner = await asyncpg.connect(db.owner_url)
    try:
        transaction = owner.transaction()
        await transaction.start()
        await owner.execute(SET_TENANT, pair.a)
        for table in TENANT_TABLES:
            deleted = await owner.execute(
                f"DELETE FROM {table} WHERE tenant_id = $1",  # noqa: S608
                pair.b,
            )
            assert deleted == "DELETE 0", table
        await transaction.rollback()
    finally:
        await owner.close()
    admin = await asyncpg.connect(db.admin_url)
    try:
        email = await admin.fetchval("SELECT email FROM users WHERE tenant_id = $1", pair.b)
        revoked = await admin.fetchval(
            "SELECT revoked_at FROM sessions WHERE tenant_id = $1", pair.b
        )
        messages = await admin.fetchval(
            "SELECT count(*) FROM messages WHERE tenant_id = $1", pair.b
        )
    finally:
        await admin.close()
    assert (email, revoked, messages) == ("alice@example.com", None, 1)


async def as_tenant(conn: asyncpg.Connection, tenant_id: str, sql: str, *args: object) -> str:
    async with conn.transaction():
        await conn.execute(SET_TENANT, tenant_id)
        status: str = await conn.execute(sql, *args)
        return status


async def test_tenant_a_cannot_write_a_row_for_tenant_b(
    pair: Pair, app: asyncpg.Connection
) -> None:
    plant = (
        "INSERT INTO channels (tenant_id, id, name, private, created_by, created_at)"
        " VALUES ($1, $2, 'planted', FALSE, 'x', 0)"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await as_tenant(app, pair.a, plant, pair.b, new_id())
    # Nor move one of its own rows over to B.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await as_tenant(app, pair.a, "UPDATE sessions SET tenant_id = $1", pair.b)
    assert await as_tenant(app, pair.a, plant, pair.a, new_id()) == "INSERT 0 1"


async def test_the_batch_insert_is_held_to_the_tenant_set_for_it(
    db: PostgresDatabase, pair: Pair
) -> None:
    """The worker's one-statement batch insert (unnest) passes through row-level security
    row by row: a row of tenant B in a group written with tenant A set is refused, and the
    whole transaction with it."""
    engine = PostgresEngine(db.app_url)
    await engine.open()
    try:
        async with engine.transaction("test_seed", tenant_id=pair.b) as tx:
            channel_b = await tx.fetchval("SELECT id FROM channels LIMIT 1")
        columns = (("tenant_id", "text"), ("channel_id", "text"), ("seq", "bigint"))
        columns += (("id", "text"), ("sender_id", "text"), ("client_msg_id", "text"))
        columns += (("key_version", "integer"), ("envelope", "bytea"), ("sent_at", "bigint"))

        def row(seq: int) -> tuple[object, ...]:
            return (pair.b, channel_b, seq, new_id(), "x", None, 1, b"\x01", now_ms())

        async def two_groups() -> None:
            async with engine.transaction("test_planted", write=True) as tx:
                await tx.set_tenant(pair.b)
                await tx.insert_rows("messages", columns, [row(100)], skip_duplicates_of="id")
                await tx.set_tenant(pair.a)
                await tx.insert_rows("messages", columns, [row(101)], skip_duplicates_of="id")

        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await two_groups()
        async with engine.transaction("test_count", tenant_id=pair.b) as tx:
            stored = await tx.fetchval("SELECT count(*) FROM messages WHERE seq >= 100")
        assert stored == 0  # the allowed group was rolled back with the refused one
    finally:
        await engine.close()


async def test_the_batch_insert_with_the_tenant_sent_once_is_held_to_the_tenant_set(
    db: PostgresDatabase, pair: Pair
) -> None:
    """The worker sends tenant_id once per statement, as a scalar parameter, not in each
    row: row-level security still checks every row it fills in, so tenant B's id sent with
    tenant A set is refused, and the rows of A written before it in that transaction roll
    back with it."""
    engine = PostgresEngine(db.app_url)
    await engine.open()
    try:
        async with engine.transaction("test_seed", tenant_id=pair.b) as tx:
            channel_b = await tx.fetchval("SELECT id FROM channels LIMIT 1")
        async with engine.transaction("test_seed", tenant_id=pair.a) as tx:
            channel_a = await tx.fetchval("SELECT id FROM channels LIMIT 1")

        async def insert(tx: Tx, tenant_id: str, channel_id: str) -> None:
            rows = [(channel_id, seq, new_id(), "x", None, b"\x01", now_ms()) for seq in (200, 201)]
            constants = (("tenant_id", "text", tenant_id), ("key_version", "integer", 1))
            await tx.insert_rows(
                "messages", ROW_COLUMNS, rows, constants=constants, skip_duplicates_of="id"
            )

        async def a_then_b() -> None:
            async with engine.transaction("test_planted", write=True) as tx:
                await tx.set_tenant(pair.a)
                await insert(tx, pair.a, channel_a)
                await insert(tx, pair.b, channel_b)

        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await a_then_b()
        for tenant_id in (pair.a, pair.b):
            async with engine.transaction("test_count", tenant_id=tenant_id) as tx:
                assert await tx.fetchval("SELECT count(*) FROM messages WHERE seq >= 200") == 0
    finally:
        await engine.close()


async def test_no_tenant_set_sees_no_rows(pair: Pair, app: asyncpg.Connection) -> None:
    async with app.transaction():
        for table in TENANT_TABLES:
            assert await tenants_seen(app, table) == set(), table
        assert await app.fetchval("SELECT count(*) FROM tenants") >= 2
    # A tenant set and committed earlier on this connection does not linger.
    async with app.transaction():
        await app.execute(SET_TENANT, pair.a)
    async with app.transaction():
        for table in TENANT_TABLES:
            assert await tenants_seen(app, table) == set(), table


async def test_two_tenants_in_turn_on_one_pooled_connection_leak_nothing(
    db: PostgresDatabase, pair: Pair
) -> None:
    pool = await asyncpg.create_pool(db.app_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            first_pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute(SET_TENANT, pair.a)
            assert await tenants_seen(conn, "messages") == {pair.a}
        async with pool.acquire() as conn, conn.transaction():
            assert await conn.fetchval("SELECT pg_backend_pid()") == first_pid
            await conn.execute(SET_TENANT, pair.b)
            for table in TENANT_TABLES:
                assert await tenants_seen(conn, table) == {pair.b}, table
    finally:
        await pool.close()


async def test_engine_transactions_switch_tenants_on_one_connection(
    one_connection: PostgresEngine, pair: Pair
) -> None:

    async def seen(tenant_id: str | None) -> set[str]:
        async with one_connection.transaction("test_seen", tenant_id=tenant_id) as tx:
            return {r["tenant_id"] for r in await tx.fetch("SELECT tenant_id FROM users")}

    assert await seen(pair.a) == {pair.a}
    assert await seen(pair.b) == {pair.b}
    assert await seen(None) == set()
    # The worker writes several tenants in one transaction, switching as it goes.
    async with one_connection.transaction("test_switch", write=True) as tx:
        assert await tx.fetch("SELECT tenant_id FROM users") == []
        await tx.set_tenant(pair.a)
        assert {r["tenant_id"] for r in await tx.fetch("SELECT tenant_id FROM users")} == {pair.a}
        await tx.set_tenant(pair.b)
        assert {r["tenant_id"] for r in await tx.fetch("SELECT tenant_id FROM users")} == {pair.b}
        await tx.set_tenant(None)
        assert await tx.fetch("SELECT tenant_id FROM users") == []


async def test_no_session_state_outlives_an_engine_transaction(
    one_connection: PostgresEngine, pair: Pair
) -> None:
    """The pool skips asyncpg's reset query on release: each transaction resets the session's
    settings and sets its own tenant as it opens. A tenant and a setting left at session
    level on the pooled connection (on purpose here: ``is_local`` false, a plain ``SET``)
    reach no later transaction."""
    async with one_connection.transaction("test_leak", write=True) as tx:
        pid = await tx.fetchval("SELECT pg_backend_pid()")
        timeout = await tx.fetchval("SHOW statement_timeout")
        await tx.execute("SELECT set_config('app.tenant_id', $1, false)", pair.a)
        await tx.execute("SET statement_timeout = 4321")
    async with one_connection.transaction("test_no_tenant") as tx:
        assert await tx.fetchval("SELECT pg_backend_pid()") == pid
        for table in TENANT_TABLES:
            assert await tx.fetch(f"SELECT tenant_id FROM {table}") == [], table  # noqa: S608
        assert await tx.fetchval("SHOW statement_timeout") == timeout
    async with one_connection.transaction("test_tenant_b", tenant_id=pair.b) as tx:
        assert await tx.fetchval("SELECT pg_backend_pid()") == pid
        for table in TENANT_TABLES:
            rows = await tx.fetch(f"SELECT tenant_id FROM {table}")  # noqa: S608
            assert {r["tenant_id"] for r in rows} == {pair.b}, table


async def test_a_tenant_id_that_is_not_a_plain_token_is_bound_as_a_parameter(
    one_connection: PostgresEngine, pair: Pair
) -> None:
    """Plain ids travel as a literal in the transaction's opening query; anything else as a
    parameter, so a quote in it is data, never SQL."""
    hostile = f"x', false); SELECT set_config('app.tenant_id', '{pair.a}"
    async with one_connection.transaction("test_hostile", tenant_id=hostile) as tx:
        assert await tx.fetchval("SELECT current_setting('app.tenant_id')") == hostile
        assert await tx.fetch("SELECT tenant_id FROM users") == []
    async with one_connection.transaction("test_after") as tx:
        assert await tx.fetch("SELECT tenant_id FROM users") == []


async def test_a_transaction_whose_statement_failed_is_never_reported_committed(
    one_connection: PostgresEngine, pair: Pair
) -> None:
    """Postgres answers COMMIT of a failed transaction with ROLLBACK, not an error: an error
    swallowed inside must not let the transaction pass for committed (an ack means stored).
    Also: a transaction not declared ``write`` stays read-only."""

    async def delete_in_a_read_only_transaction() -> None:
        async with one_connection.transaction("test_read_only", tenant_id=pair.a) as tx:
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await tx.execute("DELETE FROM sessions")

    async def delete_then_swallow_an_error() -> None:
        async with one_connection.transaction("test_swallowed", tenant_id=pair.a, write=True) as tx:
            await tx.execute("DELETE FROM sessions")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await tx.fetchval("SELECT 1 / 0")

    with pytest.raises(RuntimeError, match="rolled back at commit"):
        await delete_in_a_read_only_transaction()
    with pytest.raises(RuntimeError, match="rolled back at commit"):
        await delete_then_swallow_an_error()
    async with one_connection.transaction("test_count", tenant_id=pair.a) as tx:
        assert await tx.fetchval("SELECT count(*) FROM sessions") == 1


# -- versions and grants ----------------------------------------------------------------


async def test_app_role_reads_the_version_and_needs_no_create_when_current(
    db: PostgresDatabase,
) -> None:
    engine = open_engine(db.app_url)
    await engine.open()
    try:
        assert await migrate(engine, app_role=db.app_role) == []
    finally:
        await engine.close()
    assert latest_version("postgres") >= 1


async def test_an_unmigrated_database_is_refused_as_behind(tmp_path: Path) -> None:
    async with fresh_postgres() as fresh:
        store = store_for(fresh.app_url, tmp_path)
        with pytest.raises(SchemaVersionError, match="run `baychat migrate`"):
            await store.open()


# -- fail closed ------------------------------------------------------------------------


async def test_the_owner_url_is_refused_at_start_up(db: PostgresDatabase, tmp_path: Path) -> None:
    with pytest.raises(PrivilegedRoleError, match=r"owns table public\.\w+") as refused:
        await store_for(db.owner_url, tmp_path).open()
    assert db.owner_role in str(refused.value)
    assert "BAYCHAT_DATABASE_URL" in str(refused.value)


async def test_a_superuser_url_is_refused_at_start_up(db: PostgresDatabase, tmp_path: Path) -> None:
    with pytest.raises(PrivilegedRoleError, match="has SUPERUSER"):
        await store_for(db.admin_url, tmp_path).open()


async def test_a_gateway_configured_with_the_owner_url_does_not_start(
    db: PostgresDatabase, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path).with_(
        database_url=db.owner_url, database_owner_url=db.owner_url
    )
    with pytest.raises(PrivilegedRoleError, match="refusing to start"):
        await Runtime.start(settings)


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [("BYPASSRLS", "has BYPASSRLS"), ("IN ROLE {owner}", "owns table")],
    ids=["bypassrls", "member-of-owner"],
)
async def test_roles_that_can_escape_rls_are_refused(
    db: PostgresDatabase, tmp_path: Path, attributes: str, reason: str
) -> None:
    role, password = f"{db.name}_{secrets.token_hex(3)}", secrets.token_hex(16)
    admin = await asyncpg.connect(db.admin_url)
    try:
        await admin.execute(
            f"CREATE ROLE {role} LOGIN PASSWORD '{password}' "
            + attributes.format(owner=db.owner_role)
        )
        await admin.execute(f"GRANT CONNECT ON DATABASE {db.name} TO {role}")
        url = f"postgresql://{role}:{password}@{db.app_url.split('@', 1)[1]}"
        with pytest.raises(PrivilegedRoleError, match=reason):
            await store_for(url, tmp_path).open()
    finally:
        await admin.execute(f"REVOKE CONNECT ON DATABASE {db.name} FROM {role}")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_the_app_url_passes_the_start_up_check(db: PostgresDatabase, tmp_path: Path) -> None:
    store = store_for(db.app_url, tmp_path)
    await store.open()
    await store.close()
