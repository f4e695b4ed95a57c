"""The /ws handshake and socket as ``server.wsprotocol.SocketProtocol`` serves them without
ASGI: what it answers to broken upgrades, that other paths are answered as the ASGI app
answered them before, the headers of a refusal, and the socket-level duties (fragments,
UTF-8, keepalive, shutdown) that uvicorn's protocol used to carry out."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
import websockets
from websockets.asyncio.client import ClientConnection

from protocol.codes import CloseCode
from server.wsprotocol import SocketProtocol
from tests.harness import (
    ORIGIN,
    TIMEOUT,
    LiveServer,
    assert_closed,
    expect,
    live_server,
    make_settings,
    send,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _token(server: LiveServer) -> str:
    tenant = await server.tenant()
    user = await server.user(tenant)
    return await server.access_token(user)


async def _close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the connection; its close code."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    return ws.close_code


async def _raw_exchange(port: int, request: bytes, *, read_until_eof: bool = True) -> bytes:
    """Send raw bytes, return what the server answers (until it closes, or its head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if read_until_eof:
            return await asyncio.wait_for(reader.read(1 << 20), TIMEOUT)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    finally:
        writer.close()


def _upgrade(path: str = "/ws", *, key: bool = True, extra: str = "") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ]
    if key:
        lines.append("Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode())
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def asgi_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """The same app served by uvicorn's own WebSocket protocol: everything through ASGI,
    as before ``SocketProtocol`` served /ws itself."""
    settings = make_settings(tmp_path_factory.mktemp("asgi"))
    async with live_server(settings, ws="websockets-sansio") as live:
        yield live


async def test_an_upgrade_without_a_key_is_answered_400(module_server: LiveServer) -> None:
    answer = await _raw_exchange(module_server.port, _upgrade(key=False))
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"Sec-WebSocket-Key" in answer  # websockets says what was wrong


async def test_an_oversized_header_line_is_refused(module_server: LiveServer) -> None:
    # Past websockets' 8 KiB line limit (uvicorn's HTTP parser takes it and hands it over).
    answer = await _raw_exchange(module_server.port, _upgrade(extra=f"X-Padding: {'a' * 9000}\r\n"))
    status = answer.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 431 Request Header Fields Too Large", b"HTTP/1.1 400 Bad Request")


async def test_a_good_raw_upgrade_gets_101_with_the_accept_key(module_server: LiveServer) -> None:
    token = await _token(module_server)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    head = await _raw_exchange(module_server.port, request, read_until_eof=False)
    assert head.startswith(b"HTTP/1.1 101 ")
    from websockets.utils import accept_key

    assert f"Sec-WebSocket-Accept: {accept_key(key)}".encode() in head


@pytest.mark.parametrize("path", ["/other", "/ws/", "/api/v1/channels", "/w%73"])
async def test_other_paths_are_answered_as_the_asgi_app_answered_them(
    module_server: LiveServer, asgi_server: LiveServer, path: str
) -> None:
    async def outcome(server: LiveServer) -> Any:
        headers = {"Authorization": f"Bearer {await _token(server)}"}
        url = f"ws://127.0.0.1:{server.port}{path}"
        try:
            async with websockets.connect(
                url, additional_headers=headers, open_timeout=TIMEOUT
            ) as ws:
                # Served through ASGI: its frames reach that protocol, not this one.
                await expect(ws, "ready")
                await send(ws, {"type": "ping", "id": "p"})
                assert (await expect(ws, "pong"))["id"] == "p"
                return "open"
        except websockets.InvalidStatus as refused:
            return refused.response.status_code

    direct, asgi = await outcome(module_server), await outcome(asgi_server)
    assert direct == asgi
    if path == "/w%73":  # percent-decoded, it is /ws: served (through ASGI, as before)
        assert direct == "open"
    else:
        assert direct != "open"


async def test_a_refusal_carries_the_boundary_headers(module_server: LiveServer) -> None:
    with pytest.raises(websockets.InvalidStatus) as caught:
        await module_server.connect(origin="https://evil.example")
    response = caught.value.response
    assert response.status_code == 403
    headers = response.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert headers["Connection"] == "close"
    assert "Strict-Transport-Security" not in headers  # plain HTTP, no proxy
    body = json.loads(response.body)
    assert body["error"]["correlation_id"] == headers["X-Request-ID"]
    no_origin = None
    with pytest.raises(websockets.InvalidStatus) as caught:
        await module_server.connect(origin=no_origin)
    assert caught.value.response.status_code == 401
    assert caught.value.response.headers["WWW-Authenticate"] == "Bearer"


async def test_behind_a_trusted_proxy_the_refusal_has_hsts_and_the_proxy_request_id(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, trusted_proxies=("127.0.0.1",))
    async with live_server(settings) as server:
        chosen = "proxy-" + secrets.token_hex(8)
        forwarded = {"X-Forwarded-Proto": "https", "X-Request-ID": chosen}
        with pytest.raises(websockets.InvalidStatus) as caught:
            await server.connect(origin="https://evil.example", additional_headers=forwarded)
        headers = caught.value.response.headers
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        assert headers["X-Request-ID"] == chosen


async def test_a_fragmented_auth_frame_is_reassembled(module_server: LiveServer) -> None:
    token = await _token(module_server)
    ws = await module_server.connect(origin=ORIGIN)
    text = json.dumps({"type": "auth", "token": token, "id": "frag"})
    await ws.send([text[:10], text[10:30], text[30:]])
    assert (await expect(ws, "ready"))["id"] == "frag"


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(module_server: LiveServer) -> None:
    token = await _token(module_server)
    ws = await module_server.connect(
        origin=None, additional_headers={"Authorization": f"Bearer {token}"}
    )
    await expect(ws, "ready")
    await ws.send(b'{"type": "ping", "id": "\xff"}', text=True)
    assert await _close_code(ws) == 1007


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return head[0] & 0x0F, await reader.readexactly(size)


async def test_the_server_pings_and_drops_a_peer_that_never_answers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ping_interval_s=0.2, ping_timeout_s=0.3)
    async with live_server(settings) as server:
        token = await _token(server)
        # A peer that answers pings stays.
        alive: ClientConnection = await server.connect(
            origin=None, additional_headers={"Authorization": f"Bearer {token}"}
        )
        await expect(alive, "ready")
        # A raw peer that never answers a ping.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 ")
        seen = []
        while True:
            opcode, payload = await _read_frame(reader)
            seen.append(opcode)
            if opcode == 0x8:
                assert int.from_bytes(payload[:2], "big") == 1011
                break
        assert seen[0] == 0x1  # ready
        assert 0x9 in seen  # ping
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # and the socket is closed
        writer.close()
        await send(alive, {"type": "ping", "id": "still"})
        assert (await expect(alive, "pong"))["id"] == "still"


