"""The database engine seam: one SQL dialect written once, with ``$1``-style parameters.

An engine hands out named transactions. A transaction opened for a tenant makes that tenant
the only one visible where the backend can enforce it (Postgres row-level security through
``set_config('app.tenant_id', ..., true)``); SQLite relies on the scoped repositories, which
filter every statement by tenant and check every returned row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

Row = Mapping[str, Any]
Dialect = Literal["sqlite", "postgres"]


class PrivilegedRoleError(RuntimeError):
    """The application is connected with a role that row-level security does not bind."""


class Tx(Protocol):
    async def execute(self, sql: str, *args: Any) -> None: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def insert_rows(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        *,
        skip_duplicates_of: str,
        constants: Sequence[tuple[str, str, Any]] = (),
    ) -> None:
        """Insert ``rows`` (values in ``columns`` order; each column is ``(name, SQL type)``)
        into ``table``, skipping rows whose ``skip_duplicates_of`` value is already stored.
        ``constants`` are ``(name, SQL type, value)`` of columns that hold the same value in
        every row, sent once rather than in each row.

        Postgres sends the whole batch as one statement (one array per column, ``unnest``):
        one parse, one plan, one round trip, however many rows. SQLite runs one prepared
        ``INSERT`` per row inside its thread. ``table`` and the column names are the
        repository's constants, never input.
        """
        ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def set_tenant(self, tenant_id: str | None) -> None:
        """Make ``tenant_id`` the tenant this transaction may see (None: no tenant)."""
        ...


class Engine(Protocol):
    dialect: Dialect
    # How many write transactions a bulk writer may run at once (the persistence worker's
    # lanes): 1 where writers are serialised anyway (SQLite).
    write_lanes: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def check_role(self) -> None:
        """Raise ``PrivilegedRoleError`` if this connection's role could bypass tenant
        isolation in the database (it owns a table, is a superuser or has BYPASSRLS, itself
        or through a role it can become). Gateways and workers call it at start-up; the
        migration path, which must own the schema, does not. A no-op where the database
        enforces nothing (SQLite)."""
        ...

    def transaction(
        self, name: str, *, tenant_id: str | None = None, write: bool = False
    ) -> AbstractAsyncContextManager[Tx]:
        """A transaction, committed on clean exit and rolled back on an exception.

        ``name`` labels it in logs and metrics. ``tenant_id`` is set for the whole
        transaction; None means no tenant (only tenant-free tables are visible in Postgres).
        ``write`` marks transactions that write, so SQLite can serialise them.
        """
        ...

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
        """``Tx.insert_rows`` alone in a write transaction named ``name`` for ``tenant_id``,
        committed when this returns (it raises if it was not).

        Postgres makes it one round trip where the schema has a routine for ``table``
        (``insert_<table>``, storage/postgres.py) instead of three (the transaction's
        opening query, the insert, COMMIT): the same statement, checked by the same
        row-level security, in an implicit transaction of the routine's own call. SQLite
        makes a few rows one multi-row INSERT outside ``BEGIN``, a transaction of its own:
        one hand-off to its connection's thread instead of three.
        """
        ...


def database_user(url: str) -> str | None:
    """The role a database URL logs in as (None when the URL names none, as SQLite's)."""
    user = urlsplit(url).username
    return unquote(user) if user else None


def open_engine(url: str) -> Engine:
    """Choose the engine by URL scheme; imports are lazy so SQLite users need no driver."""
    if url.startswith("sqlite:"):
        from storage.sqlite import SQLiteEngine

        return SQLiteEngine(url)
    if url.startswith(("postgres://", "postgresql://")):
        from storage.postgres import PostgresEngine

        engine: Engine = PostgresEngine(url)
        return engine
    raise ValueError("unsupported database URL scheme (use sqlite:/// or postgresql://)")
