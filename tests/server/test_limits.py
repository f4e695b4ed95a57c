"""Each configured limit, tried until it bites: WebSocket frame size, HTTP body size, publish
body size, subscriptions per connection, connections per user, the time allowed for the auth
frame, and the idle ping/pong timeout."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import websockets

from protocol.codes import CloseCode
from storage.models import User
from tests.harness import LiveServer, assert_closed, expect, live_server, make_settings, send

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = {
    "max_frame_bytes": 4096,
    "max_http_body_bytes": 1024,
    "max_body_bytes": 100,
    "max_subscriptions": 2,
    "max_connections_per_user": 2,
    "auth_timeout_s": 0.5,
    "ping_interval_s": 0.3,
    "ping_timeout_s": 0.3,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path_factory.mktemp("small"), **LIMITS)) as live:
        yield live


async def _user(server: LiveServer, *channels: str) -> tuple[User, str]:
    tenant = await server.tenant()
    user = await server.user(tenant)
    for name in channels:
        await server.channel(tenant, name, user)
    return user, await server.access_token(user)


async def test_frames_above_the_maximum_size_close_the_connection(small: LiveServer) -> None:
    _, token = await _user(small, "general")
    ws = await small.connect(token)
    await send(ws, {"type": "publish", "channel": "general", "body": "x" * 50, "id": 1})
    assert (await expect(ws, "ack"))["id"] == 1
    await ws.send('{"type": "ping", "pad": "' + "x" * 4096 + '"}')
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009  # message too big, before any parsing


async def test_permessage_deflate_is_off(small: LiveServer) -> None:
    _, token = await _user(small)
    ws = await small.connect(token, compression="deflate")  # the client offers it
    assert ws.response is not None
    assert "Sec-WebSocket-Extensions" not in ws.response.headers


async def test_http_bodies_above_the_maximum_are_413(small: LiveServer) -> None:
    _, token = await _user(small)
    auth = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    big = b'{"name": "' + b"x" * 1024 + b'"}'

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 100  # no Content-Length: counted as it streams in

    async with small.http() as http:
        declared = await http.post("/api/v1/channels", content=big, headers=auth)
        streamed = await http.post("/api/v1/channels", content=chunked(), headers=auth)
        fits = await http.post("/api/v1/channels", json={"name": "fits"}, headers=auth)
    for answer in (declared, streamed):
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "too_large"
    assert fits.status_code == 201


async def test_publish_bodies_above_the_maximum_are_refused(small: LiveServer) -> None:
    _, token = await _user(small, "general")
    ws = await small.connect(token)
    await send(ws, {"type": "publish", "channel": "general", "body": "x" * 100, "id": "ok"})
    assert (await expect(ws, "ack"))["id"] == "ok"
    # 51 characters, 102 bytes: the limit is in bytes
    await send(ws, {"type": "publish", "channel": "general", "body": "é" * 51, "id": "big"})
    error = await expect(ws, "error")
    assert (error["code"], error["id"]) == ("too_large", "big")


async def test_subscriptions_per_connection_are_capped(small: LiveServer) -> None:
    _, token = await _user(small, "a", "b", "c")
    ws = await small.connect(token)
    for name in ("a", "b", "a"):  # re-subscribing does not count twice
        await send(ws, {"type": "subscribe", "channel": name, "id": name})
        await expect(ws, "subscribed")
    await send(ws, {"type": "subscribe", "channel": "c", "id": "c"})
    error = await expect(ws, "error")
    assert (error["code"], error["id"]) == ("forbidden", "c")


async def test_connections_per_user_are_capped(small: LiveServer) -> None:
    _, token = await _user(small)
    first = await small.connect(token)
    await small.connect(token)
    third = await small.connect()
    await send(third, {"type": "auth", "token": token})
    assert (await expect(third, "error"))["code"] == "rate_limited"
    await assert_closed(third, CloseCode.RATE_LIMITED)

    await first.close()
    for _ in range(50):  # the server notices the close on its own schedule
        if small.runtime.node.hub.count_of(*_ids(small, token)) < 2:
            break
        await asyncio.sleep(0.02)
    await small.connect(token)  # a slot is free again


def _ids(server: LiveServer, token: str) -> tuple[str, str]:
    principal = server.runtime.auth.access.verify(token)
    return principal.tenant_id, principal.id


async def test_the_auth_frame_must_come_in_time(small: LiveServer) -> None:
    ws = await small.connect()
    await assert_closed(ws, CloseCode.AUTH_TIMEOUT)


async def _raw_websocket(
    port: int, token: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that completes the handshake and then never answers a ping."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _opcodes_until_eof(reader: asyncio.StreamReader) -> list[int]:
    opcodes = []
    while True:
        try:
            first, second = await reader.readexactly(2)
        except asyncio.IncompleteReadError:
            return opcodes
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        await reader.readexactly(length)
        opcodes.append(first & 0x0F)


async def test_a_peer_that_stops_answering_pings_is_dropped(small: LiveServer) -> None:
    _, token = await _user(small)
    reader, writer = await _raw_websocket(small.port, token)
    healthy = await small.connect(token)  # answers pings by itself
    try:
        opcodes = await asyncio.wait_for(_opcodes_until_eof(reader), 10)
    finally:
        writer.close()
    assert opcodes[0] == 0x1  # the ready frame
    assert 0x9 in opcodes  # pinged, never answered, then cut off
    await send(healthy, {"type": "ping", "id": "alive"})
    assert (await expect(healthy, "pong"))["id"] == "alive"
