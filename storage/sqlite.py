"""SQLite engine (the embedded default). Serves one process: one writer, one reader.

WAL mode with ``synchronous=FULL`` so that a committed transaction survives a killed process
and a power cut. Writes are serialised by a lock (SQLite allows one writer anyway); reads use
a second connection and do not wait for writes. Every statement is a hand-off to the
connection's thread and back, so a few rows stored on their own (``insert_committed``, a
quiet log's batch) go as one statement, which SQLite commits as a transaction of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from protocol.errors import ConflictError
from storage.engine import Dialect, Row

_PARAM = re.compile(r"\$(\d+)")


def _translate(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - deliberate memo
    translated = cache.get(sql)
    if translated is None:
        translated = cache[sql] = _PARAM.sub(r"?\1", sql)
    return translated


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` to a path."""
    if not url.startswith("sqlite:///"):
        raise ValueError("SQLite URLs look like sqlite:///path/to/file.db")
    return Path(url[len("sqlite:///") :])


# ``insert_committed`` sends at most this many rows as one multi-row INSERT: the small batches
# of a quiet log, where the thread hand-offs of BEGIN and COMMIT are most of the cost. A
# larger batch spreads them over its rows and goes as BEGIN, executemany, COMMIT, one
# prepared statement whatever its size, rather than a statement compiled for each row
# count up to 250 (sent whole, `persist` at 10,000 msgs/s measured the same either way).
_STATEMENT_ROWS = 16
# The parameters one statement may have wherever SQLite runs (SQLITE_MAX_VARIABLE_NUMBER's
# default before SQLite 3.32; 32,766 since).
_MAX_PARAMS = 999


@functools.lru_cache(maxsize=2 * _STATEMENT_ROWS)
def _multi_row_insert(
    table: str, names: tuple[str, ...], constants: int, width: int, count: int, skip: str
) -> str:
    """``INSERT INTO table (names) VALUES (...), ... ON CONFLICT (skip) DO NOTHING`` for
    ``count`` rows: the ``constants`` first parameters appear in every row, then each row has
    ``width`` parameters of its own. Numbered parameters, as ``_translate`` makes them."""
    shared = [f"?{i}" for i in range(1, constants + 1)]
    values = []
    for row in range(count):
        first = constants + row * width + 1
        values.append(", ".join(shared + [f"?{i}" for i in range(first, first + width)]))
    rows = "), (".join(values)
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({rows})"  # noqa: S608 - constants
        f" ON CONFLICT ({skip}) DO NOTHING"
    )


_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})


