"""Postgres engine (the cluster store): an asyncpg pool, row-level security per transaction.

Every transaction sets ``app.tenant_id`` with ``set_config(..., true)``: the setting is
local to the transaction, so it ends with the commit or rollback and a pooled connection
never carries one tenant into the next transaction. A transaction with no tenant set sees no
tenant rows at all: the policies compare ``tenant_id`` with a setting that is NULL or empty.

The SQL is the one the repositories write for both engines (``$1`` parameters, ``ON
CONFLICT``, ``RETURNING``); asyncpg returns BIGINT as int, BOOLEAN as bool and BYTEA as
bytes, which is what the repositories expect from SQLite too.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from protocol.errors import ConflictError, UnavailableError
from storage.engine import Dialect, Engine, PrivilegedRoleError, Row

_SET_TENANT = "SELECT set_config('app.tenant_id', $1, true)"

# A transaction opens with one simple query (one round trip): BEGIN, RESET ALL (so no
# session setting, whatever set it, outlives the transaction that follows: the pool's own
# reset query is not run, see ``_keep_session``) and the tenant, set locally, always ('' for
# none). The tenant travels as a literal only when it is plainly one (ids are UUIDs: no
# quote, no backslash can occur); anything else goes as a parameter in a round trip of its
# own.
_PLAIN_TENANT = re.compile(r"[0-9A-Za-z_-]{0,64}")
_BEGIN = {True: "BEGIN READ WRITE; RESET ALL", False: "BEGIN READ ONLY; RESET ALL"}

# Below this many rows an insert goes straight to ON CONFLICT DO NOTHING: ~4 µs of backend
# CPU per row against a savepoint's two extra round trips (SAVEPOINT, RELEASE). Batches of a
# quiet log (a few messages, acks waiting) are far below it; a backlog's chunks far above.
_SAVEPOINT_MIN_ROWS = 64

# Tables whose rows a routine of the schema stores in one call (migration 0007): the routine
# and the column that identifies a stored row (a row whose value is stored already is
# skipped, as ``insert_rows(skip_duplicates_of=...)`` skips it). Its arguments are the
# insert's: the constants, then one array per column, in the caller's order (``_insert_sql``),
# the first constant the tenant, which the routine also sets for its own transaction.
_INSERT_ROUTINES = {"messages": ("insert_messages", "id")}

# Failures that mean "the database is not there right now", as opposed to a bad statement.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)

_ROLE_FLAGS = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls
FROM pg_catalog.pg_roles r
WHERE pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')
  AND (r.rolsuper OR r.rolbypassrls)
ORDER BY r.rolname = current_user DESC, r.rolname
LIMIT 1
"""

_OWNED_RELATION = """
SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner) AS owner
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER')
ORDER BY n.nspname, c.relname
LIMIT 1
"""


class _Translated:
    """Maps driver failures to the store's errors, for statements this engine runs (never
    for exceptions raised by the caller's own code inside a transaction)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, asyncpg.UniqueViolationError):
            # SQLite serialises writers, so a check-then-insert there never races; here two
            # transactions can pass the check together and the constraint decides.
            raise ConflictError("already exists") from None
        if isinstance(exc, _UNAVAILABLE):
            raise UnavailableError("database unavailable") from exc


_translated = _Translated()


@functools.cache
def _insert_sql(
    table: str, columns: tuple[tuple[str, str], ...], constants: tuple[tuple[str, str], ...]
) -> str:
    """``INSERT ... SELECT $1, ..., unnest($k::type[]), ...``: the constants as scalar
    parameters first, then one array per column. The unnest calls sit in the select list
    (one ProjectSet node, arrays of one length zip row by row) rather than in FROM, where a
    function scan first copies every array's elements into a tuplestore: ~0.3 µs of backend
    CPU per row (docs/BENCHMARKS.md, the sixth session). The table, names and types are
    the repository's constants, never input; only the values are parameters."""
    names = ", ".join([name for name, _ in constants] + [name for name, _ in columns])
    values = [f"${i}::{kind}" for i, (_, kind) in enumerate(constants, 1)]
    values += [f"unnest(${i}::{kind}[])" for i, (_, kind) in enumerate(columns, len(constants) + 1)]
    return f"INSERT INTO {table} ({names}) SELECT {', '.join(values)}"


