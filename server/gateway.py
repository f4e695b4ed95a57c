"""The WebSocket endpoint: a thin adapter between a socket and the protocol.

Life of a connection: the handshake is checked before it is accepted (an ``Origin`` must
be on the allowlist; a client without one must bring a bearer token in the
``Authorization`` header; connects are rate-limited per client address), then
authenticate (that bearer header, or an ``auth`` frame within ``auth_timeout``), send
``ready``, then read frames one at a time and answer each. Frames are rate-limited per
connection (and publishes per user); a connection that keeps going past its limits is
closed with ``RATE_LIMITED``. A connection lives no longer than its access token unless a
``refresh`` frame extends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from protocol import frames as f
from protocol.codec import decode_client_frame, encode, field_of
from protocol.codes import CloseCode, ErrorCode
from protocol.errors import (
    AuthError,
    BayChatError,
    ForbiddenError,
    ProtocolError,
    RateLimitedError,
)
from server import metrics
from server.api.http import bearer_of, bearer_token, client_ip, error_response, request_id
from server.auth.principal import NEVER, Principal
from server.broker.base import Published, SharedBudget
from server.chat import Action
from server.chat import draft as chat_draft
from server.config import Settings
from server.connection import Connection, Subscription
from server.logs import bind
from server.middleware import REQUEST_ID, SECURITY_HEADERS
from server.origins import OriginPolicy
from server.proxies import TrustedProxies
from server.ratelimit import Budget, principal_key
from server.transport import AsgiTransport, DirectTransport, SessionTransport
from server.wsprotocol import EXTENSION
from storage.ids import new_hex_id
from storage.models import Channel, Message

if TYPE_CHECKING:
    from server.runtime import Runtime
    from server.wsprotocol import SocketProtocol

# The next message from the peer (text or bytes), or None once it is gone or closing.
Receiver = Callable[[], Awaitable[str | bytes | None]]

_log = logging.getLogger("baychat.gateway")
EXPIRY_WARNING_S = 60
TYPING_INTERVAL_S = 1.0
# An agent token may never expire; its connection re-checks the token this often anyway,
# so that a lost control event cannot keep a revoked agent listening.
AGENT_RECHECK_S = 60.0


def _message_frame(message: Message) -> f.MessageOut:
    return f.MessageOut(
        channel=message.channel,
        seq=message.seq,
        message_id=message.id,
        sender=message.sender_id,
        body=message.body,
        sent_at=message.sent_at,
    )


def _handshake_refusal(
    origins: OriginPolicy, origin: str | None, has_bearer: bool
) -> tuple[BayChatError, str] | None:
    """Why a handshake is refused before it is accepted, or None: an ``Origin`` must be on
    the allowlist, and a client without one must bring a bearer token."""
    if origin is not None and not origins.allows(origin):
        return ForbiddenError("origin not allowed"), "origin"
    if origin is None and not has_bearer:
        # Not a browser (browsers always send Origin): it must authenticate up front.
        return (
            AuthError("clients that send no Origin must send an Authorization bearer token"),
            "no origin, no bearer",
        )
    return None


def _log_refusal(why: str) -> None:
    _log.info("handshake refused", extra={"event": "ws.denied", "reason": why})


def _log_connect(ip: str, browser: bool) -> None:
    _log.info(
        "websocket connect", extra={"event": "ws.connect", "client_ip": ip, "browser": browser}
    )


async def websocket_endpoint(websocket: WebSocket) -> None:
    """``/ws`` through ASGI: the fallback when the app is served by anything but
    ``server.wsprotocol.SocketProtocol`` (which runs ``DirectGateway`` instead)."""
    runtime: Runtime = websocket.app.state.runtime
    origins: OriginPolicy = websocket.app.state.origin_policy
    origin = websocket.headers.get("origin")
    bearer = bearer_token(websocket)
    refusal = _handshake_refusal(origins, origin, bearer is not None)
    if refusal is not None:
        exc, why = refusal
        _log_refusal(why)
        await websocket.send_denial_response(error_response(exc, request_id(websocket)))
        return
    ip = client_ip(websocket)
    _log_connect(ip, origin is not None)
    await websocket.accept()
    settings = runtime.settings
    sink = websocket.scope.get("extensions", {}).get(EXTENSION)
    transport: SessionTransport
    if sink is not None:
        transport = DirectTransport(
            sink, settings.send_buffer_bytes, settings.write_coalesce_ms / 1000
        )
    else:
        transport = AsgiTransport(websocket, settings.send_queue_frames)

    async def receive() -> str | bytes | None:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        data = message.get("bytes")
        return bytes(data) if data is not None else b""

    await run_session(ClientSession(runtime, receive, bearer, transport), ip)


async def run_session(session: ClientSession, ip: str) -> None:
    """An accepted socket's life: the connect rate limit, then the session, then teardown.
    (Whatever this frame holds, an idle connection holds: the session and the address.)"""
    runtime = session.runtime
    started = time.monotonic()
    try:
        try:
            await runtime.limiter.hit("ws_connect", ip)
        except RateLimitedError as exc:
            session._error(exc, None)
            session._close(CloseCode.RATE_LIMITED, "too many connections from this address")
            return
        await session.run()
    finally:
        await session.teardown()
        _log.info(
            "websocket closed",
            extra={
                "event": "ws.close",
                "close_code": (
                    int(session.transport.close_code) if session.transport.close_code else None
                ),
                "duration_s": round(time.monotonic() - started, 3),
            },
        )


def _header(headers: Headers, name: str) -> str | None:
    """The first value of a header, like starlette's ``Headers.get``."""
    values = headers.get_all(name)
    return values[0] if values else None


