"""Bad input gets its documented error frame or close code, changes nothing, and leaves
every other connection working."""

from __future__ import annotations

import json
import time

import jwt
import pytest
import websockets

from protocol.codes import CloseCode
from tests.harness import (
    LiveServer,
    assert_closed,
    expect,
    expect_messages,
    publish,
    recv,
    send,
    subscribe,
)


@pytest.fixture
async def chat(server: LiveServer) -> tuple[LiveServer, object, object, object]:
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "general", alice)
    return server, tenant, alice, bob


async def _still_chatting(server: LiveServer, tenant: object, alice: object, bob: object) -> None:
    wa = await server.session(tenant, alice)  # type: ignore[arg-type]
    wb = await server.session(tenant, bob)  # type: ignore[arg-type]
    await subscribe(wb, "general")
    ack = await publish(wa, "general", "still here")
    [message] = await expect_messages(wb, 1)
    assert message["message_id"] == ack["message_id"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_frame"),
        ("[1, 2, 3]", "bad_frame"),
        ('"just a string"', "bad_frame"),
        ('{"no_type": 1}', "bad_frame"),
        ('{"type": "launch_missiles"}', "unknown_type"),
        ('{"type": "publish", "channel": "general", "body": 5}', "invalid_field"),
        ('{"type": "publish", "channel": "general"}', "invalid_field"),
        ('{"type": "subscribe", "channel": "general", "since": "x"}', "invalid_field"),
        ('{"type": "subscribe", "channel": "general", "since": -1}', "invalid_field"),
        ('{"type": "subscribe", "channel": "General Chat"}', "invalid_field"),
        ('{"type": "ping", "extra": true}', "invalid_field"),
        ('{"type": "history", "channel": "general", "limit": 100000}', "invalid_field"),
        (
            '{"type": "publish", "channel": "general", "body": "b", "client_msg_id": "a\\u0000"}',
            "invalid_field",
        ),
    ],
)
async def test_malformed_frames_get_an_error_frame_and_the_connection_stays(
    chat: tuple[LiveServer, object, object, object], raw: str, code: str
) -> None:
    server, tenant, alice, bob = chat
    ws = await server.session(tenant, alice)  # type: ignore[arg-type]
    await ws.send(raw)
    error = await expect(ws, "error")
    assert error["code"] == code
    assert "Traceback" not in error["message"]
    await send(ws, {"type": "ping", "id": "alive"})
    assert await recv(ws) == {"type": "pong", "id": "alive"}
    await _still_chatting(server, tenant, alice, bob)


async def test_invalid_field_error_names_the_field(
    chat: tuple[LiveServer, object, object, object],
) -> None:
    server, tenant, alice, _ = chat
    ws = await server.session(tenant, alice)  # type: ignore[arg-type]
    await send(ws, {"type": "subscribe", "channel": "general", "since": "yesterday", "id": 3})
    error = await expect(ws, "error")
    assert error["id"] == 3
    assert "since" in error["message"]


async def test_body_over_the_limit_is_refused_and_not_stored(
    chat: tuple[LiveServer, object, object, object],
) -> None:
    server, tenant, alice, bob = chat
    ws = await server.session(tenant, alice)  # type: ignore[arg-type]
    too_big = "x" * (server.settings.max_body_bytes + 1)
    await send(ws, {"type": "publish", "channel": "general", "body": too_big, "id": 1})
    error = await expect(ws, "error")
    assert (error["code"], error["id"]) == ("too_large", 1)
    await send(ws, {"type": "history", "channel": "general", "id": 2})
    assert (await expect(ws, "history"))["messages"] == []
    await _still_chatting(server, tenant, alice, bob)


async def test_frame_over_the_transport_limit_closes_with_1009(
    chat: tuple[LiveServer, object, object, object],
) -> None:
    server, tenant, alice, bob = chat
    ws = await server.session(tenant, alice)  # type: ignore[arg-type]
    await ws.send("x" * (server.settings.max_frame_bytes + 1))
    with pytest.raises(websockets.ConnectionClosed):
        await recv(ws)
    assert ws.close_code == 1009
    await _still_chatting(server, tenant, alice, bob)


