"""``server.wsprotocol.HttpEntry``, uvicorn's ``http=`` class in ``baychat serve``: a ``/ws``
upgrade goes from its first bytes to ``SocketProtocol``; everything else must be answered
exactly as uvicorn's own HTTP protocol answered it before (the server beside it here runs
that one with the same ``ws=`` class)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import websockets
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from websockets.utils import accept_key

from tests.harness import ORIGIN, TIMEOUT, LiveServer, expect, live_server, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def uvicorn_http(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """The same app with uvicorn's own HTTP protocol in front (as before ``HttpEntry``)."""
    settings = make_settings(tmp_path_factory.mktemp("uvicorn-http"))
    async with live_server(settings, http="auto") as live:
        yield live


async def _token(server: LiveServer) -> str:
    tenant = await server.tenant()
    user = await server.user(tenant)
    return await server.access_token(user)


async def _exchange(port: int, *parts: bytes, until: bytes | None = None) -> bytes:
    """Send ``parts`` one write each (a short pause between them), return what comes back
    until the server closes (or, with ``until``, once that has been read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(0.02)
            writer.write(part)
            await writer.drain()
        if until is not None:
            return await asyncio.wait_for(reader.readuntil(until), TIMEOUT)
        return await asyncio.wait_for(reader.read(1 << 20), TIMEOUT)
    finally:
        writer.close()


_VARYING = re.compile(rb"(?im)^(date|x-request-id): .*\r\n")
_IDS = re.compile(rb'"(correlation_id|request_id)":"[^"]*"')


def _comparable(answer: bytes) -> bytes:
    """An answer without what differs between any two requests (date, request ids)."""
    return _IDS.sub(rb'"\1":"-"', _VARYING.sub(b"", answer))


def _upgrade(path: str = "/ws", *, version: str = "1.1", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        f"{extra}\r\n"
    ).encode()


REQUESTS: dict[str, bytes] = {
    "plain GET": b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "plain GET /ws": b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "POST /ws": b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    "GET /wsx": b"GET /wsx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "unparsable": b"GET /ws HTTP/1.1\r\nHost x\r\n\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "upgrade to h2c on /ws": (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
    ),
    "upgrade without a key": (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    ),
    "oversized header line": _upgrade(extra=f"X-Padding: {'a' * 9000}\r\n"),
    "too many headers": _upgrade(extra="".join(f"X-H{i}: v\r\n" for i in range(200))),
    "bad origin": _upgrade(extra="Origin: https://evil.example\r\n"),
    "no origin, no bearer": _upgrade(),
    "bad bearer": _upgrade(extra="Authorization: Bearer not-a-token\r\n"),
    "upgrade with a body": _upgrade(extra="Content-Length: 5\r\n") + b"hello",
}


@pytest.mark.parametrize("name", list(REQUESTS))
async def test_every_other_request_is_answered_as_uvicorn_answered_it(
    module_server: LiveServer, uvicorn_http: LiveServer, name: str
) -> None:
    request = REQUESTS[name]
    entry = await _exchange(module_server.port, request)
    before = await _exchange(uvicorn_http.port, request)
    assert _comparable(entry) == _comparable(before)
    if name in ("bad origin", "no origin, no bearer"):
        assert entry.split(b" ", 2)[1] in (b"403", b"401")  # refused before the 101


async def test_pipelined_and_keep_alive_requests_are_answered_as_before(
    module_server: LiveServer, uvicorn_http: LiveServer
) -> None:
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for parts in ((one + one + last,), (one, one, last)):
        entry = await _exchange(module_server.port, *parts)
        before = await _exchange(uvicorn_http.port, *parts)
        assert _comparable(entry) == _comparable(before)
        assert entry.count(b"HTTP/1.1 200 ") >= 2


async def test_a_head_in_many_pieces_still_connects(module_server: LiveServer) -> None:
    """The first bytes are read until they tell: ``G``, ``ET /w``, ``s?x=1 ...``."""
    token = await _token(module_server)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /ws?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    pieces = [request[:1], request[1:6], request[6:40], request[40:]]
    head = await _exchange(module_server.port, *pieces, until=b'"type":"ready"')
    assert head.startswith(b"HTTP/1.1 101 ")
    assert f"Sec-WebSocket-Accept: {accept_key(key)}".encode() in head


async def test_http_10_and_percent_encoded_upgrades_go_the_old_way_and_connect(
    module_server: LiveServer,
) -> None:
    """Not taken by the short way, still served: uvicorn hands them to ``SocketProtocol``
    (``/w%73`` through ASGI, as before)."""
    token = await _token(module_server)
    head = await _exchange(
        module_server.port,
        _upgrade(version="1.0", extra=f"Authorization: Bearer {token}\r\n"),
        until=b'"type":"ready"',
    )
    assert head.startswith(b"HTTP/1.1 101 ")
    async with websockets.connect(
        f"ws://127.0.0.1:{module_server.port}/w%73",
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=TIMEOUT,
    ) as ws:
        await expect(ws, "ready")


async def test_a_browser_connect_with_an_auth_frame_still_works(module_server: LiveServer) -> None:
    token = await _token(module_server)
    ws = await module_server.connect(token, origin=ORIGIN)
    await ws.close()


# -- which way a connection goes --------------------------------------------------------------


class _Transport(asyncio.Transport):
    """A socket that records what is written and which protocol it was handed to."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.protocol: Any = None
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += data

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 80)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _entry(server: LiveServer) -> tuple[Any, _Transport]:
    from server.wsprotocol import HttpEntry

    config: Config = server._server.config
    protocol = HttpEntry(config, ServerState(), {})
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_a_ws_upgrade_never_reaches_uvicorns_http_protocol(module_server: LiveServer) -> None:
    protocol, transport = await _entry(module_server)
    protocol.data_received(_upgrade(extra="Origin: https://evil.example\r\n"))
    assert transport.protocol is None  # answered here
    assert transport.written.startswith(b"HTTP/1.1 403 ")


async def test_anything_else_is_handed_to_uvicorns_http_protocol(module_server: LiveServer) -> None:
    protocol, transport = await _entry(module_server)
    protocol.data_received(b"GET /heal")
    assert isinstance(transport.protocol, HttpToolsProtocol)
    protocol, transport = await _entry(module_server)
    protocol.data_received(b"GET /w")
    assert transport.protocol is None  # cannot tell yet
    protocol.data_received(b"s HTTP/1.1\r\nHost: x\r\n\r\n")  # /ws, but no upgrade
    assert isinstance(transport.protocol, HttpToolsProtocol)
