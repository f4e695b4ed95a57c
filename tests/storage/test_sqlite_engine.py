"""The SQLite engine's transactions end, whatever ends them: a COMMIT that fails, a caller
cancelled while its BEGIN is still queued on the connection's thread. Rows inserted in a
transaction of their own are one statement, committed whole or not at all."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.sqlite import SQLiteEngine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[SQLiteEngine]:
    engine = SQLiteEngine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await engine.open()
    async with engine.transaction("schema", write=True) as tx:
        await tx.execute("CREATE TABLE parent (id TEXT PRIMARY KEY)")
        # Checked at COMMIT, not at the INSERT: the way to make a COMMIT fail.
        await tx.execute(
            "CREATE TABLE child (id TEXT PRIMARY KEY,"
            " parent TEXT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )
        await tx.execute("INSERT INTO parent (id) VALUES ($1)", "p")
    yield engine
    await engine.close()


async def children(engine: SQLiteEngine) -> list[str]:
    async with engine.transaction("read") as tx:
        return [str(row["id"]) for row in await tx.fetch("SELECT id FROM child ORDER BY id")]


async def insert_children(engine: SQLiteEngine, *rows: tuple[str, str]) -> None:
    """The rows in one write transaction."""
    async with engine.transaction("test", write=True) as tx:
        for row in rows:
            await tx.execute("INSERT INTO child (id, parent) VALUES ($1, $2)", *row)


async def insert_then_fail(engine: SQLiteEngine) -> None:
    async with engine.transaction("test", write=True) as tx:
        await tx.execute("INSERT INTO child (id, parent) VALUES ($1, $2)", "a", "p")
        await tx.fetch("SELECT nothing FROM nowhere")


async def test_a_failed_commit_stores_nothing_and_the_writer_goes_on(
    engine: SQLiteEngine,
) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        await insert_children(engine, ("a", "p"), ("b", "nobody"))  # fails at COMMIT
    assert await children(engine) == []
    await insert_children(engine, ("c", "p"))
    assert await children(engine) == ["c"]


async def test_a_transaction_cancelled_while_it_begins_is_rolled_back(
    engine: SQLiteEngine,
) -> None:
    async def hold() -> None:
        async with engine.transaction("held", write=True):
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await asyncio.sleep(0)  # waiting for its BEGIN, which the thread still runs
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    async with engine.transaction("next", write=True) as tx:
        await tx.execute("INSERT INTO child (id, parent) VALUES ($1, $2)", "a", "p")
    assert await children(engine) == ["a"]


async def test_a_failed_statement_rolls_back_and_errors_reach_the_caller(
    engine: SQLiteEngine,
) -> None:
    with pytest.raises(sqlite3.OperationalError):
        await insert_then_fail(engine)
    assert await children(engine) == []
    async with engine.transaction("read") as tx:
        row = await tx.fetchrow("SELECT id FROM parent WHERE id = $1", "p")
        assert row is not None
        assert row["id"] == "p"
        assert await tx.fetchval("SELECT count(*) FROM parent") == 1


# -- rows inserted in a transaction of their own (Engine.insert_committed) ----------------

CHILD = (("id", "text"),)


async def insert_rows(engine: SQLiteEngine, rows: list[tuple[str]]) -> None:
    await engine.insert_committed(
        "test",
        "child",
        CHILD,
        rows,
        tenant_id="t",
        skip_duplicates_of="id",
        constants=(("parent", "text", "p"),),
    )


async def test_rows_inserted_on_their_own_are_one_statement_committed_on_return(
    engine: SQLiteEngine, tmp_path: Path
) -> None:
    statements: list[str] = []
    writer = engine._writer
    assert writer is not None
    await writer.set_trace_callback(statements.append)
    await insert_rows(engine, [("a",), ("b",), ("c",)])
    await writer.set_trace_callback(None)
    # No BEGIN, no COMMIT: the INSERT is a transaction of its own, one trip to the thread.
    assert len(statements) == 1
    assert statements[0].startswith("INSERT INTO child")
    # Committed: another connection (the CLI's, a backup's) sees the rows at once.
    with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite")) as other:
        assert other.execute("SELECT id, parent FROM child ORDER BY id").fetchall() == [
            ("a", "p"),
            ("b", "p"),
            ("c", "p"),
        ]


async def test_rows_inserted_on_their_own_are_all_or_nothing(engine: SQLiteEngine) -> None:
    async with engine.transaction("parents", write=True) as tx:
        await tx.execute("INSERT INTO parent (id) VALUES ($1)", "q")
    with pytest.raises(sqlite3.IntegrityError):
        # The second row's parent is missing: its deferred key fails as the statement
        # commits, and the first row, which alone would be fine, is not stored either.
        await engine.insert_committed(
            "test",
            "child",
            (("id", "text"), ("parent", "text")),
            [("a", "q"), ("b", "nobody")],
            tenant_id="t",
            skip_duplicates_of="id",
        )
    assert await children(engine) == []
    await insert_rows(engine, [("c",)])
    assert await children(engine) == ["c"]


async def test_rows_inserted_on_their_own_skip_those_already_stored(
    engine: SQLiteEngine,
) -> None:
    await insert_rows(engine, [("a",), ("b",)])
    await insert_rows(engine, [("b",), ("c",), ("a",)])  # a replayed batch, and one more
    assert await children(engine) == ["a", "b", "c"]


async def test_a_larger_batch_of_rows_goes_in_one_transaction(engine: SQLiteEngine) -> None:
    # Past a few rows the hand-offs of BEGIN and COMMIT are spread over many: the rows go
    # as one transaction, all or nothing all the same.
    rows = [(f"{i:03}", "p") for i in range(100)]
    statements: list[str] = []
    writer = engine._writer
    assert writer is not None
    await writer.set_trace_callback(statements.append)
    with pytest.raises(sqlite3.IntegrityError):
        await engine.insert_committed(
            "test",
            "child",
            (("id", "text"), ("parent", "text")),
            [*rows[:-1], ("099", "nobody")],
            tenant_id="t",
            skip_duplicates_of="id",
        )
    await writer.set_trace_callback(None)
    assert statements[0] == "BEGIN IMMEDIATE"
    assert await children(engine) == []
    await engine.insert_committed(
        "test",
        "child",
        (("id", "text"), ("parent", "text")),
        rows,
        tenant_id="t",
        skip_duplicates_of="id",
    )
    assert await children(engine) == [row[0] for row in rows]


async def test_rows_inserted_on_their_own_wait_for_another_process_writing(
    engine: SQLiteEngine, tmp_path: Path
) -> None:
    # Another connection (the CLI's) holds the write lock and commits a row meanwhile: the
    # statement waits (busy_timeout) and then writes on top of it, rather than failing.
    other = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO child (id, parent) VALUES ('o', 'p')")
        inserting = asyncio.ensure_future(insert_rows(engine, [("a",)]))
        await asyncio.sleep(0.2)
        assert not inserting.done()
        other.execute("COMMIT")
        await inserting
    finally:
        other.close()
    assert await children(engine) == ["a", "o"]
