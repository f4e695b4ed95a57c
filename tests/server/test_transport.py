"""Both transports: the direct socket path ``baychat serve`` runs and the portable ASGI one.
A subscriber that stops reading is closed as a slow consumer; the others get everything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

from protocol.codes import CloseCode
from server.metrics import REGISTRY
from server.wsprotocol import SocketProtocol, text_frame
from tests.harness import (
    LiveServer,
    assert_closed,
    expect_messages,
    live_server,
    make_settings,
    publish,
    send,
    subscribe,
)

BOUND = 1 << 20
BURST = 16
TRANSPORTS = {"direct": SocketProtocol, "asgi": "websockets-sansio"}


@pytest.fixture(params=sorted(TRANSPORTS))
async def small_buffers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[LiveServer]:
    settings = make_settings(tmp_path, send_queue_frames=8, send_buffer_bytes=BOUND)
    async with live_server(settings, ws=TRANSPORTS[request.param]) as live:
        yield live


def test_text_frame_headers_follow_rfc_6455() -> None:
    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame(b"x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")


async def test_slow_consumer_is_closed_and_others_get_everything(tmp_path: Path) -> None:
    # The direct transport (what `baychat serve` runs) sends the close code even while the
    # socket is not writable; the ASGI fallback can only wait for the buffer to drain.
    settings = make_settings(tmp_path, send_buffer_bytes=BOUND)
    async with live_server(settings) as server:
        tenant = await server.tenant()
        alice, bob, carol = [await server.user(tenant) for _ in range(3)]
        await server.channel(tenant, "flood", alice)
        writer = await server.session(tenant, alice)
        healthy = await server.session(tenant, bob)
        stalled = await server.session(tenant, carol)
        await subscribe(healthy, "flood")
        await subscribe(stalled, "flood")
        # The stalled client stops reading: the kernel's buffers fill, then the server's bound.
        stalled.transport.pause_reading()
        before = _slow_consumers()

        body = "x" * 16000
        sent = 0
        while _slow_consumers() == before:
            assert sent < 5000, "the stalled subscriber was never disconnected"
            # Bursts well under the bound, so that only the stalled reader overflows.
            for _ in range(BURST - 1):
                await send(writer, {"type": "publish", "channel": "flood", "body": body})
            await publish(writer, "flood", body)
            sent += BURST
        received = await expect_messages(healthy, sent, timeout=30)
        assert [m["seq"] for m in received] == list(range(1, sent + 1))

        stalled.transport.resume_reading()
        await assert_closed(stalled, CloseCode.SLOW_CONSUMER, timeout=15)
        # The writer and the healthy reader are unaffected.
        await publish(writer, "flood", "after")
        [after] = await expect_messages(healthy, 1)
        assert after["body"] == "after"


def _slow_consumers() -> float:
    return REGISTRY.get_sample_value("baychat_slow_consumer_disconnects_total") or 0.0


async def test_chat_works_over_both_transports(small_buffers: LiveServer) -> None:
    server = small_buffers
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "general", alice)
    wa: ClientConnection = await server.session(tenant, alice)
    wb: ClientConnection = await server.session(tenant, bob)
    await subscribe(wb, "general")
    for i in range(5):
        await publish(wa, "general", f"m{i}")
    got = await expect_messages(wb, 5)
    assert [m["body"] for m in got] == [f"m{i}" for i in range(5)]
