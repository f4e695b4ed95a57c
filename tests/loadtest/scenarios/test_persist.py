"""persist against a real server: every publish is acked, with its time to ack measured."""

from __future__ import annotations

from tests.loadtest.conftest import RunLoadtest, assert_well_formed


async def test_every_publish_is_acked_and_timed(run_loadtest: RunLoadtest) -> None:
    code, doc = await run_loadtest("persist", "--publishers", "3", "--rate", "30")
    assert code == 0
    run = assert_well_formed(doc, "persist")
    messages = run["messages"]
    # Nothing is lost between publish and ack: everything sent before the drain was acked.
    # Open loop: every due time in the publishing span (warm-up 0.5 s + 1 s, QUICK) gets
    # its message, however late the generator wakes (give or take one per publisher at
    # the edges of the span, for its phase and the rounding of its interval).
    assert abs(messages["published"] - 3 * 30 * 1.5) <= 3
    assert messages["acked"] == messages["published"]
    assert run["ack_latency_ms"]["count"] > 0
    assert run["throughput"]["acks_per_s"] > 0
    assert run["server"]["peak_pending_acks"] >= 0