class DirectGateway:
    """``/ws`` without ASGI, for ``server.wsprotocol.SocketProtocol`` (``app.state.ws_gateway``).

    Everything the ASGI path (``server.middleware.Boundary`` + ``websocket_endpoint``)
    does for a handshake, in the same order: the client address behind trusted proxies and
    a request id (logged with every line of the connection); websockets' own validation of
    the upgrade (its 4xx for a bad one); the Origin allowlist and the bearer rule, refused
    with the same HTTP error response and security headers; then the accept (101), the
    connect rate limit and the session.
    """

    path = "/ws"

    def __init__(self, state: Any, settings: Settings, origins: OriginPolicy) -> None:
        self._state = state  # the app's state: the runtime appears there at start-up
        self.origins = origins
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.hsts = f"max-age={settings.hsts_max_age_s}; includeSubDomains"

    def serving(self) -> bool:
        return getattr(self._state, "runtime", None) is not None

    def accept(self, socket: SocketProtocol, request: Request) -> Coroutine[Any, Any, None] | None:
        """Decide on a handshake, at once: answer a refusal (None), or send the 101 and
        return the session to run. Runs in the connection's own context (log fields)."""
        runtime: Runtime = self._state.runtime
        headers = request.headers
        sock = socket.transport
        peername = sock.get_extra_info("peername")
        client = peername[0] if isinstance(peername, tuple) and peername else ""
        secure = sock.get_extra_info("sslcontext") is not None
        peer = self.proxies.resolve(
            client,
            "wss" if secure else "ws",
            _header(headers, "X-Forwarded-For") or "",
            _header(headers, "X-Forwarded-Proto") or "",
        )
        incoming = _header(headers, "X-Request-ID") or ""
        rid = incoming if peer.via_proxy and REQUEST_ID.fullmatch(incoming) else new_hex_id()
        bind(request_id=rid, conn_id=None, tenant_id=None)
        response = socket.conn.accept(request)
        if response.status_code != 101:
            socket.respond(response)  # not a valid upgrade: websockets' 400 says why
            return None
        origin = _header(headers, "Origin")
        bearer = bearer_of(_header(headers, "Authorization") or "")
        refusal = _handshake_refusal(self.origins, origin, bearer is not None)
        if refusal is not None:
            exc, why = refusal
            _log_refusal(why)
            socket.respond(self._denial(exc, rid, peer.secure))
            return None
        _log_connect(peer.ip, origin is not None)
        if not socket.respond(response, hold=bearer is not None):
            return None
        settings = runtime.settings
        transport = DirectTransport(
            socket, settings.send_buffer_bytes, settings.write_coalesce_ms / 1000
        )
        return run_session(ClientSession(runtime, socket.receive, bearer, transport), peer.ip)

    def _denial(self, exc: BayChatError, rid: str, secure: bool) -> Response:
        """The HTTP error response of a refused handshake, with the headers
        ``server.middleware.Boundary`` puts on every response."""
        answer = error_response(exc, rid)
        out = Headers()
        for raw_name, raw_value in answer.raw_headers:
            out[raw_name.decode("latin-1")] = raw_value.decode("latin-1")
        for name, value in SECURITY_HEADERS.items():
            out[name] = value
        out["X-Request-ID"] = rid
        if secure:
            out["Strict-Transport-Security"] = self.hsts
        out["Cache-Control"] = "no-store"
        out["Date"] = email.utils.formatdate(usegmt=True)
        out["Connection"] = "close"
        status = answer.status_code
        return Response(status, HTTPStatus(status).phrase, out, bytes(answer.body))


