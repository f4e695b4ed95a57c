from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.store import Store
from tests.backends import PostgresDatabase
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
