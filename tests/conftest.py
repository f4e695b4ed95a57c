from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.backends import PostgresDatabase, migrated_postgres
from tests.harness import LiveServer, live_server, make_settings


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def database(request: pytest.FixtureRequest) -> AsyncIterator[PostgresDatabase | None]:
    """The store under test: None for SQLite (the default; each test has its own file), or
    the Postgres database of this module (migrated once; tests keep apart by fresh tenants)
    for modules marked ``on_every_store`` (tests/backends.py)."""
    if getattr(request, "param", "sqlite") == "sqlite":
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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """One server for a whole test module (mark the module
    ``pytestmark = pytest.mark.asyncio(loop_scope="module")``); tests keep apart by making
    their own tenants."""
    async with live_server(make_settings(tmp_path_factory.mktemp("server"))) as live:
        yield live
