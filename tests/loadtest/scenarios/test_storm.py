"""storm against a real server: authenticated connects are counted and timed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.loadtest.conftest import RunLoadtest, assert_well_formed


async def test_connects_are_authenticated_and_counted(run_loadtest: RunLoadtest) -> None:
    code, doc = await run_loadtest("storm", "--rate", "40")
    assert code == 0
    run = assert_well_formed(doc, "storm")
    assert run["connections"]["failed"] == 0
    assert run["errors"] == {}
    assert run["connect_latency_ms"]["count"] > 0
    assert run["throughput"]["connects_per_s"] > 0
    assert run["server"]["cpu_us_per_connect"] > 0


def _break_passwords(path: Path) -> None:
    doc = json.loads(path.read_text())
    for user in doc["users"]:
        user["password"] = "wrong password, on purpose"
    path.write_text(json.dumps(doc))


async def test_a_refused_login_stops_the_run(run_loadtest: RunLoadtest, credentials: Path) -> None:
    _break_passwords(credentials)
    with pytest.raises(RuntimeError, match=r"login failed \(401\)"):
        await run_loadtest("storm", "--rate", "40")
