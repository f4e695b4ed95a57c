"""Postgres snapshots with pg_dump (custom format) and pg_restore.

``take`` opens a REPEATABLE READ transaction, exports its snapshot and has pg_dump dump
exactly that snapshot (``--snapshot``) while the facts are counted in the same transaction:
the manifest describes the dump, not a moment before or after it. The dumping role must see
every tenant's rows, so it needs BYPASSRLS (a dedicated backup role; the gateways refuse to
run with such a role). Passwords go to pg_dump and pg_restore through the environment, never
on a command line.

``load`` restores into a database that has no tables, connected as the role that is to own
the schema, without the dump's owners and grants (role names differ between clusters), then
grants the application role what the migrations grant it. pg_restore runs in one
transaction: a failed restore leaves the target empty.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from storage.migrations import available, render, split_statements
from storage.snapshot import NotEmptyError, SnapshotError, SnapshotFacts, identifier

_RLS = re.compile(r"ALTER TABLE (\w+) (ENABLE|FORCE) ROW LEVEL SECURITY", re.IGNORECASE)
_TABLES = (
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    " AND table_type = 'BASE TABLE' ORDER BY table_name"
)


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that carries the password."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}@{host}" if user else host)
    return urlunsplit(parts), env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SnapshotError(f"{name} is not installed (the postgresql-client package)")
    return path


async def _run(args: list[str], env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise SnapshotError(f"{Path(args[0]).name} failed: {' / '.join(detail[-3:])}")


def expected_isolation() -> dict[str, set[str]]:
    """Tables the migrations put under row-level security: table -> {ENABLE, FORCE}."""
    wanted: dict[str, set[str]] = {}
    for migration in available("postgres"):
        for match in _RLS.finditer(migration.sql):
            wanted.setdefault(match.group(1).lower(), set()).add(match.group(2).upper())
    return wanted


def grant_statements(app_role: str) -> list[str]:
    """The privilege statements of every migration, for ``app_role``."""
    statements = []
    for migration in available("postgres"):
        for statement in split_statements(render(migration, app_role)):
            body = "\n".join(
                line for line in statement.splitlines() if not line.strip().startswith("--")
            ).strip()
            if body.upper().startswith(("GRANT ", "REVOKE ")):
                statements.append(body)
    return statements


class PostgresSnapshotter:
    kind = "pg_dump-custom"

    def __init__(self, url: str, *, source_url: str, app_role: str | None) -> None:
        self.url = url
        self.source_url = source_url
        self.app_role = app_role

    async def take(self, dest: Path) -> SnapshotFacts:
        dump = _tool("pg_dump")
        conn = await asyncpg.connect(self.source_url)
        try:
            if not await conn.fetchval(
                "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
            ):
                raise SnapshotError(
                    "the backup connection (BAYCHAT_BACKUP_DATABASE_URL) must use a role with"
                    " BYPASSRLS: row-level security hides every tenant's rows from any other"
                )
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
                url, env = _split_url(self.source_url)
                dumping = asyncio.create_task(
                    _run(
                        [
                            dump,
                            "--format=custom",
                            f"--snapshot={snapshot}",
                            "-f",
                            str(dest),
                            "-d",
                            url,
                        ],
                        env,
                    )
                )
                try:
                    facts = await self._facts(conn)
                finally:
                    await dumping
        finally:
            await conn.close()
        return facts

    async def _facts(self, conn: asyncpg.Connection) -> SnapshotFacts:
        tables = [identifier(r["table_name"]) for r in await conn.fetch(_TABLES)]
        counts = {t: int(await conn.fetchval(f"SELECT COUNT(*) FROM {t}")) for t in tables}  # noqa: S608
        tenant_tables = [
            str(r["table_name"])
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public'"
                " AND column_name = 'tenant_id' ORDER BY table_name"
            )
            if r["table_name"] in tables
        ]
        version = 0
        if "schema_version" in tables:
            version = int(await conn.fetchval("SELECT MAX(version) FROM schema_version") or 0)
        heads: dict[str, int] = {}
        versions: dict[int, int] = {}
        if "messages" in tables:
            heads = {
                str(r[0]): int(r[1])
                for r in await conn.fetch("SELECT channel_id, MAX(seq) FROM messages GROUP BY 1")
            }
            versions = {
                int(r[0]): int(r[1])
                for r in await conn.fetch("SELECT key_version, COUNT(*) FROM messages GROUP BY 1")
            }
        return SnapshotFacts(version, counts, tenant_tables, heads, versions)

    async def check_empty(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            tables = [r["table_name"] for r in await conn.fetch(_TABLES)]
        finally:
            await conn.close()
        if tables:
            raise NotEmptyError(
                f"the target database is not empty (it has {len(tables)} tables, e.g."
                f" {tables[0]}); restore into a new database (createdb)"
            )

    async def load(self, payload: Path) -> None:
        await self.check_empty()
        url, env = _split_url(self.url)
        await _run(
            [
                _tool("pg_restore"),
                "--no-owner",
                "--no-privileges",
                "--single-transaction",
                "--exit-on-error",
                "-d",
                url,
                str(payload),
            ],
            env,
        )
        if self.app_role:
            conn = await asyncpg.connect(self.url)
            try:
                async with conn.transaction():
                    for statement in grant_statements(self.app_role):
                        await conn.execute(statement)
            finally:
                await conn.close()

    async def isolation_problems(self) -> list[str]:
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
                " (SELECT COUNT(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        finally:
            await conn.close()
        found = {r["relname"]: r for r in rows}
        problems = []
        for table, wanted in sorted(expected_isolation().items()):
            row = found.get(table)
            if row is None:
                problems.append(f"table {table} is missing")
                continue
            if "ENABLE" in wanted and not row["relrowsecurity"]:
                problems.append(f"row-level security is not enabled on {table}")
            if "FORCE" in wanted and not row["relforcerowsecurity"]:
                problems.append(f"row-level security is not forced on {table}")
            if not row["policies"]:
                problems.append(f"table {table} has no row-level security policy")
        return problems
