"""The message path end to end: real server, real WebSocket clients."""

from __future__ import annotations

import asyncio

from tests.backends import on_every_store
from tests.harness import (
    LiveServer,
    expect,
    expect_messages,
    publish,
    recv,
    send,
    subscribe,
)

pytestmark = on_every_store


async def test_two_users_chat_and_history_is_decrypted(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "general", alice)
    wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
    await subscribe(wa, "general")
    await subscribe(wb, "general")

    ack = await publish(wa, "general", "hello bob")
    [at_bob] = await expect_messages(wb, 1)

    assert at_bob["seq"] == ack["seq"] == 1
    assert at_bob["message_id"] == ack["message_id"]
    assert at_bob["body"] == "hello bob"
    assert at_bob["sender"] == alice.id
    await send(wb, {"type": "history", "channel": "general", "id": "h"})
    history = await expect(wb, "history", skip=("presence",))
    assert [m["body"] for m in history["messages"]] == ["hello bob"]

    tokens = await server.login(tenant, bob)
    async with server.http() as http:
        page = await http.get(
            "/api/v1/channels/general/messages",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
    assert page.status_code == 200
    assert page.json()["messages"][0]["body"] == "hello bob"


async def test_seq_is_gap_free_and_ordered_per_channel(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    await server.channel(tenant, "a", alice)
    await server.channel(tenant, "b", alice)
    ws = await server.session(tenant, alice)
    listener = await server.session(tenant, alice)
    await subscribe(listener, "a")
    for i in range(20):
        await send(ws, {"type": "publish", "channel": "a" if i % 2 else "b", "body": str(i)})
    received = await expect_messages(listener, 10)
    assert [m["seq"] for m in received] == list(range(1, 11))
    assert [m["body"] for m in received] == [str(i) for i in range(1, 20, 2)]


async def test_a_burst_on_new_channels_gets_seqs_in_frame_order(server: LiveServer) -> None:
    """The first publish on a channel waits while the broker loads the channel; the ones
    sent behind it on the same connection (the broker may take them at once) must not
    overtake it."""
    tenant = await server.tenant()
    alice = await server.user(tenant)
    for name in ("north", "south"):
        await server.channel(tenant, name, alice)
    ws = await server.session(tenant, alice)

    count = 60
    for i in range(count):  # one burst, not waiting for acks
        channel = ("north", "south")[i % 2]
        await send(ws, {"type": "publish", "channel": channel, "body": f"m{i}", "id": f"p{i}"})
    acks: dict[str, dict[str, object]] = {}
    while len(acks) < count:
        frame = await recv(ws)
        assert frame["type"] == "ack", frame
        acks[frame["id"]] = frame

    for parity, channel in enumerate(("north", "south")):
        sent = [f"p{i}" for i in range(parity, count, 2)]
        assert [acks[rid]["channel"] for rid in sent] == [channel] * len(sent)
        assert [acks[rid]["seq"] for rid in sent] == list(range(1, len(sent) + 1))
        assert not any(acks[rid].get("duplicate") for rid in sent)


async def test_reconnect_with_since_gets_exactly_the_missed_messages(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "general", alice)
    wa = await server.session(tenant, alice)
    wb = await server.session(tenant, bob)
    await subscribe(wb, "general")
    for i in range(3):
        await publish(wa, "general", f"seen {i}")
    seen = await expect_messages(wb, 3)
    last_seen = seen[-1]["seq"]
    await wb.close()

    for i in range(5):
        await publish(wa, "general", f"missed {i}")

    wb2 = await server.session(tenant, bob)
    subscribed = await subscribe(wb2, "general", since=last_seen)
    assert subscribed["recovered"] is True
    recovered = await expect_messages(wb2, 5)
    assert [m["body"] for m in recovered] == [f"missed {i}" for i in range(5)]
    assert [m["seq"] for m in recovered] == list(range(last_seen + 1, last_seen + 6))

    await publish(wa, "general", "live")
    [live] = await expect_messages(wb2, 1)
    assert live["body"] == "live"
    assert live["seq"] == last_seen + 6
    # Nothing else arrives: no duplicate of the recovered or live messages.
    await send(wb2, {"type": "ping", "id": "p"})
    assert (await expect(wb2, "pong", skip=("presence",)))["id"] == "p"


async def test_recovery_under_concurrent_publishing_has_no_gap_or_duplicate(
    server: LiveServer,
) -> None:
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "busy", alice)
    writer = await server.session(tenant, alice)
    for i in range(10):
        await publish(writer, "busy", f"before {i}")

    async def flood() -> None:
        for i in range(50):
            await send(writer, {"type": "publish", "channel": "busy", "body": f"during {i}"})
            await asyncio.sleep(0)

    reader = await server.session(tenant, bob)
    flooding = asyncio.create_task(flood())
    await send(reader, {"type": "subscribe", "channel": "busy", "since": 4})
    await flooding
    messages = await expect_messages(reader, 56)
    assert [m["seq"] for m in messages] == list(range(5, 61))


async def test_idempotent_publish_yields_one_message(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "general", alice)
    wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
    await subscribe(wb, "general")

    first = await publish(wa, "general", "once", client_msg_id="retry-1")
    second = await publish(wa, "general", "once", client_msg_id="retry-1")

    assert second["message_id"] == first["message_id"]
    assert second["seq"] == first["seq"]
    assert second["duplicate"] is True
    await publish(wa, "general", "next")
    messages = await expect_messages(wb, 2)
    assert [m["body"] for m in messages] == ["once", "next"]
    assert [m["seq"] for m in messages] == [1, 2]


async def test_idempotency_survives_a_restart(server: LiveServer, tmp_path: object) -> None:
    from tests.harness import live_server

    tenant = await server.tenant()
    alice = await server.user(tenant)
    await server.channel(tenant, "general", alice)
    ws = await server.session(tenant, alice)
    first = await publish(ws, "general", "once", client_msg_id="k")
    settings = server.settings
    await server.stop()

    async with live_server(settings) as again:
        ws2 = await again.session(tenant, alice)
        retry = await publish(ws2, "general", "once", client_msg_id="k")
        fresh = await publish(ws2, "general", "new", client_msg_id="k2")
    assert retry["message_id"] == first["message_id"]
    assert fresh["seq"] == 2


async def test_typing_and_presence_reach_other_subscribers(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "general", alice)
    wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
    await subscribe(wa, "general")
    await subscribe(wb, "general")
    joined = await expect(wa, "presence")
    assert joined == {"type": "presence", "channel": "general", "joined": bob.id}
    await send(wb, {"type": "typing", "channel": "general"})
    typing = await expect(wa, "typing")
    assert typing == {"type": "typing", "channel": "general", "user": bob.id}
    await send(wb, {"type": "unsubscribe", "channel": "general", "id": 9})
    assert (await expect(wb, "unsubscribed"))["id"] == 9
    left = await expect(wa, "presence")
    assert left["left"] == bob.id


async def test_ping_pong(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    ws = await server.session(tenant, alice)
    await send(ws, {"type": "ping", "id": 7})
    assert await recv(ws) == {"type": "pong", "id": 7}
