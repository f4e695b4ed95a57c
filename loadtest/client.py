"""One load-generator WebSocket connection, speaking protocol v1 (picows, callback style).

Incoming frames are handled in ``on_ws_frame`` without an await per frame, so a process can
receive tens of thousands of messages per second. Only ``message``, ``ack`` and the replies
to requests are parsed; a message body starts with the hex monotonic nanosecond time the
message was *scheduled* to be sent (not when it was sent: a late generator shows up as
latency rather than hiding it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from array import array
from typing import Any
from urllib.parse import urlsplit

import msgspec
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not in its stubs

from loadtest.stats import Recorder


class _Message(msgspec.Struct):
    channel: str
    seq: int
    body: str


class _Ack(msgspec.Struct):
    seq: int
    channel: str
    id: int | str | None = None


_message = msgspec.json.Decoder(_Message)
_ack = msgspec.json.Decoder(_Ack)
_any = msgspec.json.Decoder()
_MESSAGE = b'{"type":"message"'
_ACK = b'{"type":"ack"'


class ConnectError(Exception):
    """The server refused or dropped the connection before it was ready."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def make_body(scheduled_ns: int, size: int) -> str:
    stamp = f"{scheduled_ns:x} "
    return stamp + "x" * max(size - len(stamp), 0)


def scheduled_at(body: str) -> int:
    return int(body[: body.index(" ")], 16)


class Window:
    """The measurement window every connection of a process checks against."""

    __slots__ = ("measure", "stop")

    def __init__(self) -> None:
        self.measure = 1 << 62
        self.stop = 1 << 62


class Tracker:
    """What the connections of one process record, shared by all of them."""

    def __init__(self) -> None:
        self.window = Window()
        self.latency = Recorder()
        self.ack_latency = Recorder()
        self.delivered = 0
        self.delivered_in_window = 0
        self.acked_in_window = 0
        self.sent = 0
        self.acked: dict[str, array[int]] = {}
        self.errors: dict[str, int] = {}
        self.closed: dict[int, int] = {}

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class Client(WSListener):
    """A connection: authenticates, subscribes, publishes on a schedule, records."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.transport: WSTransport | None = None
        self.seqs: dict[str, array[int]] = {}
        self.sent_at: dict[int, int] = {}  # request id -> scheduled ns
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._closing = False

    # -- picows callbacks -----------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            if frame.msg_type == WSMsgType.CLOSE:
                self.close_code = int(frame.get_close_code().value)
                # Answer the closing handshake at once: a refusal after the upgrade (a bad
                # token: 4001) is then reported as such, not as a timeout.
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        data = frame.get_payload_as_bytes()
        if data.startswith(_MESSAGE):
            self._on_message(data)
        elif data.startswith(_ACK):
            self._on_ack(data)
        else:
            self._on_reply(data)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        tracker = self.tracker
        code = self.close_code if self.close_code is not None else 1006
        if not self._closing:  # closes the generator asked for are not counted
            tracker.closed[code] = tracker.closed.get(code, 0) + 1
        failure = ConnectError(f"closed {code}")
        for future in (self._ready, *self._waiting.values()):
            if not future.done():
                future.set_exception(failure)
        self._waiting.clear()

    # -- frames in ------------------------------------------------------------------------

    def _on_message(self, data: bytes) -> None:
        now = time.monotonic_ns()
        message = _message.decode(data)
        seqs = self.seqs.get(message.channel)
        if seqs is None:
            seqs = self.seqs[message.channel] = array("q")
        seqs.append(message.seq)
        tracker = self.tracker
        tracker.delivered += 1
        sent = scheduled_at(message.body)
        if tracker.window.measure <= sent < tracker.window.stop:
            tracker.delivered_in_window += 1
            tracker.latency.values.append((now - sent) // 1000)

    def _on_ack(self, data: bytes) -> None:
        now = time.monotonic_ns()
        ack = _ack.decode(data)
        tracker = self.tracker
        acked = tracker.acked.get(ack.channel)
        if acked is None:
            acked = tracker.acked[ack.channel] = array("q")
        acked.append(ack.seq)
        if isinstance(ack.id, int):
            sent = self.sent_at.pop(ack.id, None)
            if sent is not None and tracker.window.measure <= sent < tracker.window.stop:
                tracker.acked_in_window += 1
                tracker.ack_latency.values.append((now - sent) // 1000)

    def _on_reply(self, data: bytes) -> None:
        frame = _any.decode(data)
        kind = frame.get("type")
        if kind == "ready":
            if not self._ready.done():
                self._ready.set_result(frame)
            return
        if kind == "error":
            self.tracker.error(str(frame.get("code")))
        request = frame.get("id")
        future = self._waiting.pop(str(request), None) if request is not None else None
        if future is not None and not future.done():
            future.set_result(frame)

    # -- requests -------------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, msgspec.json.encode(frame))

    async def request(self, frame: dict[str, Any], timeout: float) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[str(frame["id"])] = future
        self.send(frame)
        return await asyncio.wait_for(future, timeout)

    async def ready(self, timeout: float) -> dict[str, Any]:
        """The server's ``ready`` (the token went in the handshake's Authorization header,
        as the protocol asks of clients that are not browsers). A timer on the future
        itself rather than ``asyncio.wait_for``: one connect is mostly this wait, and
        ``storm`` runs thousands a second on the cores the server runs on."""
        ready = self._ready
        timer = asyncio.get_running_loop().call_later(timeout, _time_out, ready)
        try:
            return await ready
        finally:
            timer.cancel()

    async def subscribe(self, channel: str, timeout: float) -> None:
        reply = await self.request(
            {"type": "subscribe", "channel": channel, "id": channel}, timeout
        )
        if reply.get("type") != "subscribed":
            raise ConnectError(f"subscribe refused: {reply.get('code')}")
        self.seqs.setdefault(channel, array("q"))

    def publish(self, channel_prefix: bytes, request_id: int, scheduled_ns: int, size: int) -> None:
        """Send one publish frame; ``channel_prefix`` is the pre-built start of the frame."""
        assert self.transport is not None
        body = make_body(scheduled_ns, size)
        self.sent_at[request_id] = scheduled_ns
        self.transport.send(
            WSMsgType.TEXT,
            b"".join((channel_prefix, body.encode(), b'","id":', b"%d}" % request_id)),
        )
        self.tracker.sent += 1

    def close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_disconnected:
            # 1000 said explicitly: picows' default code is not one a peer may send, and
            # the server answers it as a protocol error (1002).
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def publish_prefix(channel: str) -> bytes:
    return b'{"type":"publish","channel":"' + channel.encode() + b'","body":"'


# Not a ``logging.Logger``: picows then skips making a child logger per connection.
_PICOWS_LOG = logging.LoggerAdapter(logging.getLogger("loadtest.picows"), {})
_MAX_FRAME = 1 << 20
_READ_BUFFER = 4096


@functools.lru_cache(maxsize=16)
def _plain_target(url: str) -> tuple[str, str, int, str]:
    """netloc, host, port and request target of a ``ws://`` URL (parsed once per run)."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.netloc, parts.hostname or "127.0.0.1", parts.port or 80, path


