"""The in-process broker's log under backpressure: publishers that wait for room enter the
log in the order they were given their seqs, whoever comes along while they wait."""

from __future__ import annotations

import asyncio

from server.broker.base import ChannelSeed, Draft
from server.broker.memory import MemoryBroker


async def _no_history(tenant_id: str, channel_id: str) -> ChannelSeed:
    return ChannelSeed(last_seq=0, recent=[])


def _draft(body: str) -> Draft:
    return Draft(
        tenant_id="t1",
        channel_id="c1",
        channel="general",
        sender_id="u1",
        body=body,
        client_msg_id=None,
    )


async def test_publishers_waiting_for_room_keep_seq_order_in_the_log() -> None:
    broker = MemoryBroker(_no_history, log_capacity=2)
    first = [await broker.publish(_draft(f"m{i}")) for i in range(2)]  # the log is full
    waiting = [asyncio.ensure_future(broker.publish(_draft(f"w{i}"))) for i in range(3)]
    await asyncio.sleep(0)  # all three hold their seqs and wait for room

    logged: list[int] = []

    async def drain() -> None:
        await asyncio.sleep(0.05)
        while len(logged) < 6:
            batch = await broker.read(10, block_ms=100)
            await broker.done(batch)
            logged.extend(entry.message.seq for entry in batch)
            await asyncio.sleep(0)

    drained = await broker.read(1, block_ms=10)  # frees one slot for the first waiter ...
    await broker.done(drained)
    logged.extend(entry.message.seq for entry in drained)
    drainer = asyncio.ensure_future(drain())
    # ... which a publisher that comes along before that waiter runs must not take.
    late = await broker.publish(_draft("late"))
    await asyncio.wait_for(drainer, 5)

    published = [p.message.seq for p in first] + [(await t).message.seq for t in waiting]
    assert [*published, late.message.seq] == [1, 2, 3, 4, 5, 6]
    assert logged == [1, 2, 3, 4, 5, 6]
    assert broker.backlog() == 0


async def test_publish_now_takes_only_what_needs_no_wait() -> None:
    broker = MemoryBroker(_no_history, log_capacity=3)
    assert broker.publish_now(_draft("m0")) is None  # the channel is not loaded yet
    assert broker.backlog() == 0
    first = await broker.publish(_draft("m1"))
    second = broker.publish_now(_draft("m2"))
    assert second is not None
    assert not second.duplicate
    assert (first.message.seq, second.message.seq) == (1, 2)

    keyed = Draft("t1", "c1", "general", "u1", "m3", "k3")
    third = broker.publish_now(keyed)
    assert third is not None
    assert third.message.seq == 3
    again = broker.publish_now(keyed)  # a retry: the original, not a new message
    assert again is not None
    assert again.duplicate
    assert again.message.id == third.message.id

    # The log is full: nothing is taken at once, and a publisher waits for room ...
    assert broker.publish_now(_draft("full")) is None
    waiter = asyncio.ensure_future(broker.publish(_draft("w")))
    await asyncio.sleep(0)
    batch = await broker.read(1, block_ms=10)
    await broker.done(batch)
    # ... so the room it waits for is not taken from it, though there is some now.
    assert broker.publish_now(_draft("late")) is None
    assert (await waiter).message.seq == 4
    assert broker.publish_now(_draft("late")) is None  # still full: the waiter took the slot
    rest = await broker.read(10, block_ms=10)
    await broker.done(rest)
    late = broker.publish_now(_draft("late"))
    assert late is not None
    assert late.message.seq == 5
    logged = [e.message.seq for e in batch + rest] + [
        e.message.seq for e in await broker.read(10, block_ms=10)
    ]
    assert logged == [1, 2, 3, 4, 5]
