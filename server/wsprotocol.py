"""The WebSocket protocol uvicorn runs for ``/ws``: its sans-I/O websockets protocol, plus a
direct path for outgoing data frames.

Why: through ASGI every outgoing frame is one ``websocket.send`` message awaited by a writer
task per connection, and is framed again for each socket. Profiling the fan-out showed most
of the server's CPU per delivery in that machinery, not in the kernel's send. Server frames
are unmasked, so one message framed once is the same bytes for every subscriber: this
protocol lets the gateway write those bytes to the socket's asyncio transport without an
await, a task or a copy per recipient (``server.transport.DirectTransport``).

Everything else (handshake, reading frames, pings, the closing handshake) is uvicorn's
``WebSocketsSansIOProtocol`` unchanged; the ASGI app is still what accepts the connection
and receives frames. The direct path is offered to the app as the scope extension
``baychat.socket``; an app served by another WebSocket implementation does not find it and
falls back to plain ASGI sends.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

EXTENSION = "baychat.socket"


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame carrying ``payload`` (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


class _Inbox:
    """The ASGI receive queue, smaller than ``asyncio.Queue`` (which keeps three deques per
    connection): uvicorn pauses reading after each message, so it holds one or two."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items


class _Flag:
    """``asyncio.Event`` for one waiter at a time, without a deque per connection."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = True
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class SocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, exposing a direct frame sink to the app, and
    keeping less per connection (tens of thousands of them are mostly idle)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and hasattr(self, "response"):
            # The handshake is over: its request and response are never read again.
            del self.request, self.response

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = self

    # -- the sink the gateway's DirectTransport writes to ---------------------------------

    def write_frames(self, data: bytes) -> bool:
        """Write whole, already framed WebSocket frames; False once closing or closed."""
        if self.close_sent or self.disconnected:
            return False
        self.transport.write(data)
        return True

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()

    def close_now(self, code: int, reason: str) -> None:
        """Start the closing handshake without waiting for the write buffer to drain (a
        slow consumer's buffer may never drain); the peer sees ``code`` after the data
        already buffered. The socket is dropped if the peer does not answer in time."""
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
