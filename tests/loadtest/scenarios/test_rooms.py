"""rooms against a real server: every member gets every acked message of its room once."""

from __future__ import annotations

from tests.loadtest.conftest import RunLoadtest, assert_every_acked_message_once, assert_well_formed


async def test_every_member_gets_its_rooms_messages_once(run_loadtest: RunLoadtest) -> None:
    code, doc = await run_loadtest("rooms", "--rooms", "2", "--members", "3", "--rate", "5")
    assert code == 0
    run = assert_well_formed(doc, "rooms")
    assert run["offered"]["deliveries_per_s"] == 2 * 3 * 3 * 5
    assert_every_acked_message_once(run, subscribers=6, per_channel=3)
