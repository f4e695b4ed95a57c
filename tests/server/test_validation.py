"""Validation at the boundary: every body, query parameter, path parameter and frame is
checked by its schema once; a bad one is a 4xx (or an error frame) naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection

from tests.harness import LiveServer, expect, send, subscribe

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def auth(module_server: LiveServer) -> dict[str, str]:
    tenant = await module_server.tenant()
    user = await module_server.user(tenant)
    await module_server.channel(tenant, "general", user)
    tokens = await module_server.login(tenant, user)
    return {"Authorization": f"Bearer {tokens['access_token']}"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ws(module_server: LiveServer, auth: dict[str, str]) -> AsyncIterator[ClientConnection]:
    token = auth["Authorization"].removeprefix("Bearer ")
    yield await module_server.connect(token)


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    if field is not None:
        assert error["field"] == field
    assert error["correlation_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return error


BAD_CHANNEL_BODIES: list[tuple[Any, str]] = [
    ({"name": "ok", "extra": 1}, "extra"),  # unknown field
    ({"name": 5}, "name"),  # wrong type
    ({"name": "a" * 65}, "name"),  # too long
    ({"name": "Not Allowed"}, "name"),  # outside the alphabet
    ({"name": "general\n"}, "name"),  # a trailing newline ($ alone would let it through)
    ({"name": "gen\x00eral"}, "name"),
    ({}, "name"),  # missing
    ({"name": "ok", "private": "yes"}, "private"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CHANNEL_BODIES)
async def test_bad_json_bodies_are_422_naming_the_field(
    module_server: LiveServer, auth: dict[str, str], body: Any, field: str
) -> None:
    async with module_server.http() as http:
        answer = await http.post("/api/v1/channels", json=body, headers=auth)
    assert_error(answer, 422, "invalid_field", field)


async def test_bodies_that_are_not_json_objects(
    module_server: LiveServer, auth: dict[str, str]
) -> None:
    json_type = {**auth, "content-type": "application/json"}
    async with module_server.http() as http:
        garbage = await http.post("/api/v1/channels", content=b"{nope", headers=json_type)
        empty = await http.post("/api/v1/channels", content=b"", headers=json_type)
        array = await http.post("/api/v1/channels", json=[1, 2], headers=auth)
        form = await http.post("/api/v1/channels", data={"name": "x"}, headers=auth)
    assert_error(garbage, 400, "bad_frame")
    assert_error(empty, 400, "bad_frame")
    assert_error(array, 422, "invalid_field")
    assert_error(form, 415, "unsupported_media_type")


async def test_deeply_nested_bodies_are_4xx_not_500(
    module_server: LiveServer, auth: dict[str, str]
) -> None:
    # The fuzzer found deep nesting exhausting the stack in frame decoding; bodies too.
    headers = {**auth, "content-type": "application/json"}
    async with module_server.http() as http:
        for nested in (
            b'{"name": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
            b'{"x":' * 10_000 + b"1" + b"}" * 10_000,
            b"[" * 30_000,
        ):
            answer = await http.post("/api/v1/channels", content=nested, headers=headers)
            assert answer.status_code in (400, 422), answer.text


async def test_login_fields_are_bounded(module_server: LiveServer) -> None:
    async with module_server.http() as http:
        long_password = await http.post(
            "/api/v1/auth/login",
            json={"tenant": "acme", "email": "a@example.com", "password": "x" * 1025},
        )
        bad_email = await http.post(
            "/api/v1/auth/login", json={"tenant": "acme", "email": "nope", "password": "x"}
        )
        bad_tenant = await http.post(
            "/api/v1/auth/login", json={"tenant": "../x", "email": "a@b.c", "password": "x"}
        )
    async with module_server.http() as http:
        # characters one regex dialect calls whitespace and the other did not (schemathesis)
        for email in ("a\x1e@b.c", "a\u0085@b.c", "a\ufeff@b.c", "a\u00a0@b.c", "a@b.c\n"):
            odd = await http.post(
                "/api/v1/auth/login", json={"tenant": "acme", "email": email, "password": "x"}
            )
            assert_error(odd, 422, "invalid_field", "email")
    assert_error(long_password, 422, "invalid_field", "password")
    assert_error(bad_email, 422, "invalid_field", "email")
    assert_error(bad_tenant, 422, "invalid_field", "tenant")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("limit=1&limit=2", "limit"),
        ("before=-1", "before"),
        ("before=9007199254740993", "before"),
        ("unknown=1", "unknown"),
    ],
)
async def test_bad_query_parameters_are_422_naming_the_field(
    module_server: LiveServer, auth: dict[str, str], query: str, field: str
) -> None:
    async with module_server.http() as http:
        answer = await http.get(f"/api/v1/channels/general/messages?{query}", headers=auth)
    assert_error(answer, 422, "invalid_field", field)


async def test_query_parameters_on_an_operation_that_takes_none(
    module_server: LiveServer, auth: dict[str, str]
) -> None:
    async with module_server.http() as http:
        answer = await http.get("/api/v1/channels?debug=1", headers=auth)
    assert_error(answer, 422, "invalid_field", "debug")


async def test_bad_path_parameters_are_422(module_server: LiveServer, auth: dict[str, str]) -> None:
    async with module_server.http() as http:
        answer = await http.get(f"/api/v1/channels/{'x' * 65}/messages", headers=auth)
        upper = await http.get("/api/v1/channels/General/messages", headers=auth)
    assert_error(answer, 422, "invalid_field", "name")
    assert_error(upper, 422, "invalid_field", "name")


async def test_valid_requests_still_pass(module_server: LiveServer, auth: dict[str, str]) -> None:
    async with module_server.http() as http:
        created = await http.post("/api/v1/channels", json={"name": "a.b-c_1"}, headers=auth)
        page = await http.get("/api/v1/channels/general/messages?limit=5&before=3", headers=auth)
    assert created.status_code == 201
    assert page.status_code == 200


# -- WebSocket frames -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "field"),
    [
        ({"type": "subscribe", "channel": "general", "x": 1, "id": 1}, "invalid_field", "x"),
        ({"type": "subscribe", "channel": 7, "id": 1}, "invalid_field", "channel"),
        ({"type": "subscribe", "channel": "general\n", "id": 1}, "invalid_field", "channel"),
        ({"type": "history", "channel": "general", "limit": 500}, "invalid_field", "limit"),
        ({"type": "publish", "channel": "general"}, "invalid_field", "body"),
        (
            {"type": "publish", "channel": "general", "body": "x", "id": "i" * 65},
            "invalid_field",
            "id",
        ),
        ({"type": "teleport"}, "unknown_type", None),
        ({"kind": "ping"}, "bad_frame", None),
    ],
)
async def test_bad_frames_get_an_error_frame_naming_the_field(
    ws: ClientConnection, frame: dict[str, Any], code: str, field: str | None
) -> None:
    await send(ws, frame)
    error = await expect(ws, "error")
    assert error["code"] == code
    assert error.get("field") == field
    # and the connection is still usable
    await subscribe(ws, "general")
    await send(ws, {"type": "unsubscribe", "channel": "general"})
    await expect(ws, "unsubscribed", skip=("presence",))


async def test_non_object_and_binary_frames_are_bad_frames(ws: ClientConnection) -> None:
    deep = '{"type": "ping", "x": ' + "[" * 20_000 + "]" * 20_000 + "}"
    for raw in ["[]", "42", '"ping"', "{", "null", deep, "[" * 30_000]:
        await ws.send(raw)
        assert (await expect(ws, "error"))["code"] == "bad_frame"
    await ws.send(b'{"type": "ping"}')
    assert (await expect(ws, "error"))["code"] == "bad_frame"
