"""fanout against a real server: every acked message reaches every subscriber once; loss
and duplicates injected on the server are counted and fail the run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.connection import Connection
from tests.backends import on_every_store
from tests.loadtest.conftest import RunLoadtest, assert_every_acked_message_once, assert_well_formed

# The load generator's own correctness, on each store the server can run with.
pytestmark = on_every_store


async def test_every_acked_message_reaches_every_subscriber_once(
    run_loadtest: RunLoadtest,
) -> None:
    code, doc = await run_loadtest(
        "fanout", "--subscribers", "6", "--rate", "40", "--processes", "2"
    )
    assert code == 0
    run = assert_well_formed(doc, "fanout")
    assert run["offered"] == {"messages_per_s": 40.0, "deliveries_per_s": 240.0}
    assert run["connections"] == {"planned": 7, "connected": 7, "failed": 0}
    assert run["generator"]["processes"] == 2
    assert_every_acked_message_once(run, subscribers=6, per_channel=6)
    assert run["latency_ms"]["count"] > 0
    assert run["server"]["deliveries"] > 0  # read from the server's /metrics


def _tamper(monkeypatch: pytest.MonkeyPatch, action: Callable[[Any, int, bytes], bool]) -> None:
    """Make the server misbehave for one subscriber: ``action`` returns False to drop."""
    original = Connection.deliver
    victim: list[str] = []

    def deliver(self: Connection, channel_id: str, seq: int, data: bytes) -> None:
        if not victim:
            victim.append(self.id)
        if self.id == victim[0] and not action(self, seq, data):
            return
        original(self, channel_id, seq, data)

    monkeypatch.setattr(Connection, "deliver", deliver)


async def test_injected_duplicate_and_loss_are_counted(
    run_loadtest: RunLoadtest, monkeypatch: pytest.MonkeyPatch
) -> None:
    def misbehave(conn: Any, seq: int, data: bytes) -> bool:
        if seq == 2:
            conn.transport.send(data)  # an extra copy, past the connection's own dedupe
        return seq != 4  # seq 4 never reaches this subscriber

    _tamper(monkeypatch, misbehave)
    code, doc = await run_loadtest("fanout", "--subscribers", "3", "--rate", "20")
    assert code == 1  # loss or duplicates fail the run
    run = doc["runs"][0]
    assert run["messages"]["duplicated"] == 1
    assert run["messages"]["lost"] == 1
    assert run["messages"]["delivered"] == run["messages"]["expected"] - 1
    assert run["status"] == "loss"


async def test_steps_make_one_run_each_and_plots(run_loadtest: RunLoadtest, tmp_path: Path) -> None:
    code, doc = await run_loadtest("fanout", "--subscribers", "2", "--steps", "10,30")
    assert code == 0
    assert [r["step"] for r in doc["runs"]] == [10.0, 30.0]
    assert [r["offered"]["deliveries_per_s"] for r in doc["runs"]] == [20.0, 60.0]
    for run in doc["runs"]:
        assert_every_acked_message_once(run, subscribers=2, per_channel=2)
    for plot in ("fanout-latency.png", "fanout-throughput.png"):
        assert (tmp_path / "out-fanout" / plot).read_bytes().startswith(b"\x89PNG")