class _Budgets(NamedTuple):
    """A session's rate-limit budgets, bound on its first frame (``_make_budgets``)."""

    frames: Budget
    publish_connection: Budget
    publish_user: Budget
    publish_user_shared: SharedBudget | None  # the broker hits publish_user itself


class _Ack:
    """Sends a publish's ``ack`` once its message is stored (an ``AckCallback``). One object
    per message waiting, not a closure and its five cells: at 10,000 msgs/s a backlog of
    waiting acks made the garbage collector a tenth of the gateway's CPU."""

    __slots__ = ("_accepted", "_channel", "_duplicate", "_request_id", "_session")

    def __init__(
        self,
        session: ClientSession,
        accepted: float,
        request_id: f.RequestId | None,
        channel: str,
        duplicate: bool,
    ) -> None:
        self._session = session
        self._accepted = accepted
        self._request_id = request_id
        self._channel = channel
        self._duplicate = duplicate

    def __call__(self, message: Message) -> None:
        metrics.acked(time.monotonic() - self._accepted)
        self._session._send(
            f.Ack(
                message_id=message.id,
                seq=message.seq,
                channel=self._channel,
                duplicate=self._duplicate,
                id=self._request_id,
            )
        )


MAX_PUBLISHING = 64  # a connection's publishes awaiting the broker before it stops reading
PUBLISH_DRAIN_S = 5.0


