"""deploy/postgres/init-roles.sh, the script the postgres container runs on its first start,
run here against the real Postgres with fresh names: it must create a database owned by an
owner role and an application role that owns nothing, neither privileged."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from tests.backends import POSTGRES_ADMIN_URL, unavailable
from tests.deploy.compose import REPO

SCRIPT = REPO / "deploy" / "postgres" / "init-roles.sh"


@dataclass(frozen=True)
class Initialised:
    database: str
    owner: str
    app: str
    backup: str
    owner_url: str
    app_url: str
    backup_url: str


def _libpq_env() -> dict[str, str]:
    parts = urlsplit(POSTGRES_ADMIN_URL)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PGHOST": parts.hostname or "127.0.0.1",
        "PGPORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_DB": parts.path.lstrip("/") or "postgres",
    }
    if parts.password:
        env["PGPASSWORD"] = parts.password
    return env


@pytest.fixture
async def initialised() -> AsyncIterator[Initialised]:
    import asyncpg

    if shutil.which("psql") is None:
        unavailable("psql", "not on PATH")
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL", exc)
        raise AssertionError("unreachable") from exc
    tag = secrets.token_hex(4)
    names = Initialised(
        f"bci_{tag}", f"bci_{tag}_owner", f"bci_{tag}_app", f"bci_{tag}_backup", "", "", ""
    )
    # A quote in a password must reach Postgres as data, not as SQL.
    owner_pw, app_pw = f"o'{secrets.token_hex(8)}", secrets.token_hex(16)
    backup_pw = secrets.token_hex(16)
    env = {
        **_libpq_env(),
        "BAYCHAT_DB_NAME": names.database,
        "BAYCHAT_DB_OWNER": names.owner,
        "BAYCHAT_DB_APP": names.app,
        "BAYCHAT_DB_OWNER_PASSWORD": owner_pw,
        "BAYCHAT_DB_APP_PASSWORD": app_pw,
        "BAYCHAT_DB_BACKUP": names.backup,
        "BAYCHAT_DB_BACKUP_PASSWORD": backup_pw,
    }
    host = f"{env['PGHOST']}:{env['PGPORT']}"
    try:
        script = await asyncio.create_subprocess_exec(
            "sh", str(SCRIPT), env=env, stdout=PIPE, stderr=PIPE
        )
        _, stderr = await asyncio.wait_for(script.communicate(), 60)
        assert script.returncode == 0, stderr.decode()
        yield Initialised(
            names.database,
            names.owner,
            names.app,
            names.backup,
            f"postgresql://{names.owner}:{quote(owner_pw)}@{host}/{names.database}",
            f"postgresql://{names.app}:{app_pw}@{host}/{names.database}",
            f"postgresql://{names.backup}:{backup_pw}@{host}/{names.database}",
        )
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {names.database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {names.app}")
        await admin.execute(f"DROP ROLE IF EXISTS {names.backup}")
        await admin.execute(f"DROP ROLE IF EXISTS {names.owner}")
        await admin.close()


async def test_script_creates_an_owner_an_unprivileged_app_role_and_a_reader(
    initialised: Initialised,
) -> None:
    import asyncpg

    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        rows = await admin.fetch(
            "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolcanlogin,"
            " pg_has_role(rolname, 'pg_read_all_data', 'MEMBER') AS reads_all"
            " FROM pg_roles WHERE rolname = ANY($1::text[])",
            [initialised.owner, initialised.app, initialised.backup],
        )
        owner = await admin.fetchval(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            initialised.database,
        )
    finally:
        await admin.close()
    roles = {row["rolname"]: row for row in rows}
    assert set(roles) == {initialised.owner, initialised.app, initialised.backup}
    for role in roles.values():
        assert role["rolcanlogin"], role
        assert not any(role[flag] for flag in ("rolsuper", "rolcreatedb", "rolcreaterole")), role
    # Only the backup role sees through row-level security, and it only reads.
    assert {name for name, role in roles.items() if role["rolbypassrls"]} == {initialised.backup}
    assert {name for name, role in roles.items() if role["reads_all"]} == {initialised.backup}
    assert owner == initialised.owner


async def test_owner_owns_the_schema_and_the_app_role_may_only_connect(
    initialised: Initialised,
) -> None:
    import asyncpg

    as_owner = await asyncpg.connect(initialised.owner_url)
    try:
        await as_owner.execute("CREATE TABLE probe (id int)")
        schema_owner = await as_owner.fetchval(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
        )
    finally:
        await as_owner.close()
    assert schema_owner == initialised.owner

    as_app = await asyncpg.connect(initialised.app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_app.execute("CREATE TABLE public.intruder (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_app.fetch("SELECT * FROM public.probe")
    finally:
        await as_app.close()


async def test_migrate_as_owner_then_the_app_role_serves_as_compose_wires_them(
    initialised: Initialised, tmp_path: Path
) -> None:
    # docker-compose.yml's migrate service: both URLs; then a CLI (like a gateway) with the
    # application URL only, no migrations on start.
    base = {**os.environ, "BAYCHAT_DATA_DIR": str(tmp_path)}
    migrate = await _baychat(
        {
            **base,
            "BAYCHAT_DATABASE_OWNER_URL": initialised.owner_url,
            "BAYCHAT_DATABASE_URL": initialised.app_url,
        },
        "migrate",
    )
    assert migrate.returncode == 0, migrate.stderr
    assert json.loads(migrate.stdout)["applied"]

    app_env = {**base, "BAYCHAT_DATABASE_URL": initialised.app_url, "BAYCHAT_MIGRATE_ON_START": "0"}
    created = await _baychat(app_env, "tenant", "create", "init-check")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["slug"] == "init-check"

    # The owner is refused where the application role belongs (fail closed).
    as_owner = await _baychat(
        {**app_env, "BAYCHAT_DATABASE_URL": initialised.owner_url}, "tenant", "create", "nope"
    )
    assert as_owner.returncode != 0
    assert "refusing to start" in as_owner.stderr


@dataclass
class _Done:
    returncode: int
    stdout: str
    stderr: str


async def _baychat(env: dict[str, str], *args: str) -> _Done:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", *args, env=env, stdout=PIPE, stderr=PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return _Done(process.returncode, stdout.decode(), stderr.decode())


async def test_the_backup_service_wiring_writes_a_backup_that_verifies(
    initialised: Initialised, tmp_path: Path
) -> None:
    base = {**os.environ, "BAYCHAT_DATA_DIR": str(tmp_path)}
    owner_env = {
        **base,
        "BAYCHAT_DATABASE_OWNER_URL": initialised.owner_url,
        "BAYCHAT_DATABASE_URL": initialised.app_url,
    }
    assert (await _baychat(owner_env, "migrate")).returncode == 0
    app_env = {**base, "BAYCHAT_DATABASE_URL": initialised.app_url, "BAYCHAT_MIGRATE_ON_START": "0"}
    assert (await _baychat(app_env, "demo", "--slug", "backed-up")).returncode == 0

    # docker-compose.yml's backup service: the backup role, the app role's name only.
    app_name_only = initialised.app_url.replace(
        initialised.app_url.split("@")[0], f"postgresql://{initialised.app}"
    )
    backup_env = {
        **base,
        "BAYCHAT_DATABASE_URL": app_name_only,
        "BAYCHAT_BACKUP_DATABASE_URL": initialised.backup_url,
        "BAYCHAT_BACKUP_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "BAYCHAT_BACKUP_DIR": str(tmp_path / "backups"),
    }
    made = await _baychat(backup_env, "backup")
    assert made.returncode == 0, made.stderr
    written = Path(json.loads(made.stdout)["file"])
    pruned = await _baychat(backup_env, "backup", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["kept"] == [written.name]
    checked = await _baychat(backup_env, "backup", "verify", str(written))
    assert checked.returncode == 0, checked.stderr
    counts = json.loads(checked.stdout)["database"]["row_counts"]
    # Rows under row-level security are in the dump: the backup role sees every tenant.
    assert (counts["tenants"], counts["users"], counts["channels"]) == (1, 2, 1)