async def _connect_plain(
    url: str, headers: dict[str, str], factory: Any, timeout: float
) -> WSListener:
    """picows' own WebSocket protocol on a plain ``loop.create_connection``.

    Why: ``ws_connect`` resolves the URL, looks for proxies and redirects, and goes through
    aiofastnet's Python connect path on every call; in ``storm`` that machinery cost the
    generator about as much CPU per connect as the handshake itself (docs/BENCHMARKS.md),
    and the generator shares the cores with the server it measures. Same protocol code,
    less setup: only for ``ws://`` URLs; ``wss://`` goes through ``ws_connect``.
    """
    netloc, host, port, path = _plain_target(url)

    def protocol() -> WSProtocol:
        return WSProtocol(
            netloc,
            path,
            True,
            factory,
            _PICOWS_LOG,
            True,
            timeout,
            False,
            20.0,
            20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,
            _MAX_FRAME,
            headers,
            _READ_BUFFER,
        )

    loop = asyncio.get_running_loop()
    transport, ws_protocol = await loop.create_connection(protocol, host, port)
    try:
        await ws_protocol.wait_until_handshake_complete()
    except BaseException:
        transport.abort()
        raise
    listener: WSListener = ws_protocol.listener
    return listener


async def open_client(url: str, token: str, tracker: Tracker, timeout: float = 10.0) -> Client:
    """Connect with the token in the handshake and wait for ``ready``; raise
    ``ConnectError`` if the server refuses."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        if url.startswith("ws://"):
            client = await _connect_plain(url, headers, lambda: Client(tracker), timeout)
        else:
            _, client = await ws_connect(
                lambda: Client(tracker),
                url,
                websocket_handshake_timeout=timeout,
                extra_headers=headers,
            )
    except (TimeoutError, OSError) as exc:
        raise ConnectError(type(exc).__name__) from None
    except WSHandshakeError as exc:  # refused before the upgrade: say with which status
        status = exc.response.status if exc.response is not None else "?"
        raise ConnectError(f"handshake refused ({status})") from None
    except Exception as exc:
        raise ConnectError(type(exc).__name__) from None
    assert isinstance(client, Client)
    try:
        await client.ready(timeout)
    except TimeoutError:
        client.close()
        raise ConnectError("no ready in time") from None
    return client
