"""Numbered SQL migrations with per-dialect files, and the schema version check.

Files are named ``NNNN_description.<dialect>.sql``. Each applies in its own transaction
and bumps ``schema_version``. Servers refuse to start on a schema that is behind or ahead.

Postgres migrations run as the owner role and grant the application role what it needs,
naming it ``__APP_ROLE__``: the runner replaces that placeholder with the quoted name of the
application role (the user of ``BAYCHAT_DATABASE_URL``), passed as ``migrate(app_role=...)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from storage.engine import Dialect, Engine

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgres)\.sql$")
APP_ROLE_PLACEHOLDER = "__APP_ROLE__"

# Whether schema_version exists yet, asked without creating it: the application role, which
# only reads the version, may not create tables.
_TABLE_EXISTS: dict[Dialect, str] = {
    "sqlite": "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1",
    "postgres": "SELECT to_regclass($1) IS NOT NULL",
}


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
    """The applied schema version (0 for an empty database). Needs only SELECT."""
    async with engine.transaction("schema_version_read") as tx:
        if not await tx.fetchval(_TABLE_EXISTS[engine.dialect], "schema_version"):
            return 0
        version = await tx.fetchval("SELECT MAX(version) FROM schema_version")
    return int(version or 0)


def quote_role(name: str) -> str:
    """A role name as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def render(migration: Migration, app_role: str | None) -> str:
    """The migration's SQL with ``__APP_ROLE__`` replaced by the quoted ``app_role``."""
    if APP_ROLE_PLACEHOLDER not in migration.sql:
        return migration.sql
    if not app_role:
        raise SchemaVersionError(
            f"migration {migration.version:04d}_{migration.name} grants the application role"
            " its privileges, but no application role is known: BAYCHAT_DATABASE_URL must"
            " name its user"
        )
    return migration.sql.replace(APP_ROLE_PLACEHOLDER, quote_role(app_role))


async def migrate(engine: Engine, *, app_role: str | None = None) -> list[int]:
    """Apply every pending migration; return the versions applied. ``app_role`` is the
    application role that Postgres migrations grant privileges to."""
    applied: list[int] = []
    async with engine.transaction("schema_version_create", write=True) as tx:
        # Asked first so that an up-to-date schema needs no CREATE privilege at all.
        if not await tx.fetchval(_TABLE_EXISTS[engine.dialect], "schema_version"):
            await tx.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    current = await current_version(engine)
    for migration in available(engine.dialect):
        if migration.version <= current:
            continue
        sql = render(migration, app_role)
        async with engine.transaction(f"migrate_{migration.version}", write=True) as tx:
            for statement in split_statements(sql):
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
