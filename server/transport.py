"""The transports a gateway session writes through, behind ``server.connection.Transport``.

* ``DirectTransport`` (served by ``server.wsprotocol.SocketProtocol``): frames each payload
  once per fan-out, joins what one connection is sent into one socket write (what arrives
  in one loop iteration, and under load the fan-out of up to ``COALESCE_S``), and bounds
  the bytes the socket has not taken; no task per connection.
* ``AsgiTransport``: the portable fallback for any ASGI server, a bounded send queue drained
  by one writer task.

``send`` never awaits in either; overflow closes the connection as a slow consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from typing import Protocol

from starlette.websockets import WebSocket, WebSocketState

from protocol.codes import CloseCode
from server import metrics
from server.wsprotocol import text_frame

_log = logging.getLogger("baychat.transport")


class AsgiTransport:
    def __init__(self, websocket: WebSocket, max_frames: int) -> None:
        self._ws = websocket
        self._max_frames = max_frames
        self._queue: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._closing: tuple[CloseCode, str] | None = None
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="ws-writer")
        self._closer: asyncio.Task[None] | None = None

    @property
    def close_code(self) -> CloseCode | None:
        return self._closing[0] if self._closing else None

    def send(self, data: bytes) -> None:
        if self._closing is not None:
            return
        if len(self._queue) >= self._max_frames:
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: send buffer full")
            return
        self._queue.append(data)
        self._wakeup.set()

    send_coalesced = send  # the writer task already sends whatever has queued meanwhile

    def flush(self) -> bool:
        """Nothing to hurry: the writer task sends what is queued as soon as it can."""
        return False

    def close(self, code: CloseCode, reason: str) -> None:
        if self._closing is not None:
            return
        self._closing = (code, reason)
        if code == CloseCode.SLOW_CONSUMER:
            metrics.slow_consumer()
            # A slow consumer's backlog is dropped: it recovers with `since` on reconnect.
            self._queue.clear()
            self._task.cancel()
            self._closer = asyncio.create_task(self._send_close())
        else:
            self._wakeup.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    data = self._queue.popleft()
                    await self._ws.send_text(data.decode())
                if self._closing is not None:
                    await self._send_close()
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            # The peer went away mid-send: nothing more can be written.
            self._closing = self._closing or (CloseCode.GOING_AWAY, "connection lost")
            self.closed.set()

    async def _send_close(self) -> None:
        assert self._closing is not None
        code, reason = self._closing
        with contextlib.suppress(Exception):
            if self._ws.application_state != WebSocketState.DISCONNECTED:
                await self._ws.close(code=int(code), reason=reason)
        self.closed.set()

    async def aclose(self) -> None:
        """Stop the writer (the connection is over)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class SessionTransport(Protocol):
    """What a gateway session needs of its transport, beyond ``Transport``."""

    @property
    def closed(self) -> asyncio.Event:
        """Set once the close frame is on its way (or the peer is gone)."""
        ...

    @property
    def close_code(self) -> CloseCode | None: ...

    def send(self, data: bytes) -> None: ...

    def send_coalesced(self, data: bytes) -> None: ...

    def flush(self) -> bool:
        """Write what ``send`` has queued now, not in the next loop iteration."""
        ...

    def close(self, code: CloseCode, reason: str) -> None: ...

    async def aclose(self) -> None: ...


class FrameSink(Protocol):
    """The socket side of ``DirectTransport`` (``server.wsprotocol.SocketProtocol``)."""

    def write_frames(self, data: bytes) -> int:
        """Write whole, already framed WebSocket frames and return the bytes the kernel has
        not taken yet (``buffered`` after the write, in the same call: this runs once per
        socket write of every fan-out); -1, writing nothing, once closing or closed."""
        ...

    def buffered(self) -> int: ...

    def close_now(self, code: int, reason: str) -> None: ...


_last_payload: bytes = b""
_last_frame: bytes = text_frame(b"")


def _framed(payload: bytes) -> bytes:
    """``text_frame(payload)``, computed once per fan-out: the hub hands the same bytes
    object to every subscriber in turn, so a one-entry cache keyed by identity frames each
    message once however many sockets it goes to."""
    global _last_payload, _last_frame
    if payload is not _last_payload:
        _last_frame = text_frame(payload)
        _last_payload = payload
    return _last_frame


# A connection that was written to less than this long ago gets its next fan-out frames
# joined into one write when the interval is up, instead of one write per message; see
# ``DirectTransport``. Replies (``send``) never wait for it. The default of
# ``BAYCHAT_WRITE_COALESCE_MS``.
COALESCE_S = 0.02


