"""A message acknowledged before the process is killed with SIGKILL is there after restart.

Runs the real `baychat` command line as separate processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.backends import free_port
from tests.harness import PASSWORD, expect, recv, send

BAYCHAT = [sys.executable, "-m", "server.cli"]


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> dict[str, object]:
    done = subprocess.run(
        [*BAYCHAT, *args], input=stdin, env=env, capture_output=True, text=True, check=True
    )
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BAYCHAT_DATA_DIR": str(tmp_path / "data"),
        # 200 publishes in one burst from one connection: above the default rate limits
        "BAYCHAT_RATE_WS_FRAMES": "10000/minute",
        "BAYCHAT_RATE_PUBLISH_CONNECTION": "10000/minute",
        "BAYCHAT_RATE_PUBLISH_USER": "10000/minute",
    }


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*BAYCHAT, "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self) -> None:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                try:
                    if (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[Server]:
    srv = Server(env)
    yield srv
    srv.stop()


async def _token(port: int) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"http://127.0.0.1:{port}/api/v1/auth/login",
            json={"tenant": "acme", "email": "ann@example.com", "password": PASSWORD},
        )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


async def test_acked_messages_survive_sigkill(env: dict[str, str], server: Server) -> None:
    tenant = _cli(env, "tenant", "create", "acme")
    assert tenant["slug"] == "acme"
    user = _cli(env, "user", "create", "acme", "ann@example.com", "--role", "owner",
                "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert user["role"] == "owner"
    server.start()
    await server.ready()
    token = await _token(server.port)
    async with httpx.AsyncClient() as http:
        created = await http.post(
            f"http://127.0.0.1:{server.port}/api/v1/channels",
            json={"name": "ops"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201

    acked: dict[int, str] = {}
    # A client without an Origin authenticates on the handshake (docs/PROTOCOL.md).
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws", additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await expect(ws, "ready")
        for i in range(200):
            await send(ws, {"type": "publish", "channel": "ops", "body": f"m{i}", "id": i})
        # Collect acks for a while, then kill mid-stream: some are acked, some in flight.
        while len(acked) < 50:
            frame = await recv(ws)
            if frame["type"] == "ack":
                acked[frame["seq"]] = f"m{frame['id']}"
        server.kill()
        try:
            while True:
                frame = await recv(ws, timeout=1)
                if frame["type"] == "ack":
                    acked[frame["seq"]] = f"m{frame['id']}"
        except (websockets.ConnectionClosed, TimeoutError):
            pass

    server.start()
    await server.ready()
    token = await _token(server.port)
    stored: dict[int, str] = {}
    async with httpx.AsyncClient() as http:
        before: int | None = None
        while True:
            params = {"limit": "200", **({"before": str(before)} if before else {})}
            page = await http.get(
                f"http://127.0.0.1:{server.port}/api/v1/channels/ops/messages",
                params=params,
                headers={"Authorization": f"Bearer {token}"},
            )
            messages = page.json()["messages"]
            if not messages:
                break
            stored.update({m["seq"]: m["body"] for m in messages})
            before = messages[-1]["seq"]

    for seq, body in acked.items():
        assert stored.get(seq) == body
    # Stored seqs are gap-free from 1, and publishing continues right after them.
    assert sorted(stored) == list(range(1, len(stored) + 1))
    # A client without an Origin authenticates on the handshake (docs/PROTOCOL.md).
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws", additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await expect(ws, "ready")
        await send(ws, {"type": "publish", "channel": "ops", "body": "after", "id": "x"})
        ack = await expect(ws, "ack")
        assert ack["seq"] == len(stored) + 1
