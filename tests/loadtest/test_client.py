"""Message bodies carry their scheduled send time and have the requested size; a client
connects with its token, and a refusal is reported with its reason."""

from __future__ import annotations

import json
import socket

import pytest

from loadtest.client import (
    ConnectError,
    Tracker,
    make_body,
    open_client,
    publish_prefix,
    scheduled_at,
)
from tests.harness import LiveServer


def test_body_round_trips_the_schedule_and_has_the_size() -> None:
    body = make_body(123_456_789_012, 200)
    assert len(body) == 200
    assert scheduled_at(body) == 123_456_789_012


def test_publish_frame_is_valid_json() -> None:
    frame = publish_prefix("lt-fanout") + make_body(5, 20).encode() + b'","id":7}'
    decoded = json.loads(frame)
    assert decoded["type"] == "publish"
    assert decoded["channel"] == "lt-fanout"
    assert decoded["id"] == 7


async def test_a_client_connects_with_its_token_and_is_ready(server: LiveServer) -> None:
    tenant = await server.tenant()
    token = await server.access_token(await server.user(tenant))
    tracker = Tracker()
    client = await open_client(server.ws_url, token, tracker, timeout=5)
    try:
        assert client.transport is not None
        assert not client.transport.is_disconnected
        reply = await client.request({"type": "ping", "id": "p1"}, timeout=5)
        assert reply["type"] == "pong"
    except ConnectError as exc:
        raise AssertionError(exc.reason) from None
    finally:
        client.close()
    assert tracker.errors == {}


async def test_a_refused_handshake_is_reported_with_its_status(server: LiveServer) -> None:
    tracker = Tracker()
    with pytest.raises(ConnectError) as refused:
        await open_client(server.ws_url, "not-a-token", tracker, timeout=5)
    assert refused.value.reason == "closed 4001"


async def test_a_closed_port_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError) as failed:
        await open_client(f"ws://127.0.0.1:{port}/ws", "x", Tracker(), timeout=5)
    assert failed.value.reason == "ConnectionRefusedError"