class ClientSession:
    __slots__ = (
        "_auth_request_id",
        "_bearer",
        "_budgets",
        "_expiry",
        "_frame_no",
        "_last_typing",
        "_passed_at",
        "_publishing",
        "_receive",
        "_recheck",
        "_refused_at",
        "_unsettled",
        "conn",
        "runtime",
        "settings",
        "transport",
    )

    def __init__(
        self,
        runtime: Runtime,
        receive: Receiver,
        bearer: str | None,
        transport: SessionTransport,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self._receive = receive
        self._bearer = bearer
        self.transport = transport
        self.conn: Connection | None = None
        self._expiry: asyncio.TimerHandle | None = None  # the expiry warning, then the expiry
        self._recheck: asyncio.Task[None] | None = None
        self._last_typing: dict[str, float] | None = None  # made on the first typing frame
        # Flood policy: close after ``flood_strikes`` rate-limited frames in a row, in
        # frame order, though a publish's budget may be refused after later frames passed.
        self._frame_no = 0
        self._passed_at = -1  # the latest frame that passed its limits
        self._refused_at: list[int] = []  # rate-limited frames after it
        self._publishing: set[asyncio.Future[Any]] = set()
        self._unsettled = 0  # publishes handed to a task that has not had the broker's answer
        self._budgets: _Budgets | None = None  # made on the first frame
        self._auth_request_id: f.RequestId | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        principal = await self._authenticate()
        if principal is None:
            return
        hub = self.runtime.node.hub
        if (
            hub.count_of(principal.tenant_id, principal.id)
            >= self.settings.max_connections_per_user
        ):
            _log.warning("too many connections", extra={"event": "ws.too_many_connections"})
            self._send(
                f.ErrorOut(
                    code=ErrorCode.RATE_LIMITED, message="too many connections for this user"
                )
            )
            self._close(CloseCode.RATE_LIMITED, "too many connections for this user")
            return
        self.conn = Connection(self.transport, principal)
        bind(conn_id=self.conn.id)
        hub.register(self.conn)
        metrics.connection_opened(principal.kind)
        self._schedule_expiry(principal.expires_at)
        if principal.kind == "agent":
            self._recheck = asyncio.create_task(self._recheck_agent(), name="agent-recheck")
        self._send(
            f.Ready(
                session=self.conn.id,
                user=principal.id,
                tenant=principal.tenant_id,
                expires_at=principal.expires_at,
                id=self._auth_request_id,
            )
        )
        # Written now rather than with the next loop iteration's replies: on a bearer
        # connect it is the same send() as the 101 (SocketProtocol.respond, ``hold``).
        self.transport.flush()
        await self._serve()

    async def _authenticate(self) -> Principal | None:
        auth = self.runtime.auth
        token = self._bearer
        self._bearer = None  # not kept for the life of the connection
        if token is None:
            try:
                # asyncio.timeout, not wait_for: no extra task per connection.
                async with asyncio.timeout(self.settings.auth_timeout_s):
                    raw = await self._receive()
            except TimeoutError:
                self._close(CloseCode.AUTH_TIMEOUT, "no auth frame in time")
                return None
            if raw is None:
                return None
            try:
                frame = decode_client_frame(raw)
            except ProtocolError as exc:
                metrics.auth_failed(ErrorCode.UNAUTHORIZED)
                self._close(CloseCode.UNAUTHORIZED, f"first frame must be auth: {exc.code}")
                return None
            if not isinstance(frame, f.Auth):
                metrics.auth_failed(ErrorCode.UNAUTHORIZED)
                self._close(CloseCode.UNAUTHORIZED, "first frame must be auth")
                return None
            token = frame.token
            self._auth_request_id = frame.id
        try:
            principal = await auth.authenticate(token)
        except AuthError as exc:
            metrics.auth_failed(exc.code)
            _log.info(
                "access token refused", extra={"event": "auth.token_refused", "code": exc.code}
            )
            code = exc.wire.close_code or CloseCode.UNAUTHORIZED
            self._close(code, exc.message)
            return None
        bind(tenant_id=principal.tenant_id)
        _log.info(
            "websocket authenticated",
            extra={"event": "auth.ws", "principal_id": principal.id, "kind": principal.kind},
        )
        return principal

    async def _serve(self) -> None:
        while True:
            raw = await self._receive()
            if raw is None or self.transport.close_code is not None:
                return
            request_id: f.RequestId | None = None
            self._frame_no += 1
            frame_no = self._frame_no
            try:
                budgets = self._budgets or self._make_budgets()
                # In memory a check is decided at once; a Redis counter is awaited.
                if (pending := budgets.frames.check()) is not None:
                    await pending
                if isinstance(raw, bytes):
                    raise ProtocolError("binary frames are not part of protocol v1")
                frame = decode_client_frame(raw)
                request_id = frame.id
                metrics.frame_in(str(frame.__struct_config__.tag))
                await self._recheck_principal()
                if isinstance(frame, f.Publish):  # the hot path, without the dispatch step
                    if (pending := budgets.publish_connection.check()) is not None:
                        await pending
                    # With the counters in the broker's Redis, the broker makes this hit.
                    shared = budgets.publish_user_shared
                    if shared is None:
                        if (pending := budgets.publish_user.check()) is not None:
                            await pending
                        self._passed(frame_no)
                    # else passed when the broker has taken it (``_publish``)
                    await self._start_publish(frame, shared, frame_no)
                else:
                    self._passed(frame_no)
                    await self._dispatch(frame)
            except Exception as exc:
                self._failed(exc, request_id, frame_no)

    async def _start_publish(
        self, frame: f.Publish, budget: SharedBudget | None, frame_no: int
    ) -> None:
        """Check the publish and hand it to the broker without waiting for the broker's
        answer: the next frame is read meanwhile, so one connection's publishes share
        round trips to a remote broker instead of queueing behind each other's. They stay
        in order: the channel is resolved here, in frame order, and each task reaches the
        broker's publish (which takes its place in line before it first waits) in the
        order the tasks were made."""
        if len(frame.body.encode()) > self.settings.max_body_bytes:
            raise ProtocolError(
                f"body exceeds {self.settings.max_body_bytes} bytes", code=ErrorCode.TOO_LARGE
            )
        channel = await self._channel(frame.channel, "write")
        accepted = time.monotonic()
        chat = self.runtime.chat
        draft = chat_draft(self.principal, channel, frame.body, frame.client_msg_id, budget)
        if not self._unsettled:
            # Nothing of this connection's is still on its way to the broker, so a publish
            # the broker takes at once (the in-process one, with room in its log) is taken
            # here, in frame order, without a task per message (most of a publish's cost
            # at 10,000 msgs/s, docs/BENCHMARKS.md). Its errors are the frame's.
            result = chat.publish_now(draft)
            if result is not None:
                self._published(frame, channel.name, budget, frame_no, accepted, result)
                return
        if len(self._publishing) >= MAX_PUBLISHING:
            await asyncio.wait(self._publishing, return_when=asyncio.FIRST_COMPLETED)
        pending = chat.publish_draft(draft)
        self._unsettled += 1
        waiting: asyncio.Future[Any]
        if isinstance(pending, asyncio.Future):
            # The broker queued it in this step (Redis, behind this connection's earlier
            # publishes): its answer is taken by a callback, without a task per message.
            waiting = pending
            waiting.add_done_callback(
                partial(self._settled, frame, channel.name, budget, frame_no, accepted)
            )
        else:
            waiting = asyncio.ensure_future(
                self._publish(frame, pending, channel.name, budget, frame_no, accepted)
            )
        self._publishing.add(waiting)
        waiting.add_done_callback(self._publishing.discard)

    def _passed(self, frame_no: int) -> None:
        if frame_no > self._passed_at:
            self._passed_at = frame_no
            if self._refused_at:  # empty except under a flood: no new list per frame
                self._refused_at = [n for n in self._refused_at if n > frame_no]

    def _failed(self, exc: Exception, request_id: f.RequestId | None, frame_no: int) -> None:
        if isinstance(exc, RateLimitedError):
            if frame_no > self._passed_at:
                self._refused_at.append(frame_no)
            self._error(exc, request_id)
            if len(self._refused_at) >= self.runtime.limiter.flood_strikes:
                _log.warning("closing a flooding connection", extra={"event": "ws.flood"})
                self._close(CloseCode.RATE_LIMITED, "rate limit exceeded repeatedly")
        elif isinstance(exc, ProtocolError):
            metrics.frame_in("invalid")
            self._error(exc, request_id if request_id is not None else exc.request_id)
        elif isinstance(exc, BayChatError):
            self._error(exc, request_id)
        else:
            ref = self.conn.id if self.conn else "-"
            _log.error("frame handling failed", exc_info=exc, extra={"event": "ws.error"})
            self._send(
                f.ErrorOut(
                    code=ErrorCode.INTERNAL,
                    message=f"internal error (ref {ref})",
                    id=request_id,
                )
            )

    async def teardown(self) -> None:
        if self._publishing:
            # Publishes handed to the broker finish (their messages are in the log either
            # way); their acks still go out if the socket is open.
            await asyncio.wait(list(self._publishing), timeout=PUBLISH_DRAIN_S)
        if self._expiry is not None:
            self._expiry.cancel()
        if self._recheck is not None:
            self._recheck.cancel()
        conn = self.conn
        if conn is not None:
            metrics.connection_closed(conn.principal.kind)
            node = self.runtime.node
            emptied = node.hub.unregister(conn)
            for tenant_id, channel_id in emptied:
                with contextlib.suppress(Exception):
                    await self.runtime.broker.unsubscribe(tenant_id, channel_id)
            for channel_id in list(conn.subscriptions):
                with contextlib.suppress(Exception):
                    await self._presence(conn, channel_id, joined=False)
        if self.transport.close_code is None:
            self.transport.close(CloseCode.GOING_AWAY, "connection closed")
        if not self.transport.closed.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.transport.closed.wait(), 1.0)
        await self.transport.aclose()

    # -- helpers ------------------------------------------------------------------------

    def _make_budgets(self) -> _Budgets:
        """The budgets every frame is checked against (``ws_frames``) and every publish
        (``publish_connection``, ``publish_user``), made on the first frame: an idle
        connection never holds them. The user key never changes: a refresh keeps the
        identity."""
        conn = self.conn
        assert conn is not None
        limiter = self.runtime.limiter
        user = principal_key(conn.principal.tenant_id, conn.principal.kind, conn.principal.id)
        self._budgets = _Budgets(
            frames=limiter.budget("ws_frames", conn.id),
            publish_connection=limiter.budget("publish_connection", conn.id),
            publish_user=limiter.budget("publish_user", *user),
            publish_user_shared=limiter.deferred("publish_user", *user),
        )
        return self._budgets

    def _send(self, frame: f.ServerFrame) -> None:
        metrics.frame_out(str(frame.__struct_config__.tag))
        self.transport.send(encode(frame))

    def _close(self, code: CloseCode, reason: str) -> None:
        self.transport.close(code, reason[:120])

    def _error(self, exc: BayChatError, request_id: f.RequestId | None) -> None:
        retry_after = getattr(exc, "retry_after", None)
        field = field_of(exc) if isinstance(exc, ProtocolError) else None
        self._send(
            f.ErrorOut(
                code=exc.code,
                message=exc.message,
                retry_after=retry_after,
                field=field,
                id=request_id,
            )
        )
        close_code = exc.wire.close_code
        if close_code is not None:
            self._close(close_code, exc.message)

    def _schedule_expiry(self, expires_at: int) -> None:
        """One timer per connection: it sends the ``expiring`` warning, then re-arms itself
        to close the connection when the token expires."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if expires_at >= NEVER:
            return
        warn_in = expires_at - time.time() - EXPIRY_WARNING_S
        self._expiry = asyncio.get_running_loop().call_later(
            max(warn_in, 0), self._expiring, expires_at
        )

    def _expiring(self, expires_at: int) -> None:
        self._send(f.Expiring(expires_at=expires_at))
        self._expiry = asyncio.get_running_loop().call_later(
            max(expires_at - time.time(), 0),
            self._close,
            CloseCode.TOKEN_EXPIRED,
            "access token expired",
        )

    async def _recheck_principal(self) -> None:
        """Every frame is authorised as of its arrival: the credential must still be live,
        and the current role or scopes apply (cheap: a cache hit)."""
        conn = self.conn
        assert conn is not None
        conn.principal = await self.runtime.auth.current(conn.principal)

    async def _recheck_agent(self) -> None:
        while self.transport.close_code is None:
            await asyncio.sleep(AGENT_RECHECK_S)
            try:
                await self._recheck_principal()
            except AuthError as exc:
                self._close(exc.wire.close_code or CloseCode.REVOKED, exc.message)
            except Exception:
                _log.warning("agent credential re-check failed; trying again later")

    @property
    def principal(self) -> Principal:
        assert self.conn is not None
        return self.conn.principal

    def _channel(self, name: str, action: Action) -> Awaitable[Channel]:
        return self.runtime.chat.channel(self.principal, name, action)

    async def _presence(self, conn: Connection, channel_id: str, *, joined: bool) -> None:
        sub = conn.subscriptions.get(channel_id)
        if sub is None:
            return
        user = conn.principal.id
        frame = f.Presence(
            channel=sub.channel.name, joined=user if joined else None, left=None if joined else user
        )
        await self.runtime.broker.publish_ephemeral(
            conn.principal.tenant_id, channel_id, encode(frame), conn.id
        )

    # -- frames -------------------------------------------------------------------------

    async def _dispatch(self, frame: f.ClientFrame) -> None:
        match frame:
            case f.Subscribe():
                await self._subscribe(frame)
            case f.Unsubscribe():
                await self._unsubscribe(frame)
            case f.History():
                await self._history(frame)
            case f.Typing():
                await self._typing(frame)
            case f.Ping():
                self._send(f.Pong(id=frame.id))
            case f.Refresh():
                await self._refresh(frame)
            case f.Auth():
                raise ProtocolError("already authenticated")

    async def _publish(
        self,
        frame: f.Publish,
        pending: Awaitable[Published],
        channel_name: str,
        budget: SharedBudget | None,
        frame_no: int,
        accepted: float,
    ) -> None:
        try:
            result = await pending
        except Exception as exc:
            self._failed(exc, frame.id, frame_no)
            return
        finally:
            # Counted here, not by a done callback: that runs an iteration later, after the
            # next frames, which would then be sent down this path too, and so on.
            self._unsettled -= 1
        self._published(frame, channel_name, budget, frame_no, accepted, result)

    def _settled(
        self,
        frame: f.Publish,
        channel_name: str,
        budget: SharedBudget | None,
        frame_no: int,
        accepted: float,
        answer: asyncio.Future[Published],
    ) -> None:
        """``_publish`` for a publish the broker answers in a future."""
        self._unsettled -= 1
        if answer.cancelled():
            return
        exc = answer.exception()
        if isinstance(exc, Exception):
            self._failed(exc, frame.id, frame_no)
        elif exc is None:
            self._published(frame, channel_name, budget, frame_no, accepted, answer.result())

    def _published(
        self,
        frame: f.Publish,
        channel_name: str,
        budget: SharedBudget | None,
        frame_no: int,
        accepted: float,
        result: Published,
    ) -> None:
        """The broker has the message: ack it now if it is already stored (a duplicate),
        else once it is (``AckTracker``)."""
        if budget is not None:
            self._passed(frame_no)
        ack = _Ack(self, accepted, frame.id, channel_name, result.duplicate)
        if result.persisted:
            ack(result.message)
        else:
            self.runtime.node.acks.expect(result.message.id, ack)

    async def _subscribe(self, frame: f.Subscribe) -> None:
        conn = self.conn
        assert conn is not None
        channel = await self._channel(frame.channel, "read")
        if channel.id not in conn.subscriptions and (
            len(conn.subscriptions) >= self.settings.max_subscriptions
        ):
            raise ForbiddenError(
                f"at most {self.settings.max_subscriptions} subscriptions per connection"
            )
        sub = Subscription(channel, backlog_limit=self.settings.send_queue_frames)
        conn.subscriptions[channel.id] = sub
        key = (conn.principal.tenant_id, channel.id)
        if self.runtime.node.hub.join(conn, key):
            await self.runtime.broker.subscribe(*key)
        # Live messages now queue in sub.backlog while we catch up from storage.
        try:
            since = frame.since
            if since is None:
                since = await self.runtime.chat.head(self.principal, channel)
                missed = await self.runtime.chat.after(self.principal, channel, since, 1000)
                recovered = False
            else:
                limit = self.runtime.chat.recovery_limit
                missed = await self.runtime.chat.after(self.principal, channel, since, limit + 1)
                recovered = len(missed) <= limit
                if not recovered:
                    # Too far behind to replay: start from the head; the client pages history.
                    since = await self.runtime.chat.head(self.principal, channel)
                    missed = []
        except BaseException:
            conn.subscriptions.pop(channel.id, None)
            self.runtime.node.hub.leave(conn, key)
            raise
        sub.last_seq = since
        head = missed[-1].seq if missed else since
        self._send(f.Subscribed(channel=channel.name, seq=head, recovered=recovered, id=frame.id))
        for message in missed:
            if message.seq > sub.last_seq:
                sub.last_seq = message.seq
                self.transport.send(encode(_message_frame(message)))
        backlog, sub.backlog = sub.backlog or [], None
        for seq, data in backlog:
            if seq > sub.last_seq:
                sub.last_seq = seq
                self.transport.send(data)
        await self._presence(conn, channel.id, joined=True)

    async def _unsubscribe(self, frame: f.Unsubscribe) -> None:
        conn = self.conn
        assert conn is not None
        channel = next(
            (s.channel for s in conn.subscriptions.values() if s.channel.name == frame.channel),
            None,
        )
        if channel is None:
            raise BayChatError("not subscribed to this channel", code=ErrorCode.NOT_SUBSCRIBED)
        await self._presence(conn, channel.id, joined=False)
        conn.subscriptions.pop(channel.id, None)
        key = (conn.principal.tenant_id, channel.id)
        if self.runtime.node.hub.leave(conn, key):
            await self.runtime.broker.unsubscribe(*key)
        self._send(f.Unsubscribed(channel=channel.name, id=frame.id))

    async def _history(self, frame: f.History) -> None:
        channel = await self._channel(frame.channel, "history")
        messages = await self.runtime.chat.history(
            self.principal, channel, frame.before, frame.limit
        )
        self._send(
            f.HistoryOut(
                channel=channel.name,
                messages=[
                    f.HistoryMessage(
                        seq=m.seq,
                        message_id=m.id,
                        sender=m.sender_id,
                        body=m.body,
                        sent_at=m.sent_at,
                    )
                    for m in messages
                ],
                id=frame.id,
            )
        )

    async def _typing(self, frame: f.Typing) -> None:
        conn = self.conn
        assert conn is not None
        now = time.monotonic()
        last_typing = self._last_typing
        if last_typing is None:
            last_typing = self._last_typing = {}
        if now - last_typing.get(frame.channel, 0.0) < TYPING_INTERVAL_S:
            return  # typing is advisory: extra notices inside the interval are dropped
        channel = await self._channel(frame.channel, "presence")
        last_typing[frame.channel] = now
        data = encode(f.TypingOut(channel=channel.name, user=conn.principal.id))
        await self.runtime.broker.publish_ephemeral(
            conn.principal.tenant_id, channel.id, data, conn.id
        )

    async def _refresh(self, frame: f.Refresh) -> None:
        conn = self.conn
        assert conn is not None
        fresh = await self.runtime.auth.authenticate(frame.token)
        current = conn.principal
        if (fresh.tenant_id, fresh.id, fresh.kind) != (current.tenant_id, current.id, current.kind):
            raise ForbiddenError("token belongs to another identity")
        conn.principal = fresh
        self._schedule_expiry(fresh.expires_at)
        self._send(f.Refreshed(expires_at=fresh.expires_at, id=frame.id))
