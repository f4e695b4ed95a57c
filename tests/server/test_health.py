"""Liveness and readiness, on every store."""

from __future__ import annotations

from tests.backends import on_every_store
from tests.harness import LiveServer

pytestmark = on_every_store


async def test_ready_when_store_and_broker_answer(server: LiveServer) -> None:
    async with server.http() as http:
        alive = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert alive.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["store"] is True