async def test_frame_before_auth_closes_unauthorized(
    chat: tuple[LiveServer, object, object, object],
) -> None:
    server, tenant, alice, bob = chat
    ws = await server.connect()
    await send(ws, {"type": "subscribe", "channel": "general"})
    await assert_closed(ws, CloseCode.UNAUTHORIZED)
    await _still_chatting(server, tenant, alice, bob)


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."],
)
async def test_garbage_tokens_close_unauthorized(
    chat: tuple[LiveServer, object, object, object], token: str
) -> None:
    server, tenant, alice, bob = chat
    ws = await server.connect()
    await send(ws, {"type": "auth", "token": token})
    await assert_closed(ws, CloseCode.UNAUTHORIZED)
    await _still_chatting(server, tenant, alice, bob)


async def test_expired_token_closes_token_expired(
    chat: tuple[LiveServer, object, object, object],
) -> None:
    server, tenant, alice, bob = chat
    tokens = await server.login(tenant, alice)  # type: ignore[arg-type]
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    header = jwt.get_unverified_header(tokens["access_token"])
    keys = server.runtime.auth.access.keys
    claims["iat"] = int(time.time()) - 3600
    claims["exp"] = int(time.time()) - 60
    expired = jwt.encode(claims, keys.keys[header["kid"]], algorithm="HS256", headers=header)
    ws = await server.connect()
    await send(ws, {"type": "auth", "token": expired})
    await assert_closed(ws, CloseCode.TOKEN_EXPIRED)
    await _still_chatting(server, tenant, alice, bob)


async def test_bearer_header_with_bad_token_closes_unauthorized(server: LiveServer) -> None:
    ws = await server.connect(additional_headers={"Authorization": "Bearer nope"})
    await assert_closed(ws, CloseCode.UNAUTHORIZED)


async def test_no_auth_frame_in_time_closes_auth_timeout(tmp_path: object) -> None:
    from pathlib import Path

    from tests.harness import live_server, make_settings

    assert isinstance(tmp_path, Path)
    async with live_server(make_settings(tmp_path, auth_timeout_s=0.3)) as server:
        ws = await server.connect()
        await assert_closed(ws, CloseCode.AUTH_TIMEOUT)


async def test_binary_frames_are_refused(chat: tuple[LiveServer, object, object, object]) -> None:
    server, tenant, alice, _ = chat
    ws = await server.session(tenant, alice)  # type: ignore[arg-type]
    await ws.send(json.dumps({"type": "ping"}).encode())
    assert (await expect(ws, "error"))["code"] == "bad_frame"


async def test_http_bodies_are_validated(server: LiveServer) -> None:
    async with server.http() as http:
        bad_json = await http.post(
            "/api/v1/auth/login", content=b"{", headers={"content-type": "application/json"}
        )
        unknown = await http.post(
            "/api/v1/auth/login",
            json={"tenant": "a", "email": "a@b.c", "password": "p", "admin": True},
        )
        wrong_type = await http.post(
            "/api/v1/auth/login", json={"tenant": "a", "email": "a@b.c", "password": 1}
        )
        huge = await http.post("/api/v1/auth/login", content=b"x" * 100_000)
        nul_email = await http.post(
            "/api/v1/auth/login", json={"tenant": "a", "email": "a\x00@b.c", "password": "p"}
        )
        nul_refresh = await http.post(
            "/api/v1/auth/refresh",
            json={"refresh_token": "rt1.\x00.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},
        )
    assert bad_json.status_code == 400
    assert unknown.status_code == 422
    assert wrong_type.status_code == 422
    assert wrong_type.json()["error"]["field"] == "password"
    assert huge.status_code == 413
    assert nul_email.status_code == nul_refresh.status_code == 422
