"""agents against a real server: without the agents API the run is skipped, and says why."""

from __future__ import annotations

from tests.harness import LiveServer
from tests.loadtest.conftest import RunLoadtest, assert_every_acked_message_once


async def test_agents_run_or_explain_why_not(run_loadtest: RunLoadtest, server: LiveServer) -> None:
    code, doc = await run_loadtest(
        "agents", "--channels", "2", "--humans", "2", "--agents", "2", "--rate", "10"
    )
    assert code == 0
    [run] = doc["runs"]
    async with server.http() as http:
        has_agents = (await http.post("/api/v1/agents", json={})).status_code not in (404, 405)
    if not has_agents:
        assert run["status"] == "skipped"
        assert "agents API" in run["reason"]
        return
    assert_every_acked_message_once(run, subscribers=4, per_channel=2)
    assert run["by_kind"]["agent"]["delivered"] > 0