@pytest.mark.parametrize("ws_class", [SocketProtocol, "websockets-sansio"])
async def test_server_shutdown_closes_sockets_with_1012(
    tmp_path: Path, ws_class: type[asyncio.Protocol] | str
) -> None:
    async with live_server(make_settings(tmp_path), ws=ws_class) as server:
        token = await _token(server)
        ws = await websockets.connect(
            server.ws_url,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=TIMEOUT,
        )
        await expect(ws, "ready")
        server._server.should_exit = True
        assert await _close_code(ws) == 1012


# -- a bearer connect: the 101 and ready, and the checks it still gets -----------------------


async def test_a_bearer_connect_gets_the_101_and_then_ready(module_server: LiveServer) -> None:
    # The 101 is held back to share a write with ``ready``: both must still arrive, in order.
    token = await _token(module_server)
    request = _upgrade(extra=f"Authorization: Bearer {token}\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", module_server.port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 ")
        first, size = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
        assert first == 0x81  # one unmasked text frame
        if size == 126:
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TIMEOUT), "big")
        payload = await asyncio.wait_for(reader.readexactly(size), TIMEOUT)
        assert json.loads(payload)["type"] == "ready"
    finally:
        writer.close()


async def _bearer_connect(server: LiveServer, token: str) -> ClientConnection:
    ws = await websockets.connect(
        server.ws_url,
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=TIMEOUT,
        close_timeout=0.5,
    )
    server.clients.append(ws)
    return ws


async def test_a_revoked_session_is_refused_at_connect(module_server: LiveServer) -> None:
    tenant = await module_server.tenant()
    tokens = await module_server.login(tenant, await module_server.user(tenant))
    first = await _bearer_connect(module_server, tokens["access_token"])
    assert (await expect(first, "ready"))["user"]  # the session's state is now cached
    async with module_server.http() as http:
        answer = await http.post(
            "/api/v1/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert answer.status_code == 204
    await assert_closed(first, CloseCode.REVOKED)
    again = await _bearer_connect(module_server, tokens["access_token"])
    await assert_closed(again, CloseCode.REVOKED)


async def test_an_expired_token_is_refused_at_connect(module_server: LiveServer) -> None:
    tenant = await module_server.tenant()
    user = await module_server.user(tenant)
    live = jwt.decode(await module_server.access_token(user), options={"verify_signature": False})
    access = module_server.runtime.auth.access
    kid = access.keys.current()
    now = int(time.time())
    expired = jwt.encode(
        {**live, "iat": now - 120, "exp": now - 60},
        access.keys.keys[kid],
        algorithm="HS256",
        headers={"kid": kid},
    )
    ws = await _bearer_connect(module_server, expired)
    await assert_closed(ws, CloseCode.TOKEN_EXPIRED)
