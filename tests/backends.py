"""Real backends for the tests: a fresh Postgres database with its own roles, and Redis.

On a laptop without Postgres or Redis these suites skip; with ``BAYCHAT_REQUIRE_BACKENDS=1``
(set by ``.ci/run``) a missing backend fails instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "BAYCHAT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BAYCHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRED = os.environ.get("BAYCHAT_REQUIRE_BACKENDS") == "1"

# A module opts into running once per store with ``pytestmark = on_every_store``: its
# ``database`` fixture (tests/conftest.py), and so ``server`` and ``store``, take each value.
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
on_every_store = pytest.mark.parametrize("database", STORES, indirect=True, scope="module")


def unavailable(what: str, why: object) -> None:
    message = f"{what} not reachable ({why})"
    if REQUIRED:
        pytest.fail(message + "; BAYCHAT_REQUIRE_BACKENDS=1 makes this a failure")
    pytest.skip(message)


@dataclass(frozen=True)
class PostgresDatabase:
    name: str
    owner_url: str  # owns the schema; what `baychat migrate` uses
    app_url: str  # owns nothing; what gateways and workers use
    admin_url: str  # superuser, for tests that must look behind the application's back
    owner_role: str
    app_role: str


def _url(user: str, password: str, database: str) -> str:
    host = POSTGRES_ADMIN_URL.split("@", 1)[1].split("/", 1)[0]
    return f"postgresql://{user}:{password}@{host}/{database}"


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[PostgresDatabase]:
    """A new database owned by a new owner role, plus an application role with only CONNECT
    (``baychat migrate`` grants it the rest). Dropped afterwards."""
    import asyncpg

    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL", exc)
        raise AssertionError("unreachable") from exc
    tag = secrets.token_hex(4)
    name, owner, app = f"bc_{tag}", f"bc_{tag}_owner", f"bc_{tag}_app"
    owner_pw, app_pw = secrets.token_hex(16), secrets.token_hex(16)
    try:
        await admin.execute(f"CREATE ROLE {owner} LOGIN PASSWORD '{owner_pw}'")
        await admin.execute(f"CREATE ROLE {app} LOGIN PASSWORD '{app_pw}'")
        await admin.execute(f"CREATE DATABASE {name} OWNER {owner}")
        await admin.execute(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")
        await admin.execute(f"GRANT CONNECT ON DATABASE {name} TO {app}")
        admin_db_url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        inner = await asyncpg.connect(admin_db_url)
        try:
            await inner.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            await inner.execute(f"ALTER SCHEMA public OWNER TO {owner}")
        finally:
            await inner.close()
        yield PostgresDatabase(
            name, _url(owner, owner_pw, name), _url(app, app_pw, name), admin_db_url, owner, app
        )
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {app}")
        await admin.execute(f"DROP ROLE IF EXISTS {owner}")
        await admin.close()


@contextlib.asynccontextmanager
async def migrated_postgres() -> AsyncIterator[PostgresDatabase]:
    """``fresh_postgres()`` with the schema migrated by the owner role, as `baychat migrate`
    does it (the application role receives its grants)."""
    from storage.engine import open_engine
    from storage.migrations import migrate

    async with fresh_postgres() as db:
        engine = open_engine(db.owner_url)
        await engine.open()
        try:
            await migrate(engine, app_role=db.app_role)
        finally:
            await engine.close()
        yield db


async def shared_redis_url() -> str:
    """The shared Redis; tests keep apart by using fresh tenant ids (every key carries one)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        unavailable("Redis", exc)
    finally:
        await client.aclose()
    return REDIS_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class OwnRedis:
    """A private redis-server process, for tests that restart or kill Redis."""

    port: int
    directory: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server binary", "not on PATH")
            return
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            import time

            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(10)
            self.process = None


@contextlib.contextmanager
def own_redis() -> Iterator[OwnRedis]:
    with tempfile.TemporaryDirectory() as directory:
        server = OwnRedis(free_port(), directory)
        server.start()
        try:
            yield server
        finally:
            server.stop(kill=True)
