"""The Broker contract (server/broker/base.py), one suite for every broker.

Each test drives real nodes of one broker with a real persistence worker draining its log
into a real store. The in-process broker serves one node; where a test asks for two
nodes it gets the same one twice, and checks that only make sense between two distinct
nodes are guarded by ``rig.multi_node``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.auth.authority import scope_for_system
from server.broker.base import ControlEvent
from storage.store import Store
from tests.server.broker.rig import (
    KINDS,
    RecordingStore,
    Rig,
    make_channel,
    open_rig,
    redis_url,
    sqlite_store,
    store_seed,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await sqlite_store(tmp_path)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=KINDS)
async def rig(request: pytest.FixtureRequest, store: Store) -> AsyncIterator[Rig]:
    async with open_rig(request.param, store, store_seed(store)) as rig:
        yield rig


async def stored(store: Store, tenant_id: str, channel_id: str) -> list[tuple[int, str]]:
    messages = await store.messages.after(
        scope_for_system(tenant_id), channel_id, "general", 0, 10_000
    )
    return [(m.seq, m.body) for m in messages]


async def test_concurrent_publishers_get_gap_free_seqs_and_every_message_is_stored(
    rig: Rig, store: Store
) -> None:
    tenant_id, channel_id = await make_channel(store)
    a, b = await rig.node(), await rig.node()

    results = await asyncio.gather(
        *(
            (a if i % 2 else b).publish(tenant_id, channel_id, f"m{i}", sender=f"u{i % 3}")
            for i in range(60)
        )
    )

    assert sorted(r.message.seq for r in results) == list(range(1, 61))
    assert len({r.message.id for r in results}) == 60
    assert not any(r.duplicate for r in results)
    ids = {r.message.id for r in results}
    await a.handler.until(lambda: ids <= a.handler.persisted_ids() | b.handler.persisted_ids())
    by_seq = {r.message.seq: r.message.body for r in results}
    assert await stored(store, tenant_id, channel_id) == sorted(by_seq.items())


async def test_retried_publish_returns_the_original_marked_duplicate(
    rig: Rig, store: Store
) -> None:
    tenant_id, channel_id = await make_channel(store)
    a, b = await rig.node(), await rig.node()

    first = await a.publish(tenant_id, channel_id, "hello", client_msg_id="c-1")
    retry = await b.publish(tenant_id, channel_id, "hello", client_msg_id="c-1")
    other_sender = await a.publish(
        tenant_id, channel_id, "hello", sender="bob", client_msg_id="c-1"
    )

    assert not first.duplicate
    assert not first.persisted
    assert retry.duplicate
    assert (retry.message.id, retry.message.seq) == (first.message.id, first.message.seq)
    assert not other_sender.duplicate
    assert other_sender.message.seq == first.message.seq + 1

    await a.handler.until(lambda: first.message.id in a.handler.persisted_ids())
    late = await a.publish(tenant_id, channel_id, "hello", client_msg_id="c-1")
    assert late.duplicate
    assert late.persisted
    assert late.message.id == first.message.id
    if not retry.persisted:
        # A node that retried while the original was in flight is told when it is stored.
        await b.handler.until(lambda: first.message.id in b.handler.persisted_ids())
    assert await stored(store, tenant_id, channel_id) == [(1, "hello"), (2, "hello")]


async def test_fanout_reaches_a_subscribed_node_once_per_message_in_seq_order(
    rig: Rig, store: Store
) -> None:
    tenant_id, channel_id = await make_channel(store)
    listener, publisher = await rig.node(), await rig.node()
    await listener.broker.subscribe(tenant_id, channel_id)

    await asyncio.gather(*(publisher.publish(tenant_id, channel_id, f"m{i}") for i in range(40)))

    await listener.handler.until(lambda: len(listener.handler.seqs(tenant_id, channel_id)) >= 40)
    assert listener.handler.seqs(tenant_id, channel_id) == list(range(1, 41))
    bodies = {m.seq: m.body for m in listener.handler.messages}
    assert sorted(bodies.values()) == sorted(f"m{i}" for i in range(40))


async def test_fanout_skips_nodes_not_subscribed_to_the_channel(rig: Rig, store: Store) -> None:
    if not rig.multi_node:
        pytest.skip("the in-process broker serves one node; its hub does the filtering")
    tenant_id, quiet = await make_channel(store, "quiet")
    _, busy = await make_channel(store, "busy")
    _, marker = await make_channel(store, "marker")
    a, b = await rig.node(), await rig.node()
    await a.broker.subscribe(tenant_id, marker)
    await b.broker.subscribe(tenant_id, quiet)

    await b.publish(tenant_id, quiet, "for b only")
    await b.publish(tenant_id, marker, "for a")
    await b.handler.until(lambda: b.handler.seqs(tenant_id, quiet) == [1])
    await a.handler.until(lambda: a.handler.seqs(tenant_id, marker) == [1])
    assert a.handler.seqs(tenant_id, quiet) == []

    await b.broker.unsubscribe(tenant_id, quiet)
    await a.broker.subscribe(tenant_id, quiet)
    await a.publish(tenant_id, quiet, "for a now")
    await b.broker.subscribe(tenant_id, marker)
    await a.publish(tenant_id, marker, "sync")
    await b.handler.until(lambda: b.handler.seqs(tenant_id, marker) == [2])
    await a.handler.until(lambda: a.handler.seqs(tenant_id, quiet) == [2])
    assert b.handler.seqs(tenant_id, quiet) == [1]
    assert b.handler.seqs(tenant_id, busy) == []


async def test_ephemeral_frames_reach_subscribed_nodes_with_their_origin(
    rig: Rig, store: Store
) -> None:
    tenant_id, channel_id = await make_channel(store)
    listener, sender = await rig.node(), await rig.node()
    await listener.broker.subscribe(tenant_id, channel_id)

    await sender.broker.publish_ephemeral(tenant_id, channel_id, b'{"type":"typing"}', "conn-1")

    await listener.handler.until(lambda: bool(listener.handler.ephemeral))
    assert listener.handler.ephemeral == [(tenant_id, channel_id, b'{"type":"typing"}', "conn-1")]


async def test_control_events_reach_every_node_once_including_the_sender(
    rig: Rig, store: Store
) -> None:
    a, b = await rig.node(), await rig.node()
    event = ControlEvent("session_revoked", "tenant-x", "session-1")

    await a.broker.publish_control(event)

    await a.handler.until(lambda: event in a.handler.control)
    await b.handler.until(lambda: event in b.handler.control)
    follow_up = ControlEvent("principal_disabled", "tenant-x", "user-1")
    await b.broker.publish_control(follow_up)
    await a.handler.until(lambda: follow_up in a.handler.control)
    await b.handler.until(lambda: follow_up in b.handler.control)
    assert a.handler.control.count(event) == 1
    assert b.handler.control.count(event) == 1


async def test_persisted_notice_reaches_the_origin_node_after_the_commit(
    rig: Rig, store: Store
) -> None:
    tenant_id, channel_id = await make_channel(store)
    a, b = await rig.node(), await rig.node()

    from_a = await a.publish(tenant_id, channel_id, "from a")
    from_b = await b.publish(tenant_id, channel_id, "from b")

    await a.handler.until(lambda: from_a.message.id in a.handler.persisted_ids())
    await b.handler.until(lambda: from_b.message.id in b.handler.persisted_ids())
    assert sorted(await stored(store, tenant_id, channel_id)) == [(1, "from a"), (2, "from b")]
    if rig.multi_node:
        assert from_b.message.id not in a.handler.persisted_ids()
        assert from_a.message.id not in b.handler.persisted_ids()


async def test_recent_returns_the_window_after_since_or_none(store: Store) -> None:
    for kind in ("memory", "redis"):
        url = await redis_url(window=8) if kind == "redis" else None
        async with open_rig(kind, store, store_seed(store), url=url) as rig:
            tenant_id, channel_id = await make_channel(store)
            node = await rig.node()
            for i in range(12):
                await node.publish(tenant_id, channel_id, f"m{i + 1}")

            tail = await node.broker.recent(tenant_id, channel_id, 6)
            caught_up = await node.broker.recent(tenant_id, channel_id, 12)
            too_old = await node.broker.recent(tenant_id, channel_id, 2)

            if rig.has_window:
                assert tail is not None
                assert caught_up is not None
            if tail is not None:
                assert [(m.seq, m.body) for m in tail] == [(s, f"m{s}") for s in range(7, 13)]
            assert caught_up in (None, [])
            assert too_old is None  # the window holds 8: the store serves seq 3 and on


async def test_forget_recent_drops_a_tenants_windows_only(rig: Rig, store: Store) -> None:
    """After an erasure the broker keeps no plaintext window of that tenant; other tenants'
    windows are untouched."""
    erased_tenant, erased_channel = await make_channel(store)
    other_tenant, other_channel = await make_channel(store)
    node = await rig.node()
    for i in range(3):
        await node.publish(erased_tenant, erased_channel, f"secret {i}")
        await node.publish(other_tenant, other_channel, f"kept {i}")

    await node.broker.forget_recent(erased_tenant)

    assert await node.broker.recent(erased_tenant, erased_channel, 0) is None
    kept = await node.broker.recent(other_tenant, other_channel, 0)
    if rig.has_window:
        assert kept is not None
        assert [m.body for m in kept] == [f"kept {i}" for i in range(3)]


async def test_seq_is_never_reused_after_the_broker_lost_its_state(rig: Rig, store: Store) -> None:
    tenant_id, channel_id = await make_channel(store)
    node = await rig.node()
    published = [
        await node.publish(tenant_id, channel_id, f"m{i}", client_msg_id=f"c{i}") for i in range(3)
    ]
    ids = {p.message.id for p in published}
    await node.handler.until(lambda: ids <= node.handler.persisted_ids())

    await rig.lose_state(tenant_id, channel_id)

    fresh = await node.publish(tenant_id, channel_id, "after the loss", client_msg_id="c9")
    retry = await node.publish(tenant_id, channel_id, "m1", client_msg_id="c1")
    assert fresh.message.seq == 4
    assert retry.duplicate
    assert retry.persisted
    assert retry.message.id == published[1].message.id
    await node.handler.until(lambda: fresh.message.id in node.handler.persisted_ids())
    assert [seq for seq, _ in await stored(store, tenant_id, channel_id)] == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_same_channel_id_in_two_tenants_never_mixes(kind: str) -> None:
    # No real store can hold one channel id in two tenants, which is what isolates the
    # broker's own namespacing here; a recorder stands in for it.
    recorder = RecordingStore()
    async with open_rig(kind, recorder) as rig:
        a, b = await rig.node(), await rig.node()
        channel_id = "shared-channel-id"
        await a.broker.subscribe("tenant-one", channel_id)
        await b.broker.subscribe("tenant-two", channel_id)

        for i in range(3):
            await a.publish("tenant-one", channel_id, f"one-{i}", client_msg_id=f"c{i}")
        two = [
            await b.publish("tenant-two", channel_id, f"two-{i}", client_msg_id=f"c{i}")
            for i in range(2)
        ]

        assert [p.message.seq for p in two] == [1, 2]
        assert not any(p.duplicate for p in two)
        await a.handler.until(lambda: len(a.handler.seqs("tenant-one", channel_id)) == 3)
        await b.handler.until(lambda: len(b.handler.seqs("tenant-two", channel_id)) == 2)
        for handler in (a.handler, b.handler):
            for message in handler.messages:
                assert message.body.startswith(
                    "one-" if message.tenant_id == "tenant-one" else "two-"
                )
        if rig.multi_node:
            assert all(m.tenant_id == "tenant-one" for m in a.handler.messages)
            assert all(m.tenant_id == "tenant-two" for m in b.handler.messages)
        await a.handler.until(lambda: len(recorder.rows) == 5)
        assert sorted((m.tenant_id, m.seq, m.body) for m in recorder.rows.values()) == [
            ("tenant-one", 1, "one-0"),
            ("tenant-one", 2, "one-1"),
            ("tenant-one", 3, "one-2"),
            ("tenant-two", 1, "two-0"),
            ("tenant-two", 2, "two-1"),
        ]
