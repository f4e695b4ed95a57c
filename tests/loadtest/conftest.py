"""Short, small runs of the real CLI against a real server (tests/harness.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from loadtest.cli import main
from tests.backends import PostgresDatabase
from tests.harness import PASSWORD, LiveServer, live_server, make_settings

RunLoadtest = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]
# A server set up for load, as docs/BENCHMARKS.md says: rate limits out of the way.
UNLIMITED = {
    "max_connections_per_user": 100_000,
    **{
        f"rate_{name}": "1000000/minute"
        for name in (
            "login_ip",
            "login_account",
            "login_account_ip",
            "http_write",
            "token_create",
            "ws_connect",
            "ws_frames",
            "publish_connection",
            "publish_user",
        )
    },
}
QUICK = ["--duration", "1", "--warmup", "0.5", "--drain", "2", "--no-live", "--processes", "1"]


@pytest.fixture
async def server(database: PostgresDatabase | None, tmp_path: Path) -> AsyncIterator[LiveServer]:
    """As tests/conftest.py's, with the rate limits out of the way (SQLite, or the module's
    Postgres database for modules marked ``on_every_store``)."""
    settings = make_settings(tmp_path, **UNLIMITED)
    if database is not None:
        settings = settings.with_(
            database_url=database.app_url, database_owner_url=database.owner_url
        )
    async with live_server(settings) as live:
        yield live


@pytest.fixture
async def credentials(server: LiveServer, tmp_path: Path) -> Path:
    tenant = await server.tenant()
    owner = await server.user(tenant, role="owner")
    member = await server.user(tenant)
    path = tmp_path / "credentials.json"
    users = [{"email": u.email, "password": PASSWORD} for u in (owner, member)]
    path.write_text(json.dumps({"tenant": tenant.slug, "users": users}))
    return path


@pytest.fixture
def run_loadtest(server: LiveServer, credentials: Path, tmp_path: Path) -> RunLoadtest:
    async def run(scenario: str, *args: str) -> tuple[int, dict[str, Any]]:
        out = tmp_path / f"out-{scenario}"
        argv = [
            scenario,
            "--target",
            server.http_url,
            "--credentials",
            str(credentials),
            "--out",
            str(out),
            *QUICK,
            *args,
        ]
        # The CLI blocks (it drives generator processes): keep the server's loop running.
        code = await asyncio.to_thread(main.main, argv, standalone_mode=False)
        doc: dict[str, Any] = json.loads((out / "result.json").read_text())
        assert (out / "summary.md").read_text().startswith(f"# {scenario} against")
        return int(code or 0), doc

    return run


def assert_well_formed(doc: dict[str, Any], scenario: str) -> dict[str, Any]:
    assert doc["schema"] == "baychat-loadtest/1"
    assert doc["scenario"] == scenario
    assert doc["machine"]["nproc"] >= 1
    assert doc["runs"], "no run recorded"
    run: dict[str, Any] = doc["runs"][0]
    for key in ("offered", "messages", "throughput", "latency_ms", "server", "generator"):
        assert key in run, key
    for key in ("p50", "p90", "p99", "p99_9", "max", "count"):
        assert key in run["latency_ms"]
    assert run["server"]["available"] is True
    assert run["server"]["cpu_s"] >= 0
    assert run["generator"]["processes"] >= 1
    return run


def assert_every_acked_message_once(
    run: dict[str, Any], subscribers: int, per_channel: int
) -> None:
    """Each acked message reached each of the ``per_channel`` subscribers of its channel
    exactly once, in order."""
    messages = run["messages"]
    assert messages["acked"] > 0
    assert messages["subscribers"] == subscribers
    assert messages["expected"] == messages["acked"] * per_channel
    assert messages["delivered"] == messages["expected"]
    assert messages["lost"] == 0
    assert messages["duplicated"] == 0
    assert messages["out_of_order"] == 0
    assert run["status"] == "ok"
