"""The cluster of docker-compose.yml as local processes: Caddy (the repository's Caddyfile,
``tls internal`` on localhost) in front of two gateway processes and a persistence worker,
on Redis and Postgres (fresh roles, migrated as the owner, served as the application role).
Clients speak only to Caddy, over HTTPS and ``wss://``, trusting nothing but Caddy's
internal CA."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.backends import free_port, fresh_postgres, shared_redis_url
from tests.deploy.caddy import Edge, running_edge
from tests.harness import TIMEOUT, expect, expect_messages, publish, send, subscribe
from tests.processes import Processes, Service, baychat_command


def _cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [*baychat_command(), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def websocket_connects(gateway: Service) -> list[dict[str, Any]]:
    """The gateway's own ``ws.connect`` log events (JSON lines)."""
    events = []
    for line in gateway.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"ws.connect"' in line:
            events.append(json.loads(line))
    return events


@dataclass
class Cluster:
    edge: Edge
    gateways: list[Service]
    demo: dict[str, Any]

    @property
    def site_origin(self) -> str:
        return self.edge.https_url

    async def login(self, email: str) -> str:
        async with self.edge.http() as http:
            response = await http.post(
                "/api/v1/auth/login",
                json={
                    "tenant": self.demo["tenant"],
                    "email": email,
                    "password": self.demo["password"],
                },
            )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    async def connect(self, **kwargs: Any) -> ClientConnection:
        return await websockets.connect(
            self.edge.wss_url,
            ssl=self.edge.ssl_context(),
            open_timeout=TIMEOUT,
            close_timeout=1,
            **kwargs,
        )

    async def browser_session(self, email: str) -> ClientConnection:
        """As a page of the site would: Origin header, then the ``auth`` frame."""
        ws = await self.connect(origin=self.site_origin)
        await send(ws, {"type": "auth", "token": await self.login(email)})
        await expect(ws, "ready")
        return ws

    async def app_session(self, email: str) -> ClientConnection:
        """As a native app or bot would: no Origin, a bearer token on the handshake."""
        token = await self.login(email)
        ws = await self.connect(additional_headers={"Authorization": f"Bearer {token}"})
        await expect(ws, "ready")
        return ws

    def gateway_of(self, count_before: dict[str, int]) -> Service:
        """The one gateway that accepted a WebSocket since ``count_before`` was taken."""
        grew = [g for g in self.gateways if len(websocket_connects(g)) > count_before[g.name]]
        assert len(grew) == 1, grew
        return grew[0]

    def connect_counts(self) -> dict[str, int]:
        return {g.name: len(websocket_connects(g)) for g in self.gateways}


