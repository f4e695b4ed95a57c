"""The snapshot seam: a consistent copy of a whole database as one file, and loading that
file into an empty database. ``storage/snapshot_sqlite.py`` uses SQLite's online backup API,
``storage/snapshot_postgres.py`` pg_dump and pg_restore.

Guarantees every implementation keeps:

* ``take`` writes a snapshot that is consistent (one point in time, while writers go on) and
  returns facts computed from exactly that snapshot.
* ``load`` refuses (``NotEmptyError``) a target that holds any data, and otherwise leaves
  the target holding exactly the snapshot.
* ``isolation_problems`` lists what is missing of the database's own tenant isolation
  (row-level security and its forcing); empty where the engine enforces none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class NotEmptyError(RuntimeError):
    """The restore target holds data; restoring would mix or overwrite it."""


class SnapshotError(RuntimeError):
    """Taking or loading a snapshot failed (the message says where)."""


def identifier(name: str) -> str:
    """A table name from a manifest, checked before it is put into SQL."""
    if not _IDENTIFIER.match(name):
        raise SnapshotError(f"invalid table name {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class SnapshotFacts:
    """What a snapshot holds, computed from the snapshot itself."""

    schema_version: int
    row_counts: dict[str, int]  # every table
    tenant_tables: list[str]  # tables with a tenant_id column
    channel_heads: dict[str, int]  # channel id -> highest seq
    key_versions: dict[int, int]  # master key version -> messages

    def to_doc(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "row_counts": self.row_counts,
            "tenant_tables": self.tenant_tables,
            "channel_heads": self.channel_heads,
            "key_versions": {str(k): v for k, v in self.key_versions.items()},
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SnapshotFacts:
        return cls(
            int(doc["schema_version"]),
            {identifier(k): int(v) for k, v in doc["row_counts"].items()},
            [identifier(t) for t in doc["tenant_tables"]],
            {str(k): int(v) for k, v in doc["channel_heads"].items()},
            {int(k): int(v) for k, v in doc["key_versions"].items()},
        )


class Snapshotter(Protocol):
    kind: str  # names the payload format in the manifest

    async def take(self, dest: Path) -> SnapshotFacts: ...

    async def check_empty(self) -> None:
        """Raise ``NotEmptyError`` unless the target holds no data."""
        ...

    async def load(self, payload: Path) -> None: ...

    async def isolation_problems(self) -> list[str]: ...


def snapshotter_for(
    url: str, *, source_url: str | None = None, app_role: str | None = None
) -> Snapshotter:
    """The snapshotter for a database URL, chosen by scheme with lazy imports.

    ``source_url`` (Postgres) is the connection ``take`` uses: a role that row-level security
    does not hide rows from (BYPASSRLS), which the gateways must never use. ``app_role``
    (Postgres) is the role a restored database grants the application's privileges to."""
    if url.startswith("sqlite:"):
        from storage.snapshot_sqlite import SQLiteSnapshotter

        return SQLiteSnapshotter(url)
    if url.startswith(("postgres://", "postgresql://")):
        from storage.snapshot_postgres import PostgresSnapshotter

        return PostgresSnapshotter(url, source_url=source_url or url, app_role=app_role)
    raise ValueError("unsupported database URL scheme (use sqlite:/// or postgresql://)")
