"""One ``storm`` connect at the least cost to the generator: TCP, the upgrade with the
token in the ``Authorization`` header, the 101 and its ``Sec-WebSocket-Accept`` checked,
the first frame checked to be ``ready``, then a close frame (1000) and the socket closed.

Why not ``loadtest.client``: a storm connection never sends or receives anything else,
and picows' full client (its protocol, listener, handshake timer and futures) cost the
generator about as much CPU per connect as the server spends, on the same two cores
(docs/BENCHMARKS.md). This is a plain ``asyncio.Protocol`` with one future per connect;
every outcome is reported with the reasons ``loadtest.client.open_client`` gives.
Only ``ws://`` URLs (``storm`` over TLS goes through ``open_client``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from typing import cast
from urllib.parse import urlsplit

from loadtest.client import ConnectError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 16384
_READY = b'{"type":"ready"'
# A masked close frame with code 1000 (a client's frames are masked, RFC 6455 5.3).
_MASK = os.urandom(4)
_CLOSE = (
    bytes((0x88, 0x82)) + _MASK + bytes(b ^ m for b, m in zip(b"\x03\xe8", _MASK, strict=False))
)


class StormTarget:
    """The parts of the request that are the same for every connect to one URL."""

    __slots__ = ("head", "host", "port")

    def __init__(self, url: str) -> None:
        if not url.startswith("ws://"):
            raise ValueError("storm connects are plain ws:// only")
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.head = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        ).encode()


class _Connect(asyncio.Protocol):
    __slots__ = ("_accept", "_buffer", "_done", "_request", "_upgraded", "transport")

    def __init__(self, request: bytes, accept: bytes, done: asyncio.Future[None]) -> None:
        self._request = request
        self._accept = accept
        self._done = done
        self._buffer = b""
        self._upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = stream = cast(asyncio.Transport, transport)
        stream.write(self._request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if not self._upgraded:
            end = buffer.find(_HEAD_END)
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self._fail("handshake too long")
                self._buffer = buffer
                return
            head = buffer[:end]
            if not head.startswith(b"HTTP/1.1 101 "):
                self._fail(f"handshake refused ({head[9:12].decode(errors='replace')})")
                return
            if _header(head, b"sec-websocket-accept") != self._accept:
                self._fail("bad accept key")
                return
            self._upgraded = True
            buffer = buffer[end + len(_HEAD_END) :]
        self._buffer = buffer
        self._first_frame(buffer)

    def _first_frame(self, buffer: bytes) -> None:
        """The server's first frame (unmasked): ``ready``, or a close with its code."""
        if len(buffer) < 2:
            return
        size, start = buffer[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < start + size:
            return  # more to come
        opcode = buffer[0] & 0x0F
        payload = buffer[start : start + size]
        if opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if size >= 2 else 1005
            self._fail(f"closed {code}")
        elif opcode == 0x1 and payload.startswith(_READY):
            done = self._done
            if not done.done():
                done.set_result(None)
            self._close()
        else:
            self._fail("no ready")

    def connection_lost(self, exc: Exception | None) -> None:
        done = self._done
        if not done.done():
            done.set_exception(ConnectError("closed 1006"))

    def _fail(self, reason: str) -> None:
        done = self._done
        if not done.done():
            done.set_exception(ConnectError(reason))
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_CLOSE)
            transport.close()


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of a response header (``name`` in lower case)."""
    at = head.lower().find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


def _time_out(done: asyncio.Future[None], protocol: _Connect | None) -> None:
    if not done.done():
        done.set_exception(ConnectError("no ready in time"))
    if protocol is not None and protocol.transport is not None:
        protocol.transport.abort()


async def storm_connect(target: StormTarget, token: str, timeout: float) -> None:
    """Connect, authenticate with ``token`` in the handshake, see ``ready``, close; raise
    ``ConnectError`` with the reason otherwise."""
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455
    request = b"".join((target.head, key, b"\r\nAuthorization: Bearer ", token.encode(), _HEAD_END))
    done: asyncio.Future[None] = loop.create_future()
    protocol = _Connect(request, accept, done)
    timer = loop.call_later(timeout, _time_out, done, protocol)
    try:
        try:
            await loop.create_connection(lambda: protocol, target.host, target.port)
        except OSError as exc:
            if done.done():
                done.exception()  # the timer's: retrieved, the connect error is reported
            raise ConnectError(type(exc).__name__) from None
        await done
    finally:
        timer.cancel()
