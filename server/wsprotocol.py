"""The WebSocket protocol uvicorn runs (its ``ws=`` class): ``/ws`` served without ASGI, and
a direct path for outgoing data frames.

* ``SocketProtocol`` takes every upgrade uvicorn's HTTP protocol hands over. ``/ws`` it
  serves itself: the handshake with the ``websockets`` library's sans-I/O
  ``ServerProtocol``, the decision by ``server.gateway.DirectGateway``, then the session
  reading messages from this object (``receive``) and writing through
  ``server.transport.DirectTransport``. Any other upgrade goes, with its bytes, to
  ``AsgiSocketProtocol`` and the ASGI app, as before. Why: docs/BENCHMARKS.md ("What
  changed on the hot path", items 1 and 5).
* ``AsgiSocketProtocol``: uvicorn's sans-I/O protocol with the direct frame sink offered to
  the app as the scope extension ``baychat.socket``. Through ASGI every outgoing frame would
  be one ``websocket.send`` message awaited by a writer task per connection, framed again
  for each socket; server frames are unmasked, so one message framed once is the same bytes
  for every subscriber. An app served by another WebSocket implementation finds no sink and
  falls back to plain ASGI sends (``AsgiTransport``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import struct
import weakref
from collections.abc import Coroutine
from typing import Any, Protocol

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from server.wshandshake import HandshakeRefused, RequestReader, Unparsable

EXTENSION = "baychat.socket"
_log = logging.getLogger("baychat.gateway")
_ws_logger = logging.getLogger("uvicorn.error")


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


class _FrameWrites:
    """The writing half of ``server.transport.FrameSink``, the same for both protocols."""

    __slots__ = ()
    transport: asyncio.Transport
    close_sent: bool
    disconnected: bool

    def write_frames(self, data: bytes) -> int:
        """Write whole, already framed WebSocket frames; the bytes not yet taken by the
        kernel afterwards, or -1 once closing or closed (``FrameSink.write_frames``)."""
        if self.close_sent or self.disconnected:
            return -1
        transport = self.transport
        transport.write(data)
        return transport.get_write_buffer_size()

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()


class AsgiSocketProtocol(_FrameWrites, WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, exposing a direct frame sink to the app, and
    keeping less per connection. ``SocketProtocol`` hands it every upgrade that is not the
    gateway's own ``/ws`` (other paths, or an app without a ``DirectGateway``)."""

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


class DirectHandler(Protocol):
    """What ``SocketProtocol`` needs of the gateway (``server.gateway.DirectGateway``),
    found as ``app.state.ws_gateway`` on the app uvicorn serves."""

    path: str

    def serving(self) -> bool:
        """True once the runtime has started (and until it stops)."""
        ...

    def accept(self, socket: SocketProtocol, request: Request) -> Coroutine[Any, Any, None] | None:
        """Answer the handshake now: a refusal (None), or the 101 and the session to run."""
        ...


_handlers: weakref.WeakKeyDictionary[Config, DirectHandler | None] = weakref.WeakKeyDictionary()


def _handler_of(config: Config) -> DirectHandler | None:
    """The gateway of the app uvicorn serves, through any middleware uvicorn wrapped it in."""
    try:
        return _handlers[config]
    except KeyError:
        pass
    app: Any = config.loaded_app
    handler: DirectHandler | None = None
    for _ in range(8):
        state = getattr(app, "state", None)
        handler = getattr(state, "ws_gateway", None) if state is not None else None
        if handler is not None or not hasattr(app, "app"):
            break
        app = app.app
    _handlers[config] = handler
    return handler


_NOT_ENTRY, _UNDECIDED, _PARSING = 0, 1, 2  # SocketProtocol._entry