class _Translated:
    """A unique or primary key refusing a row is the store's ``ConflictError``, as on
    Postgres (storage/postgres.py), so callers see one error whichever store they have."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorname in _UNIQUE:
            raise ConflictError("already exists") from None


_translated = _Translated()


class _SQLiteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        with _translated:
            await self._conn.execute(_translate(sql), args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with _translated:
            await self._conn.executemany(_translate(sql), rows)

    async def insert_rows(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        *,
        skip_duplicates_of: str,
        constants: Sequence[tuple[str, str, Any]] = (),
    ) -> None:
        if not rows:
            return
        names = ", ".join([name for name, _, _ in constants] + [name for name, _ in columns])
        params = ", ".join(f"?{i}" for i in range(1, len(constants) + len(columns) + 1))
        sql = f"INSERT INTO {table} ({names}) VALUES ({params})"  # noqa: S608 - constants
        if constants:
            values = tuple(value for _, _, value in constants)
            rows = [values + tuple(row) for row in rows]
        with _translated:
            await self._conn.executemany(
                f"{sql} ON CONFLICT ({skip_duplicates_of}) DO NOTHING", rows
            )

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._conn.execute(_translate(sql), args) as cursor:
            return list(await cursor.fetchall())  # type: ignore[arg-type]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._conn.execute(_translate(sql), args) as cursor:
            return await cursor.fetchone()  # type: ignore[return-value]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]  # type: ignore[index]

    async def set_tenant(self, tenant_id: str | None) -> None:
        # SQLite has no row-level security; scoped repositories filter and check rows.
        return None


async def _end(conn: aiosqlite.Connection, *, commit: bool) -> None:
    """COMMIT or ROLLBACK a transaction of ``conn``'s, leaving none open whatever happens.

    A COMMIT that fails (a deferred constraint, a full disk, an I/O error) may leave the
    transaction open, and then every later BEGIN on the connection would fail: the writer,
    and with it every persistence batch, would be stuck. It is rolled back, so the caller
    sees the error, nothing is stored and the connection goes on. ``in_transaction`` is
    read after a statement of the connection's own thread, so it is not read before a
    BEGIN still queued there has run."""
    if commit:
        try:
            await conn.execute("COMMIT")
            return
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # the COMMIT's error is the one to see
                await _end(conn, commit=False)
            raise
    await conn.execute("SELECT 1")  # after anything still queued on the connection
    if conn.in_transaction:
        await conn.execute("ROLLBACK")


class SQLiteEngine:
    dialect: Dialect = "sqlite"
    write_lanes = 1  # one writer connection: concurrent writes would only queue

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        self._reader = await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=10000")
        # Erased rows (GDPR) are overwritten, not just unlinked from the b-tree.
        await conn.execute("PRAGMA secure_delete=ON")
        return conn

    async def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.close()
        self._writer = self._reader = None

    async def check_role(self) -> None:
        # A SQLite file has no roles: whoever can open it can read it. Isolation rests on
        # the scoped repositories, which is why only Postgres has a role to check.
        return None

    @asynccontextmanager
    async def transaction(
        self, name: str, *, tenant_id: str | None = None, write: bool = False
    ) -> AsyncIterator[_SQLiteTx]:
        conn, lock = (self._writer, self._write_lock) if write else (self._reader, self._read_lock)
        if conn is None:
            raise RuntimeError("engine is not open")
        async with lock:
            try:
                # Inside the try: a caller cancelled while its BEGIN waits for the thread
                # still has the transaction rolled back (after the BEGIN, in the thread's
                # order), instead of leaving it open for every later BEGIN to fail on.
                await conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield _SQLiteTx(conn)
            except BaseException:
                await _end(conn, commit=False)
                raise
            with _translated:
                await _end(conn, commit=True)

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
        # In-process, but each statement is a hand-off to aiosqlite's thread and back (a
        # wake-up, a wait for the GIL, a wake-up of the loop): a few rows go as one
        # multi-row INSERT outside BEGIN, which SQLite runs as a transaction of its own
        # and commits (synchronous=FULL) before it returns, one hand-off instead of three.
        if not rows:
            return
        if len(rows) > _STATEMENT_ROWS or len(constants) + len(columns) * len(rows) > _MAX_PARAMS:
            async with self.transaction(name, tenant_id=tenant_id, write=True) as tx:
                await tx.insert_rows(
                    table, columns, rows, skip_duplicates_of=skip_duplicates_of, constants=constants
                )
            return
        conn = self._writer
        if conn is None:
            raise RuntimeError("engine is not open")
        names = tuple([n for n, _, _ in constants] + [n for n, _ in columns])
        sql = _multi_row_insert(
            table, names, len(constants), len(columns), len(rows), skip_duplicates_of
        )
        args = [value for _, _, value in constants]
        for row in rows:
            args.extend(row)
        async with self._write_lock:
            # No transaction of this engine's is open on the writer outside the lock, so the
            # statement is a transaction of its own: committed (synchronous=FULL) when it
            # returns, rolled back whole when it fails.
            with _translated:
                await conn.execute(sql, args)
            if conn.in_transaction:  # never: it would mean the rows are not committed yet
                await _end(conn, commit=False)
                raise RuntimeError(f"{name}: the insert ran inside an open transaction")
