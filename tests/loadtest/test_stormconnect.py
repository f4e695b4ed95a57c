"""The storm connect: ready after the upgrade, and every refusal reported with its reason,
as ``open_client`` reports them."""

from __future__ import annotations

import socket

import pytest

from loadtest.client import ConnectError
from loadtest.stormconnect import StormTarget, storm_connect
from tests.harness import LiveServer


async def test_a_storm_connect_sees_ready(server: LiveServer) -> None:
    tenant = await server.tenant()
    token = await server.access_token(await server.user(tenant))
    target = StormTarget(server.ws_url)
    for _ in range(3):
        await storm_connect(target, token, timeout=5)


async def test_a_bad_token_is_reported_with_the_close_code(server: LiveServer) -> None:
    with pytest.raises(ConnectError) as refused:
        await storm_connect(StormTarget(server.ws_url), "not-a-token", timeout=5)
    assert refused.value.reason == "closed 4001"


async def test_a_refused_upgrade_is_reported_with_its_status(server: LiveServer) -> None:
    # No Origin and an empty bearer: refused before the upgrade, with 401.
    with pytest.raises(ConnectError) as refused:
        await storm_connect(StormTarget(server.ws_url), "", timeout=5)
    assert refused.value.reason == "handshake refused (401)"


async def test_a_closed_port_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError) as failed:
        await storm_connect(StormTarget(f"ws://127.0.0.1:{port}/ws"), "x", timeout=5)
    assert failed.value.reason == "ConnectionRefusedError"


def test_only_plain_urls() -> None:
    with pytest.raises(ValueError, match="ws://"):
        StormTarget("wss://127.0.0.1/ws")