class SocketProtocol(_FrameWrites, asyncio.Protocol):
    """The protocol uvicorn hands every WebSocket upgrade to (its ``ws=`` class).

    ``/ws`` does not go through ASGI: the handshake is parsed and answered with the
    ``websockets`` library's sans-I/O ``ServerProtocol`` (the same one uvicorn uses), the
    gateway decides on it and then runs the session reading from this object and writing
    through ``DirectTransport``. Why: a connect through ASGI cost about 1 ms of server CPU
    (the scope, the middleware stack, starlette's ``WebSocket``, ASGI messages for the
    accept and every received frame), and each idle connection held the whole coroutine
    chain of the middleware stack (docs/BENCHMARKS.md). Every other upgrade (another path,
    or an app without a gateway) is handed, bytes and all, to ``AsgiSocketProtocol`` and is
    answered exactly as before.

    Incoming messages wait in a small inbox for the session (reading pauses while two are
    unread; uvicorn's pauses at one); pings, pongs and the closing handshake are handled
    here.
    """

    __slots__ = (
        "_app_state",
        "_close_timer",
        "_entry",
        "_frames",
        "_handler",
        "_head",
        "_inbox",
        "_open",
        "_other",
        "_ping_payload",
        "_ping_timer",
        "_pong_timer",
        "_raw",
        "_reader",
        "_server_state",
        "_text",
        "_waiter",
        "close_sent",
        "config",
        "conn",
        "disconnected",
        "handshake_complete",
        "loop",
        "read_paused",
        "task",
        "transport",
    )

    close_timeout = 10.0
    _first_entry = _NOT_ENTRY  # what ``_entry`` starts as (``HttpEntry``: _UNDECIDED)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()  # pragma: no cover
        self.config = config
        self._server_state = server_state
        self._app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        # The request is read by ``RequestReader`` and checked by this protocol's ``accept``;
        # it is in the OPEN state from the start because it only ever parses frames (one
        # sans-I/O protocol per connection, not one for the handshake and one after it).
        self.conn = ServerProtocol(state=OPEN, max_size=config.ws_max_size, logger=_ws_logger)
        self._reader: RequestReader | None = RequestReader()  # until the request is read
        self._open = False  # the 101 is sent: frames are read from here on
        self._head: bytes | None = None  # a 101 held back to go with the first frame
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._handler = _handler_of(config)
        # The protocol a handed-over connection runs (another upgrade, or plain HTTP).
        self._other: AsgiSocketProtocol | HttpToolsProtocol | None = None
        self._raw: list[bytes] | None = []  # the request's bytes, until it is routed
        self._inbox: list[str | bytes | None] = []
        self._waiter: asyncio.Future[None] | None = None
        self._frames: list[bytes] | None = None  # a fragmented message so far
        self._text = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self.task: asyncio.Task[None] | None = None
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.read_paused = False
        # As uvicorn's ``http=`` class (``HttpEntry``), until the request is routed:
        # _UNDECIDED, then _PARSING once its first bytes are those of a ``/ws`` request.
        self._entry = self._first_entry

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._server_state.connections.add(self)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._other is not None:
            self._other.connection_lost(exc)
            return
        self._stop_keepalive()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._server_state.connections.discard(self)
        self.handshake_complete = True
        self.disconnected = True
        self._deliver(None)
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        if self._other is not None:
            self._other.eof_received()

    def pause_writing(self) -> None:
        if self._other is not None:
            self._other.pause_writing()

    def resume_writing(self) -> None:
        if self._other is not None:
            self._other.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._other is not None:
            self._other.data_received(data)
            return
        reader = self._reader
        if reader is not None:
            self._read_request(reader, data)
            return
        if not self._open:
            return  # refused: nothing more is read
        conn = self.conn
        conn.receive_data(data)
        if conn.parser_exc is not None:
            self._parser_failed()
            return
        for event in conn.events_received():
            self._on_frame(event)  # type: ignore[arg-type]  # OPEN: only frames

    def shutdown(self) -> None:
        """uvicorn is stopping: close with 1012 (service restart), or answer 500 if the
        handshake is still undecided."""
        if self._other is not None:
            self._other.shutdown()
            return
        self._stop_keepalive()
        if self.close_sent:
            self.transport.close()
            return
        if self.handshake_complete:
            self._deliver(None)
            self.conn.send_close(1012)
            self._flush_conn()
            self.close_sent = True
        else:
            self.respond(self.conn.reject(500, "Internal Server Error"))
        self.transport.close()

    # -- the handshake --------------------------------------------------------------------

    def _read_request(self, reader: RequestReader, data: bytes) -> None:
        raw = self._raw
        if raw is not None:
            raw.append(data)
        try:
            if not reader.feed_head(data):
                return
            if self._entry and not reader.is_websocket_upgrade():
                self._to_http()  # a request uvicorn would not upgrade as it stands
                return
            request: Request | None = reader.request(self.conn)
        except Unparsable:
            if self._entry:
                self._to_http()  # uvicorn answers it (400), as before
                return
            self._reader = None
            self.handshake_complete = self.close_sent = True
            self.transport.close()
            return
        except HandshakeRefused as refused:
            # Not a request websockets' reader would take: its answer, or none.
            self._reader = None
            if refused.response is not None:
                self.respond(refused.response)
            else:
                self.handshake_complete = self.close_sent = True
                self.transport.close()
            return
        if request is not None:
            # The bytes past the head (the peer's first frames, which it may not send
            # before our 101) are not read: uvicorn hands over the head alone anyway.
            self._reader = None
            self._on_request(request)

    def _on_request(self, request: Request) -> None:
        handler = self._handler
        if (
            handler is None
            or request.path.partition("?")[0] != handler.path
            or not handler.serving()
        ):
            self._hand_over()
            return
        self._raw = None
        self._entry = _NOT_ENTRY
        # The connection's own context, as a task would have: its log fields stay its own.
        context = contextvars.copy_context()
        try:
            session = context.run(handler.accept, self, request)
        except Exception:
            _log.exception("WebSocket handshake failed", extra={"event": "ws.error"})
            self.respond(self.conn.reject(500, "Internal Server Error"))
            return
        if session is None:
            return  # refused, and answered
        task = self.loop.create_task(session, context=context)
        self.task = task
        self._server_state.tasks.add(task)
        task.add_done_callback(self._on_task_done)
        if self._head is not None:
            # After the session's first step: a 101 it has not sent with a frame goes alone.
            self.loop.call_soon(self._send_head)

    def _to_http(self) -> None:
        """As uvicorn's ``http=`` class, for anything but a plain ``/ws`` upgrade: uvicorn's
        own HTTP protocol takes the connection, the bytes read so far and all that follows,
        and answers exactly as it does when it is the ``http=`` class itself (including
        handing a WebSocket upgrade it accepts to ``SocketProtocol``, its ``ws=`` class)."""
        raw = b"".join(self._raw or ())
        self._raw = self._reader = None
        self._entry = _NOT_ENTRY
        http = HttpToolsProtocol(
            config=self.config,
            server_state=self._server_state,
            app_state=self._app_state,
            _loop=self.loop,
        )
        self._other = http
        self._server_state.connections.discard(self)
        http.connection_made(self.transport)
        # Before its data_received: an upgrade it hands on sets the protocol again.
        self.transport.set_protocol(http)
        if raw:
            http.data_received(raw)

    def _hand_over(self) -> None:
        """Not ours: uvicorn's ASGI WebSocket protocol takes the connection as it came.
        Everything the transport reports from now on is passed on to it (uvicorn makes this
        object the transport's protocol after this first ``data_received`` returns, so
        ``set_protocol`` here would be undone)."""
        raw = b"".join(self._raw or ())
        self._raw = None
        other = AsgiSocketProtocol(
            config=self.config, server_state=self._server_state, app_state=self._app_state
        )
        self._other = other
        self._server_state.connections.discard(self)
        other.connection_made(self.transport)
        other.data_received(raw)

    def respond(self, response: Response, *, hold: bool = False) -> bool:
        """Send the handshake's answer: True if it was a 101 and the socket is now open; any
        other status closes the connection once written.

        ``hold``: a 101 goes out with the first bytes written after it (the session's
        ``ready``, or its close), in one ``send()`` instead of two, or on its own once the
        session's first step is over. Only for a session that writes without waiting for
        the peer (bearer in the handshake): a client that authenticates with a frame waits
        for the 101 first."""
        if self.disconnected or self.handshake_complete:
            return False
        self.handshake_complete = True
        logger = self.conn.logger
        if response.status_code == 101:
            if self.transport.is_closing():
                return False
            if hold:
                self._head = response.serialize()
            else:
                self.transport.write(response.serialize())
            self._open = True
            logger.info("connection open")
            self._start_keepalive()
            return True
        self.close_sent = True
        self.transport.write(response.serialize())
        logger.info("connection rejected (%d %s)", response.status_code, response.reason_phrase)
        self.transport.close()
        return False

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        self._server_state.tasks.discard(task)
        self.task = None
        if not task.cancelled() and task.exception() is not None:
            _log.error("WebSocket session failed", exc_info=task.exception())
            if not self.handshake_complete:
                self.respond(self.conn.reject(500, "Internal Server Error"))
        if self._close_timer is None:
            self.transport.close()

    # -- frames in ------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._text = opcode is Opcode.TEXT
            if frame.fin:
                self._message(frame.data)
            else:
                self._frames = [bytes(frame.data)]
        elif opcode is Opcode.CONT and self._frames is not None:
            self._frames.append(bytes(frame.data))
            if frame.fin:
                data, self._frames = b"".join(self._frames), None
                self._message(data)
        elif opcode is Opcode.PING:
            self._flush_conn()  # websockets queued the pong
        elif opcode is Opcode.PONG:
            self._on_pong(frame)
        elif opcode is Opcode.CLOSE:
            self._on_close()

    def _message(self, data: bytes | bytearray | memoryview) -> None:
        if self.close_sent:
            return  # past our close: discard, keep reading until the peer's close reply
        if self._text:
            try:
                message: str | bytes = bytes(data).decode()
            except UnicodeDecodeError:
                self.conn.fail(1007, "invalid UTF-8")
                self._parser_failed()
                return
        else:
            message = bytes(data)
        self._deliver(message)
        # Reading pauses once a second message waits unread: a session that keeps up (the
        # usual case) then costs no pause and resume per message, two system calls each
        # (docs/BENCHMARKS.md), and one that does not holds at most what one read brought
        # besides the message it is working on.
        if not self.read_paused and len(self._inbox) > 1:
            self.read_paused = True
            self.transport.pause_reading()

    def _on_close(self) -> None:
        if self.close_sent:
            # The peer answered our close frame: the closing handshake is complete.
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
                self.transport.close()
            return
        if not self.transport.is_closing():
            self._deliver(None)
            self._flush_conn()  # websockets queued the close reply
            self.close_sent = True
            self.transport.close()

    def _parser_failed(self) -> None:
        """The peer broke the protocol (a frame too big, bad UTF-8, a masking error...):
        websockets has queued the close frame that says so."""
        self._deliver(None)
        self._flush_conn()
        self.close_sent = True
        self.transport.close()

    def _deliver(self, item: str | bytes | None) -> None:
        self._inbox.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> str | bytes | None:
        """The next message from the peer; None once it is gone or closing."""
        inbox = self._inbox
        while not inbox:
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = inbox.pop(0)
        if item is None:
            inbox.append(None)  # every later call sees the end too
        elif self.read_paused and not inbox:
            self.read_paused = False
            self.transport.resume_reading()
        return item

    # -- keepalive ------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        interval = self.config.ws_ping_interval
        if interval is not None and interval > 0:
            self._ping_timer = self.loop.call_later(interval, self._send_ping)

    def _stop_keepalive(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None
        self._ping_payload = None

    def _send_ping(self) -> None:
        self._ping_timer = None
        if self.close_sent or self.transport.is_closing():
            return
        self._ping_payload = struct.pack("!I", random.getrandbits(32))
        self.conn.send_ping(self._ping_payload)
        self._flush_conn()
        timeout = self.config.ws_ping_timeout
        if timeout is not None:
            self._pong_timer = self.loop.call_later(timeout, self._keepalive_timeout)
        else:
            self._start_keepalive()

    def _on_pong(self, frame: Frame) -> None:
        if self._ping_payload is None or bytes(frame.data) != self._ping_payload:
            return  # unsolicited or stale
        self._ping_payload = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            self._start_keepalive()

    def _keepalive_timeout(self) -> None:
        self._pong_timer = None
        self._ping_payload = None
        if self.close_sent or self.transport.is_closing():
            return
        self._deliver(None)
        self.conn.fail(1011, "keepalive ping timeout")
        self._flush_conn()
        self.close_sent = True
        self.transport.close()

    # -- the sink the gateway's DirectTransport writes to ---------------------------------

    def _flush_conn(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self._write(b"".join(data))

    def _write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self.transport.write(data)

    def _send_head(self) -> None:
        head = self._head
        if head is not None and not self.transport.is_closing():
            self._head = None
            self.transport.write(head)

    def write_frames(self, data: bytes) -> int:
        if self.close_sent or self.disconnected:
            return -1
        self._write(data)  # with the held-back 101, if this is the first write
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
        self._deliver(None)
        self._write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._stop_keepalive()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)


class HttpEntry(SocketProtocol):
    """uvicorn's ``http=`` class: a ``/ws`` upgrade goes straight to ``SocketProtocol``;
    every other connection goes, bytes and all, to uvicorn's own HTTP protocol
    (``HttpToolsProtocol``), which answers it exactly as when it is the ``http=`` class.

    Why: as the ``ws=`` class alone, ``SocketProtocol`` got each upgrade after uvicorn's
    HTTP protocol had been made for the connection (its flow control, both addresses read
    from the socket, an ASGI scope begun), had parsed the head and written it out again for
    the WebSocket protocol to parse a second time: ~8% of the server's CPU per connect in
    ``storm`` (docs/BENCHMARKS.md). Here the head is parsed once.

    Only a request that uvicorn would hand to its ``ws=`` class unchanged takes the short
    way: the first bytes are ``GET /ws`` followed by a space or ``?``, the gateway is
    serving, the head parses, and it is an HTTP/1.1 WebSocket upgrade by uvicorn's own test
    (``RequestReader.is_websocket_upgrade``). Anything else (another method or path, plain
    HTTP on ``/ws``, a head httptools cannot parse, HTTP/1.0) is given to
    ``HttpToolsProtocol``, which answers it as before, and which still hands the upgrades
    it accepts to ``SocketProtocol`` (still the ``ws=`` class). Refusals of a ``/ws``
    upgrade (size limits, a bad upgrade, the origin and bearer rules, the rate limit) are
    ``SocketProtocol``'s and the gateway's, the same whichever way the request came.
    """

    __slots__ = ()
    _first_entry = _UNDECIDED

    def data_received(self, data: bytes) -> None:
        if self._entry != _UNDECIDED:
            super().data_received(data)
            return
        raw = self._raw
        assert raw is not None
        raw.append(data)
        head = b"".join(raw) if len(raw) > 1 else data
        handler = self._handler
        if handler is None:
            self._to_http()
            return
        prefix = _request_prefix(handler.path)
        size = len(prefix)
        if len(head) <= size:
            if not prefix.startswith(head):
                self._to_http()
            return  # too little yet to tell
        if not head.startswith(prefix) or head[size] not in _AFTER_PATH or not handler.serving():
            self._to_http()
            return
        self._entry = _PARSING
        self._raw = []
        super().data_received(head)

    def shutdown(self) -> None:
        if self._entry:
            # No whole request yet: what uvicorn's HTTP protocol does without one.
            self.transport.close()
            return
        super().shutdown()


_AFTER_PATH = frozenset(b" ?")


def _request_prefix(path: str) -> bytes:
    """The first bytes of a ``GET`` request for ``path`` (origin form)."""
    return b"GET " + path.encode("ascii")