class _Flusher:
    """Runs the writes of every connection with frames queued: in the next loop iteration
    for those that may write at once, and at a later deadline for those being coalesced."""

    __slots__ = ("_later", "_loop", "_soon")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._soon: list[DirectTransport] = []
        self._later: list[DirectTransport] = []

    def soon(self, transport: DirectTransport) -> None:
        if not self._soon:
            self._loop.call_soon(self._flush_soon)
        self._soon.append(transport)

    def later(self, transport: DirectTransport, when: float) -> None:
        """Flush ``transport`` at loop time ``when``; every transport queued before that
        pass runs goes with it (they are one fan-out's subscribers, written together)."""
        if not self._later:
            self._loop.call_at(when, self._flush_later)
        self._later.append(transport)

    def _flush_soon(self) -> None:
        dirty, self._soon = self._soon, []
        metrics.socket_writes(sum([transport.flush() for transport in dirty]))

    def _flush_later(self) -> None:
        dirty, self._later = self._later, []
        metrics.socket_writes(sum([transport.flush() for transport in dirty]))


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher() -> _Flusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


_IDLE, _LATER, _SOON = 0, 1, 2  # DirectTransport._queued


class DirectTransport:
    """Writes straight to the socket: no queue of ASGI messages, no writer task.

    What a connection is sent is joined into one socket write, because the kernel's
    ``send()`` per socket is most of what a delivery costs:

    * ``send`` (replies: acks, history, errors) is written in the next loop iteration,
      together with anything else queued by then;
    * ``send_coalesced`` (fan-out) is written in the next iteration too if the connection's
      last write is at least ``COALESCE_S`` old; otherwise it waits until that interval is
      up, and every message that arrives meanwhile goes in the same write. A quiet
      connection sees no delay; a busy one gets at most one write per interval, each
      carrying several messages, for at most ``COALESCE_S`` of added latency.

    The bound is on the bytes the kernel has not accepted: past ``max_buffer_bytes`` after
    a write, the connection is closed as a slow consumer (the close frame follows what is
    already buffered; frames not yet written are dropped) and the other subscribers are
    unaffected.
    """

    __slots__ = (
        "_backed_up",
        "_closed",
        "_closing",
        "_coalesce",
        "_flusher",
        "_loop",
        "_max_buffer",
        "_pending",
        "_queued",
        "_sink",
        "_written_at",
    )

    def __init__(
        self, sink: FrameSink, max_buffer_bytes: int, coalesce_s: float | None = None
    ) -> None:
        coalesce_s = COALESCE_S if coalesce_s is None else coalesce_s
        if not 0 <= coalesce_s <= 1:
            raise ValueError("the write coalescing interval must be between 0 and 1 s")
        self._sink = sink
        self._max_buffer = max_buffer_bytes
        self._pending: list[bytes] = []
        self._queued = _IDLE
        self._closing: tuple[CloseCode, str] | None = None
        self._flusher = _flusher()
        self._loop = asyncio.get_running_loop()
        self._coalesce = coalesce_s
        self._written_at = -coalesce_s  # loop time of the last write
        self._backed_up = False  # the kernel had not taken all of the last write
        self._closed: asyncio.Event | None = None  # made when someone waits: saves a deque

    @property
    def closed(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
            if self._closing is not None:
                self._closed.set()
        return self._closed

    @property
    def close_code(self) -> CloseCode | None:
        return self._closing[0] if self._closing else None

    def send(self, data: bytes) -> None:
        if self._closing is not None:
            return
        self._pending.append(_framed(data))
        if self._queued != _SOON:
            self._queued = _SOON
            self._flusher.soon(self)

    def send_coalesced(self, data: bytes) -> None:
        if self._closing is not None:
            return
        global _last_payload, _last_frame
        if data is not _last_payload:  # _framed(), inline: this runs once per recipient
            _last_frame = text_frame(data)
            _last_payload = data
        self._pending.append(_last_frame)
        if self._queued == _IDLE:
            due = self._written_at + self._coalesce
            if self._loop.time() >= due:
                self._queued = _SOON
                self._flusher.soon(self)
            else:
                self._queued = _LATER
                self._flusher.later(self, due)

    def flush(self) -> bool:
        """Write what is queued; True if a write was made."""
        self._queued = _IDLE
        pending = self._pending
        if not pending or self._closing is not None:
            return False
        sink = self._sink
        if self._backed_up and sink.buffered() > self._max_buffer:
            # Still over the bound from an earlier write: the reader is not keeping up.
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: send buffer full")
            return False
        self._pending = []
        self._written_at = self._loop.time()
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        buffered = sink.write_frames(data)
        if buffered < 0:
            self._closing = (CloseCode.GOING_AWAY, "connection lost")
            if self._closed is not None:
                self._closed.set()
            return False
        self._backed_up = buffered > 0
        if buffered > self._max_buffer:
            # What the kernel would not take stays in memory: past the bound, close (a
            # healthy reader's burst goes to the kernel's socket buffer instead).
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: send buffer full")
        return True

    def close(self, code: CloseCode, reason: str) -> None:
        if self._closing is not None:
            return
        if code == CloseCode.SLOW_CONSUMER:
            metrics.slow_consumer()
            # A slow consumer's backlog is dropped: it recovers with `since` on reconnect.
            self._pending = []
        else:
            self.flush()
            if self._closing is not None:  # the flush overflowed: closed as slow consumer
                return
        self._closing = (code, reason)
        self._sink.close_now(int(code), reason)
        if self._closed is not None:
            self._closed.set()

    async def aclose(self) -> None:
        self._pending = []
