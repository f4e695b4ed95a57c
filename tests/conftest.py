from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.backends import PostgresDatabase, migrated_postgres
from tests.harness import LiveServer, live_server, make_settings

# Every store-backed suite runs once per engine; the Postgres run skips without Postgres
# (fails with BAYCHAT_REQUIRE_BACKENDS=1).
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BACKENDS)
async def database(request: pytest.FixtureRequest) -> AsyncIterator[PostgresDatabase | None]:
    """The Postgres database of this module's ``postgres`` run (migrated once; tests keep
    apart by fresh tenants), or None for the SQLite run (each test has its own file)."""
    if request.param == "sqlite":
        yield None
        return
    async with migrated_postgres() as db:
        yield db


@pytest.fixture
async def server(database: PostgresDatabase | None, tmp_path: Path) -> AsyncIterator[LiveServer]:
    settings = make_settings(tmp_path)
    if database is not None:
        settings = settings.with_(
            database_url=database.app_url, database_owner_url=database.owner_url
        )
    async with live_server(settings) as live:
        yield live
