"""A subscriber that cannot keep up is closed with its own code; the others keep receiving."""

from __future__ import annotations

from pathlib import Path

from protocol.codes import CloseCode
from tests.harness import (
    LiveServer,
    assert_closed,
    expect_messages,
    live_server,
    make_settings,
    send,
    subscribe,
)


async def test_slow_consumer_is_closed_and_others_get_everything(tmp_path: Path) -> None:
    async with live_server(
        make_settings(tmp_path, send_queue_frames=64, max_body_bytes=60_000)
    ) as server:
        await slow_reader_is_closed_and_fast_reader_gets_everything(server)


async def slow_reader_is_closed_and_fast_reader_gets_everything(server: LiveServer) -> None:
    """A firehose to a fast and a never-reading subscriber (any broker; the server's
    send queue must be 64 frames and bodies may be 60,000 bytes)."""
    tenant = await server.tenant()
    alice = await server.user(tenant)
    slow = await server.user(tenant)
    fast = await server.user(tenant)
    await server.channel(tenant, "firehose", alice)
    w_alice = await server.session(tenant, alice)
    w_fast = await server.session(tenant, fast)
    # Never read until the end: the client library stops reading the socket once its
    # small queue is full, so the server's buffer for it fills up.
    w_slow = await server.session(tenant, slow)
    await subscribe(w_slow, "firehose")
    await subscribe(w_fast, "firehose")

    body = "x" * 50_000
    count, chunk = 600, 20
    received: list[dict[str, object]] = []
    # The publisher paces itself on the fast reader, so only the slow one falls behind.
    for start in range(0, count, chunk):
        for i in range(start, start + chunk):
            await send(w_alice, {"type": "publish", "channel": "firehose", "body": f"{i} {body}"})
        received += await expect_messages(w_fast, chunk, timeout=20)
    assert [m["seq"] for m in received] == list(range(1, count + 1))
    await assert_closed(w_slow, CloseCode.SLOW_CONSUMER, timeout=20)