async def until_dropped(ws: ClientConnection) -> None:
    """Read until the connection is gone (frames already in flight are passed over)."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)


def _cluster_env(data_dir: Path, app_url: str, broker_url: str, origin: str) -> dict[str, str]:
    """What docker-compose.yml gives a gateway and the worker, with local addresses."""
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    jwt = {"active": "k1", "keys": {"k1": base64.b64encode(secrets.token_bytes(32)).decode()}}
    return {
        "BAYCHAT_DATA_DIR": str(data_dir),
        "BAYCHAT_KEYSTORE_DIR": str(data_dir / "keys"),
        "BAYCHAT_DATABASE_URL": app_url,
        "BAYCHAT_BROKER_URL": broker_url,
        "BAYCHAT_MASTER_KEYS": f"1:{master}",
        "BAYCHAT_JWT_KEYS": json.dumps(jwt),
        "BAYCHAT_MIGRATE_ON_START": "0",
        "BAYCHAT_EMBEDDED_WORKER": "0",
        # X-Forwarded-* is believed from Caddy's address only.
        "BAYCHAT_TRUSTED_PROXIES": "127.0.0.1",
        "BAYCHAT_ALLOWED_ORIGINS": origin,
    }


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    # The shared Redis, under a namespace of this test's own.
    broker_url = f"{await shared_redis_url()}?namespace=edge-{secrets.token_hex(4)}"
    async with fresh_postgres() as db, Processes(tmp_path / "logs") as procs:
        https_port = free_port()
        env = _cluster_env(
            tmp_path / "data", db.app_url, broker_url, f"https://localhost:{https_port}"
        )
        full_env = {**os.environ, **env}
        # The compose `migrate` service: both URLs, once, before any gateway starts.
        _cli({**full_env, "BAYCHAT_DATABASE_OWNER_URL": db.owner_url}, "migrate")
        demo = _cli(full_env, "demo", "--slug", f"edge-{secrets.token_hex(3)}")
        procs.worker("worker", env)
        gateways = [procs.gateway("gateway-1", env), procs.gateway("gateway-2", env)]
        await asyncio.gather(*(g.wait_ready() for g in gateways))
        addresses = [f"127.0.0.1:{g.port}" for g in gateways]
        with running_edge(addresses, tmp_path / "caddy", https_port) as edge:
            yield Cluster(edge, gateways, demo)


async def test_clients_on_two_gateways_chat_over_wss_through_caddy(cluster: Cluster) -> None:
    alice_email, bob_email = cluster.demo["users"]
    before = cluster.connect_counts()
    alice = await cluster.browser_session(alice_email)
    alice_gateway = cluster.gateway_of(before)
    before = cluster.connect_counts()
    bob = await cluster.app_session(bob_email)
    bob_gateway = cluster.gateway_of(before)
    # least_conn: the second long-lived socket goes to the gateway holding none.
    assert alice_gateway is not bob_gateway
    try:
        await subscribe(alice, "general")
        await subscribe(bob, "general")
        # An ack means a worker stored it; the message crossed gateways through Redis.
        ack = await publish(alice, "general", "hello over wss")
        [seen] = await expect_messages(bob, 1)
        assert (seen["body"], seen["seq"]) == ("hello over wss", ack["seq"])
        reply = await publish(bob, "general", "and back")
        [back] = await expect_messages(alice, 1)
        assert (back["body"], back["seq"]) == ("and back", reply["seq"])
    finally:
        await asyncio.gather(alice.close(), bob.close())

    token = await cluster.login(alice_email)
    async with cluster.edge.http() as http:
        page = await http.get(
            "/api/v1/channels/general/messages", headers={"Authorization": f"Bearer {token}"}
        )
    assert page.status_code == 200, page.text
    stored = sorted(page.json()["messages"], key=lambda m: m["seq"])
    assert [m["body"] for m in stored] == ["hello over wss", "and back"]
    assert page.headers["strict-transport-security"].startswith("max-age=")
    assert page.headers["x-frame-options"] == "DENY"


async def test_when_a_gateway_dies_its_clients_reconnect_through_caddy_to_the_other(
    cluster: Cluster,
) -> None:
    alice_email, bob_email = cluster.demo["users"]
    before = cluster.connect_counts()
    alice = await cluster.app_session(alice_email)
    alice_gateway = cluster.gateway_of(before)
    before = cluster.connect_counts()
    bob = await cluster.app_session(bob_email)
    bob_gateway = cluster.gateway_of(before)
    assert alice_gateway is not bob_gateway
    await subscribe(alice, "general")
    await subscribe(bob, "general")
    acked = [await publish(alice, "general", f"before {i}") for i in range(3)]
    seen = await expect_messages(bob, 3)
    last_seen = seen[-1]["seq"]

    token = await cluster.login(bob_email)
    bob_gateway.kill()  # SIGKILL: no goodbye to anyone
    await until_dropped(bob)
    # Sent while Bob is away, through Alice's gateway, which lives on.
    missed = [await publish(alice, "general", f"missed {i}") for i in range(3)]

    # The same URL as before: Caddy's dial to the dead gateway fails, it marks it down and
    # tries the other (lb_try_duration) within this very handshake.
    before = cluster.connect_counts()
    bob = await cluster.connect(additional_headers={"Authorization": f"Bearer {token}"})
    await expect(bob, "ready")
    assert cluster.gateway_of(before) is alice_gateway
    # Later requests, with bodies too, no longer try the dead gateway.
    assert await cluster.login(bob_email)
    recovered = await subscribe(bob, "general", since=last_seen)
    assert recovered["recovered"] is True
    again = await expect_messages(bob, 3)
    assert [m["body"] for m in again] == [f"missed {i}" for i in range(3)]
    assert [m["seq"] for m in again] == [a["seq"] for a in missed]
    assert acked[-1]["seq"] == last_seen
    await asyncio.gather(alice.close(), bob.close())


async def test_a_foreign_origin_is_refused_through_caddy(cluster: Cluster) -> None:
    # Caddy passes Origin through untouched, so the gateway's allowlist still decides.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await cluster.connect(origin="https://evil.example")
    assert refused.value.response.status_code == 403
    assert refused.value.response.headers["X-Frame-Options"] == "DENY"
