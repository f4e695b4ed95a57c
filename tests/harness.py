"""Test harness: a real server on an ephemeral port, real HTTP and WebSocket clients, and
small domain helpers (``assert_closed(ws, CloseCode.FORBIDDEN)``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from protocol.codes import CloseCode
from server.app import create_app
from server.auth.authority import scope_for_operator
from server.config import Settings
from server.runtime import Runtime, make_passwords
from server.wsprotocol import HttpEntry, SocketProtocol
from storage.models import Channel, Role, Tenant, User

PASSWORD = "correct horse battery staple"
TIMEOUT = 5.0
# The web app's origin in tests: on the server's WebSocket allowlist, and sent by `connect`
# (like a browser) unless a test passes its own `origin=` (None: send no Origin at all).
ORIGIN = "https://app.baychat.test"


# End-to-end tests log in, connect and publish in bursts from 127.0.0.1: rate limits far
# above what they do, so that only the tests of rate limiting (which set their own) meet one.
RELAXED_LIMITS: dict[str, Any] = {
    name: "100000/minute"
    for name in (
        "rate_login_ip",
        "rate_login_account",
        "rate_login_account_ip",
        "rate_refresh",
        "rate_token_create",
        "rate_http_write",
        "rate_ws_connect",
        "rate_ws_frames",
        "rate_publish_connection",
        "rate_publish_user",
    )
}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    overrides = {**RELAXED_LIMITS, **overrides}
    base = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'baychat.db'}",
        database_owner_url=f"sqlite:///{data_dir / 'baychat.db'}",
        keystore_dir=data_dir / "keys",
        allowed_origins=(ORIGIN,),
    )
    return base.with_(**overrides)


@dataclass
class LiveServer:
    settings: Settings
    port: int
    runtime: Runtime
    _server: uvicorn.Server
    _task: asyncio.Task[None]
    clients: list[ClientConnection] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http_url, timeout=TIMEOUT)

    # -- fixtures of the domain ---------------------------------------------------------

    async def tenant(self, slug: str | None = None, plan: str = "free") -> Tenant:
        return await self.runtime.store.tenants.create(
            slug or f"t-{secrets.token_hex(4)}",
            plan,  # type: ignore[arg-type]
        )

    async def user(self, tenant: Tenant, email: str | None = None, role: Role = "member") -> User:
        password_hash = await make_passwords(self.settings).hash(PASSWORD)
        return await self.runtime.store.users.create(
            scope_for_operator(tenant.id),
            email or f"u-{secrets.token_hex(4)}@example.com",
            password_hash,
            role,
        )

    async def channel(
        self, tenant: Tenant, name: str, creator: User, *, private: bool = False
    ) -> Channel:
        return await self.runtime.store.channels.create(
            scope_for_operator(tenant.id), name, private=private, created_by=creator.id
        )

    async def add_member(self, tenant: Tenant, channel: Channel, user: User) -> None:
        await self.runtime.store.channels.add_member(
            scope_for_operator(tenant.id), channel.id, user.id
        )

    async def login(self, tenant: Tenant, user: User) -> dict[str, Any]:
        async with self.http() as http:
            response = await http.post(
                "/api/v1/auth/login",
                json={"tenant": tenant.slug, "email": user.email, "password": PASSWORD},
            )
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens

    async def access_token(self, user: User) -> str:
        """A live session's access token for ``user``, without the (rate-limited) login."""
        from server.auth.tokens import new_refresh_token, token_digest

        session = await self.runtime.store.sessions.create(
            scope_for_operator(user.tenant_id),
            user.id,
            token_digest(new_refresh_token(user.tenant_id)),
            lifetime_ms=3_600_000,
            user_agent="tests",
            ip="127.0.0.1",
        )
        return self.runtime.auth.access.issue(
            tenant_id=user.tenant_id, subject=user.id, session_id=session.id, role=user.role
        ).token

    async def connect(self, token: str | None = None, **kwargs: Any) -> ClientConnection:
        kwargs.setdefault("close_timeout", 0.5)
        kwargs.setdefault("origin", ORIGIN)
        ws = await websockets.connect(self.ws_url, open_timeout=TIMEOUT, **kwargs)
        self.clients.append(ws)
        if token is not None:
            await send(ws, {"type": "auth", "token": token})
            ready = await expect(ws, "ready")
            assert ready["user"]
        return ws

    async def session(self, tenant: Tenant, user: User) -> ClientConnection:
        tokens = await self.login(tenant, user)
        return await self.connect(tokens["access_token"])

    async def stop(self) -> None:
        # Clients that stopped reading cannot complete a close handshake: don't wait on them.
        for ws in self.clients:
            ws.transport.abort()
        self._server.should_exit = True
        await asyncio.wait_for(self._task, 15)


@contextlib.asynccontextmanager
async def live_server(
    settings: Settings,
    ws: type[asyncio.Protocol] | str = SocketProtocol,
    http: type[asyncio.Protocol] | str | None = None,
) -> AsyncIterator[LiveServer]:
    """``ws`` and ``http``: uvicorn's WebSocket and HTTP protocols; the defaults are the
    ones ``baychat serve`` runs (``HttpEntry`` with ``SocketProtocol``; uvicorn's own HTTP
    protocol with any other ``ws``, so that every upgrade reaches that one)."""
    if http is None:
        http = HttpEntry if ws is SocketProtocol else "auto"
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=False,
        http=http,
        ws=ws,
        ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_timeout_s,
        server_header=False,
        proxy_headers=False,  # as `baychat serve`: server.proxies decides whom to believe
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    live = LiveServer(settings, port, app.state.runtime, server, task)
    try:
        yield live
    finally:
        await live.stop()


# -- protocol helpers -------------------------------------------------------------------


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    frame: dict[str, Any] = json.loads(raw)
    return frame


async def expect(
    ws: ClientConnection, frame_type: str, timeout: float = TIMEOUT, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The next frame, which must be of ``frame_type`` (frames of types in ``skip`` are
    passed over)."""
    while True:
        frame = await recv(ws, timeout)
        if frame["type"] in skip:
            continue
        assert frame["type"] == frame_type, f"expected {frame_type}, got {frame}"
        return frame


async def expect_messages(
    ws: ClientConnection, count: int, timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """The next ``count`` message frames, ignoring acks, presence and typing."""
    messages = []
    while len(messages) < count:
        frame = await recv(ws, timeout)
        if frame["type"] == "message":
            messages.append(frame)
    return messages


async def subscribe(ws: ClientConnection, channel: str, since: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "channel": channel, "id": f"sub-{channel}"}
    if since is not None:
        frame["since"] = since
    await send(ws, frame)
    return await expect(ws, "subscribed", skip=("presence", "message", "ack", "typing"))


async def publish(
    ws: ClientConnection, channel: str, body: str, client_msg_id: str | None = None
) -> dict[str, Any]:
    """Publish and wait for the ack (other frames are passed over)."""
    request_id = secrets.token_hex(4)
    frame: dict[str, Any] = {"type": "publish", "channel": channel, "body": body, "id": request_id}
    if client_msg_id is not None:
        frame["client_msg_id"] = client_msg_id
    await send(ws, frame)
    while True:
        reply = await recv(ws)
        if reply.get("id") == request_id:
            assert reply["type"] == "ack", reply
            return reply


async def assert_closed(ws: ClientConnection, code: CloseCode, timeout: float = TIMEOUT) -> None:
    """Read until the server closes the connection; it must close with ``code``."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    assert ws.close_code == int(code), f"closed with {ws.close_code}, expected {int(code)}"
