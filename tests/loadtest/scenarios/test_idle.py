"""idle against a real server: connections ramp through the levels and are held."""

from __future__ import annotations

from tests.loadtest.conftest import RunLoadtest


async def test_ramp_through_levels_reports_memory_and_connect_rate(
    run_loadtest: RunLoadtest,
) -> None:
    code, doc = await run_loadtest("idle", "--steps", "5,15", "--processes", "2")
    assert code == 0
    [run] = doc["runs"]
    levels = run["levels"]
    assert [level["target"] for level in levels] == [5, 15]
    assert [level["connected"] for level in levels] == [5, 15]
    for level in levels:
        assert level["connects_per_s"] > 0
        assert level["server_rss_mib"] > 0
        assert "server_kib_per_connection" in level
    assert run["connections"]["failed"] == 0
