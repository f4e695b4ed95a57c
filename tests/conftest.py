from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness import LiveServer, live_server, make_settings


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path)) as live:
        yield live


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """One server for a whole test module (mark the module
    ``pytestmark = pytest.mark.asyncio(loop_scope="module")``); tests keep apart by making
    their own tenants."""
    async with live_server(make_settings(tmp_path_factory.mktemp("server"))) as live:
        yield live
