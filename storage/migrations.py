"""Numbered SQL migrations with per-dialect files, and the schema version check.

Files are named ``NNNN_description.<dialect>.sql``. Each applies in its own transaction
and bumps ``schema_version``. Servers refuse to start on a schema that is behind or ahead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from storage.engine import Dialect, Engine

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgres)\.sql$")


class SchemaVersionError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available(dialect: Dialect) -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("storage").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match and match.group(3) == dialect:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    return found


def latest_version(dialect: Dialect) -> int:
    migrations = available(dialect)
    return migrations[-1].version if migrations else 0


async def current_version(engine: Engine) -> int:
    async with engine.transaction("schema_version_read", write=True) as tx:
        await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = await tx.fetchval("SELECT MAX(version) FROM schema_version")
    return int(version or 0)


async def migrate(engine: Engine) -> list[int]:
    """Apply every pending migration; return the versions applied."""
    applied: list[int] = []
    current = await current_version(engine)
    for migration in available(engine.dialect):
        if migration.version <= current:
            continue
        async with engine.transaction(f"migrate_{migration.version}", write=True) as tx:
            for statement in split_statements(migration.sql):
                await tx.execute(statement)
            await tx.execute("INSERT INTO schema_version (version) VALUES ($1)", migration.version)
        applied.append(migration.version)
    return applied


async def check_version(engine: Engine) -> None:
    current = await current_version(engine)
    expected = latest_version(engine.dialect)
    if current != expected:
        raise SchemaVersionError(
            f"database schema is at version {current}, this server needs {expected}; "
            "run `baychat migrate`"
        )


def split_statements(sql: str) -> list[str]:
    """Split a migration into statements. ``$$``-quoted bodies (Postgres functions) are kept
    whole; a statement ends at a semicolon that ends a line."""
    statements: list[str] = []
    current: list[str] = []
    in_dollar = False
    for line in sql.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("--")):
            continue
        current.append(line)
        if line.count("$$") % 2 == 1:
            in_dollar = not in_dollar
        if not in_dollar and stripped.endswith(";"):
            statements.append("\n".join(current))
            current = []
    if current and "".join(current).strip():
        statements.append("\n".join(current))
    return statements
