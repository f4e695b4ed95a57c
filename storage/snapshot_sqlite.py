"""SQLite snapshots with the online backup API: a consistent copy while the server writes.

The copy is made in one step (``pages=-1``), inside one read transaction of the source, so
it is one point in time even with a writer in another process (WAL mode).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from contextlib import closing
from pathlib import Path

from storage.durable import fsync_path
from storage.snapshot import NotEmptyError, SnapshotError, SnapshotFacts, identifier
from storage.sqlite import sqlite_path

_SIDE_FILES = ("-wal", "-shm", "-journal")


def _tables(db: sqlite3.Connection) -> list[str]:
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name"
    ).fetchall()
    return [identifier(str(row[0])) for row in rows]


def facts_of(path: Path) -> SnapshotFacts:
    with closing(sqlite3.connect(path)) as db:
        tables = _tables(db)
        counts = {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}  # noqa: S608 - checked identifiers
        tenant_tables = [
            t
            for t in tables
            if any(col[1] == "tenant_id" for col in db.execute(f"PRAGMA table_info({t})"))
        ]
        version = 0
        if "schema_version" in tables:
            version = int(db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
        heads: dict[str, int] = {}
        versions: dict[int, int] = {}
        if "messages" in tables:
            heads = {
                str(c): int(s)
                for c, s in db.execute("SELECT channel_id, MAX(seq) FROM messages GROUP BY 1")
            }
            versions = {
                int(v): int(n)
                for v, n in db.execute("SELECT key_version, COUNT(*) FROM messages GROUP BY 1")
            }
    return SnapshotFacts(version, counts, tenant_tables, heads, versions)


class SQLiteSnapshotter:
    kind = "sqlite-database"

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)

    async def take(self, dest: Path) -> SnapshotFacts:
        return await asyncio.to_thread(self._take, dest)

    def _take(self, dest: Path) -> SnapshotFacts:
        if not self.path.exists():
            raise SnapshotError(f"no database at {self.path}")
        with closing(sqlite3.connect(self.path)) as source:
            source.execute("PRAGMA busy_timeout=10000")
            with closing(sqlite3.connect(dest)) as target:
                source.backup(target, pages=-1)
        return facts_of(dest)

    async def check_empty(self) -> None:
        await asyncio.to_thread(self._check_empty)

    def _check_empty(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with closing(sqlite3.connect(self.path)) as db:
            for table in _tables(db):
                if table == "schema_version":
                    continue
                if db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():  # noqa: S608
                    raise NotEmptyError(
                        f"{self.path} is not empty (table {table} has rows); restore into a new"
                        " file, or move this one away first"
                    )

    async def load(self, payload: Path) -> None:
        await asyncio.to_thread(self._load, payload)

    def _load(self, payload: Path) -> None:
        self._check_empty()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.restore")
        try:
            with (
                closing(sqlite3.connect(payload)) as source,
                closing(sqlite3.connect(tmp)) as target,
            ):
                source.backup(target, pages=-1)
            fsync_path(tmp)
            # A write-ahead log left by the old file would be replayed into the new one.
            for suffix in _SIDE_FILES:
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
            for suffix in _SIDE_FILES:
                Path(f"{tmp}{suffix}").unlink(missing_ok=True)

    async def isolation_problems(self) -> list[str]:
        return []  # SQLite enforces none: the scoped repositories do (storage/scope.py)
