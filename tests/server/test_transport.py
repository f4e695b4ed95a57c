"""Both transports: the direct socket path ``baychat serve`` runs and the portable ASGI one.
A subscriber that stops reading is closed as a slow consumer; the others get everything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from protocol.codes import CloseCode
from server import transport as transport_module
from server.config import Settings
from server.metrics import REGISTRY
from server.transport import DirectTransport
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

        # The healthy reader reads all along, as a chat app does.
        received: list[dict[str, Any]] = []

        async def read_healthy() -> None:
            while True:
                received.extend(await expect_messages(healthy, 1, timeout=30))

        reading = asyncio.create_task(read_healthy())
        body = "x" * 16000
        sent = 0
        while _slow_consumers() == before:
            assert sent < 5000, "the stalled subscriber was never disconnected"
            # Bursts well under the bound, so that only the stalled reader overflows.
            for _ in range(BURST - 1):
                await send(writer, {"type": "publish", "channel": "flood", "body": body})
            await publish(writer, "flood", body)
            sent += BURST
        try:
            async with asyncio.timeout(30):
                while len(received) < sent:
                    await asyncio.sleep(0.01)
        finally:
            reading.cancel()
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


class _RecordingSink:
    """The socket side of ``DirectTransport``, recording each write; ``backlog`` is what
    the kernel is pretended not to have taken."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.backlog = 0
        self.closed: tuple[int, str] | None = None

    def write_frames(self, data: bytes) -> int:
        if self.closed is not None:
            return -1
        self.writes.append(data)
        return self.backlog

    def buffered(self) -> int:
        return self.backlog

    def close_now(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def _next_iterations() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_fanout_frames_of_a_busy_connection_share_one_write_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_module, "COALESCE_S", 0.2)
    sink = _RecordingSink()
    transport = DirectTransport(sink, BOUND)

    # A quiet connection's first frame goes out at once.
    transport.send_coalesced(b"m1")
    await _next_iterations()
    assert sink.writes == [text_frame(b"m1")]

    # Within the interval after that write, fan-out frames wait and are joined, in order.
    transport.send_coalesced(b"m2")
    transport.send_coalesced(b"m3")
    await _next_iterations()
    assert len(sink.writes) == 1
    await asyncio.sleep(0.3)
    assert sink.writes[1:] == [text_frame(b"m2") + text_frame(b"m3")]

    # A reply is never held back: it takes what waits with it, still in order.
    transport.send_coalesced(b"m4")
    transport.send(b"ack")
    await _next_iterations()
    assert sink.writes[2:] == [text_frame(b"m4") + text_frame(b"ack")]
    await asyncio.sleep(0.3)
    assert len(sink.writes) == 3  # nothing written twice


async def test_a_coalescing_connection_over_its_bound_is_closed_as_slow_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_module, "COALESCE_S", 0.05)
    sink, other = _RecordingSink(), _RecordingSink()
    stalled, healthy = DirectTransport(sink, 1000), DirectTransport(other, 1000)
    for transport in (stalled, healthy):
        transport.send_coalesced(b"first")
    sink.backlog = 500  # the kernel left part of the first write: under the bound
    await _next_iterations()
    assert sink.closed is None
    sink.backlog = 1001  # ... and the reader stopped: past it before the next write
    for i in range(5):
        for transport in (stalled, healthy):
            transport.send_coalesced(b"m%d" % i)
    await asyncio.sleep(0.15)
    assert sink.closed == (int(CloseCode.SLOW_CONSUMER), "slow consumer: send buffer full")
    assert stalled.close_code == CloseCode.SLOW_CONSUMER
    assert sink.writes == [text_frame(b"first")]  # what waited was dropped, not written
    assert b"".join(other.writes) == b"".join(
        text_frame(p) for p in (b"first", b"m0", b"m1", b"m2", b"m3", b"m4")
    )
    stalled.send_coalesced(b"late")  # a closed transport takes nothing more
    await asyncio.sleep(0.1)
    assert sink.writes == [text_frame(b"first")]


async def test_a_zero_coalescing_interval_writes_every_fan_out_at_once() -> None:
    sink = _RecordingSink()
    transport = DirectTransport(sink, BOUND, coalesce_s=0)
    for i in range(3):
        transport.send_coalesced(b'{"n":%d}' % i)
        await asyncio.sleep(0)  # one loop iteration: the write is done
        await asyncio.sleep(0)
    assert len(sink.writes) == 3


def test_the_coalescing_interval_is_bounded() -> None:
    with pytest.raises(ValueError, match="WRITE_COALESCE_MS"):
        Settings(write_coalesce_ms=5000)
    with pytest.raises(ValueError, match="between 0 and 1"):
        DirectTransport(_RecordingSink(), BOUND, coalesce_s=-1)
