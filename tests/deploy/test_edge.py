"""The cluster's topology as local processes: Caddy (the repository's Caddyfile, ``tls
internal`` on localhost) in front of BayChat gateway processes, and clients that only ever
speak to Caddy, over HTTPS and ``wss://``, trusting nothing but Caddy's internal CA."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.backends import PostgresDatabase, free_port, fresh_postgres
from tests.deploy.caddy import Edge, running_edge
from tests.harness import TIMEOUT, expect, expect_messages, publish, send, subscribe

CLI = [sys.executable, "-m", "server.cli"]


@dataclass
class Gateway:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def websocket_connects(self) -> list[dict[str, Any]]:
        """The gateway's own ``ws.connect`` log events (JSON lines)."""
        events = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"ws.connect"' in line:
                events.append(json.loads(line))
        return events


def _wait_healthy(gateway: Gateway, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"{gateway.name} exited:\n{gateway.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://{gateway.address}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{gateway.name} not ready:\n{gateway.log.read_text()[-3000:]}")


@contextmanager
def gateways(env: dict[str, str], count: int, logs: Path) -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    try:
        for index in range(1, count + 1):
            port = free_port()
            log = logs / f"gateway-{index}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            started.append(Gateway(f"gateway-{index}", port, process, log))
        for gateway in started:
            _wait_healthy(gateway)
        yield started
    finally:
        for gateway in started:
            gateway.process.send_signal(signal.SIGTERM)
        for gateway in started:
            try:
                gateway.process.wait(15)
            except subprocess.TimeoutExpired:
                gateway.process.kill()
                gateway.process.wait(5)


def _cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@dataclass
class Cluster:
    edge: Edge
    gateways: list[Gateway]
    demo: dict[str, Any]

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

    @property
    def site_origin(self) -> str:
        return self.edge.https_url

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


def _cluster_env(data_dir: Path, db: PostgresDatabase, site_origin: str) -> dict[str, str]:
    """What docker-compose.yml gives a gateway, with local addresses."""
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    jwt = {"active": "k1", "keys": {"k1": base64.b64encode(secrets.token_bytes(32)).decode()}}
    return {
        **os.environ,
        "BAYCHAT_DATA_DIR": str(data_dir),
        "BAYCHAT_KEYSTORE_DIR": str(data_dir / "keys"),
        "BAYCHAT_DATABASE_URL": db.app_url,
        "BAYCHAT_MASTER_KEYS": f"1:{master}",
        "BAYCHAT_JWT_KEYS": json.dumps(jwt),
        "BAYCHAT_MIGRATE_ON_START": "0",
        # X-Forwarded-* is believed from Caddy's address only.
        "BAYCHAT_TRUSTED_PROXIES": "127.0.0.1",
        "BAYCHAT_ALLOWED_ORIGINS": site_origin,
    }


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with fresh_postgres() as db:
        https_port = free_port()
        env = _cluster_env(tmp_path / "data", db, f"https://localhost:{https_port}")
        # The compose `migrate` service: both URLs, once, before any gateway starts.
        _cli({**env, "BAYCHAT_DATABASE_OWNER_URL": db.owner_url}, "migrate")
        demo = _cli(env, "demo", "--slug", f"edge-{secrets.token_hex(3)}")
        with (
            gateways(env, 1, tmp_path) as started,
            running_edge([g.address for g in started], tmp_path / "caddy", https_port) as edge,
        ):
            yield Cluster(edge, started, demo)


async def test_two_clients_chat_over_wss_through_caddy(cluster: Cluster) -> None:
    alice_email, bob_email = cluster.demo["users"]
    alice = await cluster.browser_session(alice_email)
    bob = await cluster.app_session(bob_email)
    try:
        await subscribe(alice, "general")
        await subscribe(bob, "general")
        ack = await publish(alice, "general", "hello over wss")
        [seen] = await expect_messages(bob, 1)
        assert seen["body"] == "hello over wss"
        assert seen["seq"] == ack["seq"]
        reply = await publish(bob, "general", "and back")
        [back] = await expect_messages(alice, 1, timeout=TIMEOUT)
        assert (back["body"], back["seq"]) == ("and back", reply["seq"])
    finally:
        await asyncio.gather(alice.close(), bob.close())
    # Both sockets really went through Caddy to a gateway.
    connects = [e for g in cluster.gateways for e in g.websocket_connects()]
    assert sorted(e["browser"] for e in connects) == [False, True]


async def test_api_answers_through_caddy_with_the_edge_headers(cluster: Cluster) -> None:
    token = await cluster.login(cluster.demo["users"][0])
    async with cluster.edge.http() as http:
        response = await http.get("/api/v1/channels", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert "general" in response.text
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.extensions["http_version"] in {b"HTTP/1.1", b"HTTP/2"}


async def test_a_foreign_origin_is_refused_through_caddy(cluster: Cluster) -> None:
    # Caddy passes Origin through untouched, so the gateway's allowlist still decides.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await cluster.connect(origin="https://evil.example")
    assert refused.value.response.status_code == 403
    assert refused.value.response.headers["X-Frame-Options"] == "DENY"
