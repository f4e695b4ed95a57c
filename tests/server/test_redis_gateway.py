"""One gateway process on the Redis broker with its worker embedded: the same chat as on
the in-process broker (the Redis broker is also the log the embedded worker drains)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.metrics import REGISTRY
from tests.harness import (
    LiveServer,
    expect_messages,
    live_server,
    make_settings,
    publish,
    recv,
    send,
    subscribe,
)
from tests.server.broker.rig import drop_namespace, redis_url
from tests.server.test_slow_consumer import slow_reader_is_closed_and_fast_reader_gets_everything


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    url = await redis_url()
    try:
        async with live_server(make_settings(tmp_path, broker_url=url)) as live:
            yield live
    finally:
        await drop_namespace(url)


async def test_chat_and_recovery_through_redis_with_an_embedded_worker(
    redis_server: LiveServer,
) -> None:
    server = redis_server
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "general", alice)
    wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
    await subscribe(wb, "general")

    acks = [await publish(wa, "general", f"m{i}", client_msg_id=f"c{i}") for i in range(3)]
    seen = await expect_messages(wb, 3)
    assert [m["seq"] for m in seen] == [a["seq"] for a in acks] == [1, 2, 3]
    await wb.close()
    for i in range(3, 6):
        await publish(wa, "general", f"m{i}")
    retry = await publish(wa, "general", "m0", client_msg_id="c0")
    assert retry["duplicate"] is True
    assert retry["message_id"] == acks[0]["message_id"]

    wb2 = await server.session(tenant, bob)
    subscribed = await subscribe(wb2, "general", since=3)
    assert subscribed["recovered"] is True
    missed = await expect_messages(wb2, 3)
    assert [(m["seq"], m["body"]) for m in missed] == [(4, "m3"), (5, "m4"), (6, "m5")]


async def test_publishes_in_flight_on_one_connection_keep_frame_order(
    redis_server: LiveServer,
) -> None:
    """Publishes the broker answers by callback, many at once on one connection: each gets
    the seq of its frame's place, a duplicate in the stream gets its original, and a frame
    refused before the broker takes nothing from the order."""
    server = redis_server
    tenant = await server.tenant()
    alice = await server.user(tenant)
    await server.channel(tenant, "order", alice)
    ws = await server.session(tenant, alice)
    too_big = "x" * (server.settings.max_body_bytes + 1)
    frames: list[dict[str, Any]] = []
    for i in range(120):
        frames.append({"type": "publish", "channel": "order", "body": f"m{i}", "id": f"r{i}"})
        frames[-1]["client_msg_id"] = f"c{i}"
        if i == 40:
            frames.append({"type": "publish", "channel": "order", "body": too_big, "id": "big"})
        if i == 80:  # a retry of an earlier frame, sent while both are in flight
            retry = {"type": "publish", "channel": "order", "body": "m5", "id": "again"}
            frames.append({**retry, "client_msg_id": "c5"})
    for frame in frames:  # not waiting for any answer
        await send(ws, frame)
    replies: dict[str, dict[str, Any]] = {}
    while len(replies) < len(frames):
        reply = await recv(ws)
        replies[reply["id"]] = reply
    assert replies["big"]["type"] == "error"
    assert [replies[f"r{i}"]["seq"] for i in range(120)] == list(range(1, 121))
    assert not any(replies[f"r{i}"].get("duplicate") for i in range(120))
    again = replies["again"]
    assert (again["type"], again["duplicate"], again["seq"]) == ("ack", True, 6)
    assert again["message_id"] == replies["r5"]["message_id"]


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_a_burst_reaches_every_subscriber_once_in_order_in_shared_writes(
    redis_server: LiveServer,
) -> None:
    server = redis_server
    tenant = await server.tenant()
    users = [await server.user(tenant) for _ in range(7)]
    await server.channel(tenant, "burst", users[0])
    writer = await server.session(tenant, users[0])
    readers = [await server.session(tenant, user) for user in users[1:]]
    for reader in readers:
        await subscribe(reader, "burst")
    writes, deliveries = (
        _counter("baychat_socket_writes_total"),
        _counter("baychat_deliveries_total"),
    )

    count = 300
    for i in range(count):  # not waiting for acks: they arrive from Redis back to back
        await send(writer, {"type": "publish", "channel": "burst", "body": f"m{i}"})
    for reader in readers:
        got = await expect_messages(reader, count)
        assert [(m["seq"], m["body"]) for m in got] == [(i + 1, f"m{i}") for i in range(count)]
    await publish(writer, "burst", "last")
    for reader in readers:
        [last] = await expect_messages(reader, 1)  # nothing repeated before it
        assert last["seq"] == count + 1

    # Fan-out frames that arrive close together share socket writes (the acks and the
    # `last` round are counted too).
    delivered = _counter("baychat_deliveries_total") - deliveries
    assert delivered == (count + 1) * len(readers)
    assert _counter("baychat_socket_writes_total") - writes < delivered


async def test_a_slow_consumer_on_the_redis_broker_is_closed_and_others_get_everything(
    tmp_path: Path,
) -> None:
    url = await redis_url()
    settings = make_settings(tmp_path, broker_url=url, send_queue_frames=64, max_body_bytes=60_000)
    try:
        async with live_server(settings) as server:
            await slow_reader_is_closed_and_fast_reader_gets_everything(server)
    finally:
        await drop_namespace(url)
