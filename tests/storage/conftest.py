from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from storage.store import Store
from tests.backends import PostgresDatabase, migrated_postgres
from tests.storage.stores import opened_store


@pytest.fixture
async def store(database: PostgresDatabase | None, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened Store per engine (``database`` is parametrised in tests/conftest.py),
    opened by the application role exactly as a gateway or worker opens it."""
    if database is None:
        owner_url = app_url = f"sqlite:///{tmp_path / 'baychat.db'}"
    else:
        owner_url, app_url = database.owner_url, database.app_url
    async with opened_store(owner_url, app_url, tmp_path / "keys") as opened:
        yield opened


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db() -> AsyncIterator[PostgresDatabase]:
    """A fresh Postgres database migrated to the latest schema, one per module, for the
    Postgres-only suites (marked ``postgres``: required in CI, skipped on a laptop without
    it). A module that asks for it runs its tests on the module's event loop."""
    async with migrated_postgres() as migrated:
        yield migrated
