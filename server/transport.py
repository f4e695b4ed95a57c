"""The ASGI WebSocket transport: a bounded send queue drained by one writer task.

``send`` never awaits; the writer coalesces nothing at the ASGI level (each frame is one
ASGI message) but keeps the hub's fan-out loop free of socket waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from starlette.websockets import WebSocket, WebSocketState

from protocol.codes import CloseCode

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

    def close(self, code: CloseCode, reason: str) -> None:
        if self._closing is not None:
            return
        self._closing = (code, reason)
        if code == CloseCode.SLOW_CONSUMER:
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
