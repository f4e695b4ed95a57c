"""Live connections expire with their access token: an `expiring` notice first, then the
"expired" close code, unless a `refresh` frame with a fresh token extends them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol.codes import CloseCode
from tests.harness import LiveServer, assert_closed, expect, live_server, make_settings, send

TTL_S = 2


@pytest.fixture
async def short_lived(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path, access_ttl_s=TTL_S)) as live:
        yield live


async def test_a_connection_is_warned_then_closed_at_expiry(short_lived: LiveServer) -> None:
    server = short_lived
    tenant = await server.tenant()
    alice = await server.user(tenant)
    tokens = await server.login(tenant, alice)
    ws = await server.connect()
    await send(ws, {"type": "auth", "token": tokens["access_token"]})
    ready = await expect(ws, "ready")
    warning = await expect(ws, "expiring")
    assert warning["expires_at"] == ready["expires_at"]
    await assert_closed(ws, CloseCode.TOKEN_EXPIRED)
    assert time.time() >= ready["expires_at"] - 0.1  # not closed early


async def test_a_refresh_frame_extends_the_connection(short_lived: LiveServer) -> None:
    server = short_lived
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    tokens = await server.login(tenant, alice)
    ws = await server.connect()
    await send(ws, {"type": "auth", "token": tokens["access_token"]})
    ready = await expect(ws, "ready")
    await expect(ws, "expiring")
    # Tokens carry whole seconds: wait for the next one so the new token expires later.
    await asyncio.sleep(max(0.0, ready["expires_at"] - TTL_S + 1 - time.time()) + 0.05)
    async with server.http() as http:
        fresh = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
    assert fresh.status_code == 200

    someone_else = await server.login(tenant, bob)
    await send(ws, {"type": "refresh", "token": someone_else["access_token"], "id": "x"})
    assert (await expect(ws, "error"))["code"] == "forbidden"

    await send(ws, {"type": "refresh", "token": fresh.json()["access_token"], "id": "r"})
    refreshed = await expect(ws, "refreshed", skip=("expiring",))
    assert refreshed["id"] == "r"
    assert refreshed["expires_at"] > ready["expires_at"]
    # Past the first token's expiry, the connection still answers.
    await asyncio.sleep(max(0.0, ready["expires_at"] - time.time()) + 0.2)
    await send(ws, {"type": "ping", "id": "still"})
    assert (await expect(ws, "pong", skip=("expiring",)))["id"] == "still"
    await assert_closed(ws, CloseCode.TOKEN_EXPIRED)
    assert time.time() >= refreshed["expires_at"] - 0.1