@functools.cache
def _routine_sql(
    routine: str, columns: tuple[tuple[str, str], ...], constants: tuple[tuple[str, str], ...]
) -> str:
    """``SELECT routine($1::type, ..., $k::type[], ...)``: the arguments ``_insert_sql``
    binds, in the same order. Names and types are the repository's constants."""
    values = [f"${i}::{kind}" for i, (_, kind) in enumerate(constants, 1)]
    values += [f"${i}::{kind}[]" for i, (_, kind) in enumerate(columns, len(constants) + 1)]
    return f"SELECT {routine}({', '.join(values)})"


def _insert_args(
    rows: Sequence[Sequence[Any]], constants: Sequence[tuple[str, str, Any]]
) -> list[Any]:
    """The values of ``_insert_sql`` and ``_routine_sql``: each constant, then each column
    as one list (sent as one typed array)."""
    return [value for _, _, value in constants] + [list(c) for c in zip(*rows, strict=True)]


class _PostgresTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        with _translated:
            await self._conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        # asyncpg pipelines the whole batch (one Sync, one round trip), so a batch insert is
        # one SQL source for both engines without a per-row wait.
        if rows:
            with _translated:
                await self._conn.executemany(sql, rows)

    async def insert_rows(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        *,
        skip_duplicates_of: str,
        constants: Sequence[tuple[str, str, Any]] = (),
    ) -> None:
        # One statement whatever the batch size: each column travels as one array (binary
        # protocol) and unnest() turns them back into rows. Unlike COPY it keeps the skip of
        # a replayed batch and needs no temporary table, which the application role may not
        # create. Row-level security checks every row.
        #
        # A replay is rare (a crash between commit and ``done``), so the rows of a large
        # batch are first sent as a plain INSERT inside a savepoint: ON CONFLICT probes the
        # arbiter index once more per row before inserting (~4 µs of backend CPU per message,
        # docs/BENCHMARKS.md). The unique index still decides: a row already stored (or
        # being stored by a concurrent transaction that commits) fails the plain INSERT, the
        # savepoint is rolled back, and the same rows go again with ON CONFLICT DO NOTHING,
        # so each row is stored exactly once either way.
        if not rows:
            return
        sql = _insert_sql(table, tuple(columns), tuple((n, k) for n, k, _ in constants))
        skip = f"{sql} ON CONFLICT ({skip_duplicates_of}) DO NOTHING"
        args = _insert_args(rows, constants)
        with _translated:
            if len(rows) < _SAVEPOINT_MIN_ROWS:
                # A few rows: the arbiter probes cost less than the savepoint's two round
                # trips, which a small batch (acks waiting on it) would wait for.
                await self._conn.execute(skip, *args)
                return
            try:
                await self._conn.execute("SAVEPOINT insert_rows")
                await self._conn.execute(sql, *args)
                await self._conn.execute("RELEASE SAVEPOINT insert_rows")
                return
            except asyncpg.UniqueViolationError:
                await self._conn.execute("ROLLBACK TO SAVEPOINT insert_rows")
            await self._conn.execute(skip, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        with _translated:
            rows: list[Row] = await self._conn.fetch(sql, *args)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        with _translated:
            row: Row | None = await self._conn.fetchrow(sql, *args)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        with _translated:
            return await self._conn.fetchval(sql, *args)

    async def set_tenant(self, tenant_id: str | None) -> None:
        # '' rather than NULL: it matches no tenant id, and set_config(NULL) would mean RESET.
        with _translated:
            await self._conn.execute(_SET_TENANT, tenant_id or "")


class PostgresEngine:
    """One pool per process. Serves any number of nodes: isolation and ordering are the
    database's, not this object's."""

    dialect: Dialect = "postgres"

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 10, write_lanes: int = 4
    ) -> None:
        self.url = url
        # Bulk writes (the persistence worker) run up to this many transactions at once: a
        # backend's per-row work (constraints, indexes, WAL) is the bulk of a batch's cost,
        # and while one lane waits for its commit's flush or its next chunk, the others keep
        # the cores busy (4 lanes stored ~10% more per second than 2 on two cores,
        # docs/BENCHMARKS.md). A small batch uses fewer (storage/messages.py).
        self.write_lanes = min(write_lanes, max_size)
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self._min_size,
                max_size=self._max_size,
                server_settings={"application_name": "baychat"},
                reset=_keep_session,
            )
        except _UNAVAILABLE as exc:
            raise UnavailableError("database unreachable") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def check_role(self) -> None:
        async with self.transaction("check_role") as tx:
            user = await tx.fetchval("SELECT current_user")
            flags = await tx.fetchrow(_ROLE_FLAGS)
            owned = await tx.fetchrow(_OWNED_RELATION)
        advice = (
            " Such a role can bypass or switch off row-level security, so this process would"
            " not be held to one tenant per transaction. Connect BAYCHAT_DATABASE_URL as an"
            " application role that owns nothing and has neither SUPERUSER nor BYPASSRLS;"
            " only BAYCHAT_DATABASE_OWNER_URL (used by `baychat migrate`) may own the schema."
        )
        if flags is not None:
            what = "SUPERUSER" if flags["rolsuper"] else "BYPASSRLS"
            via = "" if flags["rolname"] == user else f" through role {flags['rolname']!r}"
            raise PrivilegedRoleError(
                f"refusing to start: database role {user!r} has {what}{via}." + advice
            )
        if owned is not None:
            raise PrivilegedRoleError(
                f"refusing to start: database role {user!r} owns table"
                f" {owned['nspname']}.{owned['relname']} (owner {owned['owner']!r})." + advice
            )

    @asynccontextmanager
    async def transaction(
        self, name: str, *, tenant_id: str | None = None, write: bool = False
    ) -> AsyncIterator[_PostgresTx]:
        if self._pool is None:
            raise RuntimeError("engine is not open")
        with _translated:
            conn = await self._pool.acquire()
        try:
            try:
                # Read-only unless declared otherwise: a write hidden in a read path fails
                # here instead of slipping past SQLite's writer lock unnoticed.
                tenant = tenant_id or ""
                with _translated:
                    if _PLAIN_TENANT.fullmatch(tenant):
                        await conn.execute(
                            f"{_BEGIN[write]}; SELECT set_config('app.tenant_id', '{tenant}', true)"
                        )
                    else:
                        await conn.execute(_BEGIN[write])
                        await conn.execute(_SET_TENANT, tenant)
                yield _PostgresTx(conn)
            except BaseException:
                # A connection that broke mid-transaction is discarded by the pool; the
                # caller's exception is the one worth seeing.
                if not conn.is_closed() and conn.is_in_transaction():
                    with contextlib.suppress(asyncpg.InterfaceError, *_UNAVAILABLE):
                        await conn.execute("ROLLBACK")
                raise
            with _translated:
                status = await conn.execute("COMMIT")
            if status != "COMMIT":
                # Postgres answers COMMIT of a failed transaction with ROLLBACK, not an
                # error: a statement failed and its error was swallowed inside. Nothing was
                # stored, so nothing may be acknowledged.
                raise RuntimeError(f"transaction {name!r} was rolled back at commit")
        finally:
            await self._pool.release(conn)

    async def insert_committed(
        self,
        name: str,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        *,
        tenant_id: str,
        skip_duplicates_of: str,
        constants: Sequence[tuple[str, str, Any]] = (),
    ) -> None:
        if not rows:
            return
        routine, key = _INSERT_ROUTINES.get(table, ("", ""))
        if (
            not routine
            or key != skip_duplicates_of
            or not constants
            or constants[0] != ("tenant_id", "text", tenant_id)
        ):
            async with self.transaction(name, tenant_id=tenant_id, write=True) as tx:
                await tx.insert_rows(
                    table, columns, rows, skip_duplicates_of=skip_duplicates_of, constants=constants
                )
            return
        if self._pool is None:
            raise RuntimeError("engine is not open")
        sql = _routine_sql(routine, tuple(columns), tuple((n, k) for n, k, _ in constants))
        args = _insert_args(rows, constants)
        with _translated:
            conn = await self._pool.acquire()
        try:
            # No BEGIN: Postgres runs the call in an implicit transaction, committed before
            # it answers, and an error rolls it back (then raised here: nothing stored).
            with _translated:
                await conn.execute(sql, *args)
            if conn.is_in_transaction():
                # Only if a transaction was left open on the connection, which the pool
                # never hands out: then the call is not committed, and must not pass for it.
                with contextlib.suppress(asyncpg.InterfaceError, *_UNAVAILABLE):
                    await conn.execute("ROLLBACK")
                raise RuntimeError(f"{name!r} ran inside an open transaction; rolled back")
        finally:
            await self._pool.release(conn)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, as a no-op: asyncpg's default sends one more query per
    transaction (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL). Before this is called the
    pool has already rolled back any transaction left open. This engine takes no advisory
    lock, opens no cursor WITH HOLD and listens to nothing; settings are reset and the tenant
    set at the start of every transaction (``_BEGIN``), so a pooled connection carries no
    tenant and no setting into the next one."""
    return None


_check: Engine = PostgresEngine("postgresql://")
