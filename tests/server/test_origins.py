"""The WebSocket handshake: Origin on an exact allowlist, checked before accepting; clients
without an Origin need a bearer header; cookies are never credentials (HTTP or WebSocket)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from server.origins import OriginPolicy, normalize
from tests.harness import ORIGIN, LiveServer, expect, send

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize(
    ("origin", "canonical"),
    [
        ("https://app.example.com", "https://app.example.com"),
        ("HTTPS://App.Example.COM:443", "https://app.example.com"),
        ("http://localhost:8000", "http://localhost:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("https://app.example.com/", "https://app.example.com"),
        ("null", None),
        ("file://", None),
        ("https://user:pw@app.example.com", None),
        ("https://app.example.com/path", None),
        ("https://app.example.com:99999", None),
        ("javascript:alert(1)", None),
        ("", None),
    ],
)
async def test_origins_are_compared_in_canonical_form(origin: str, canonical: str | None) -> None:
    assert normalize(origin) == canonical


async def test_the_policy_matches_scheme_host_and_port_exactly() -> None:
    policy = OriginPolicy(["https://app.example.com"])
    assert policy.allows("https://app.example.com")
    assert policy.allows("https://app.example.com:443")
    for other in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "https://evil.example/app.example.com",
        "https://sub.app.example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "null",
    ]:
        assert not policy.allows(other), other
    with pytest.raises(ValueError, match="not an origin"):
        OriginPolicy(["app.example.com"])


async def _refused(server: LiveServer, status: int, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(websockets.InvalidStatus) as caught:
        await server.connect(**kwargs)
    response = caught.value.response
    assert response.status_code == status
    assert response.headers["X-Frame-Options"] == "DENY"  # a full HTTP error response
    body: dict[str, Any] = json.loads(response.body)
    return body


async def _token(server: LiveServer) -> str:
    tenant = await server.tenant()
    user = await server.user(tenant)
    tokens = await server.login(tenant, user)
    token: str = tokens["access_token"]
    return token


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://app.baychat.test.evil.example",
        "http://app.baychat.test",
        "https://app.baychat.test:8443",
        "null",
    ],
)
async def test_foreign_origins_are_refused_before_accepting(
    module_server: LiveServer, origin: str
) -> None:
    token = await _token(module_server)
    # refused even with a valid bearer token: the page is not ours
    body = await _refused(
        module_server, 403, origin=origin, additional_headers={"Authorization": f"Bearer {token}"}
    )
    assert body["error"]["code"] == "forbidden"


async def test_an_allowed_origin_may_authenticate_with_an_auth_frame(
    module_server: LiveServer,
) -> None:
    token = await _token(module_server)
    ws = await module_server.connect(origin=ORIGIN)
    await send(ws, {"type": "auth", "token": token, "id": "a"})
    assert (await expect(ws, "ready"))["id"] == "a"


async def test_clients_without_origin_need_a_bearer_header(module_server: LiveServer) -> None:
    body = await _refused(module_server, 401, origin=None)
    assert body["error"]["code"] == "unauthorized"
    token = await _token(module_server)
    ws: ClientConnection = await module_server.connect(
        origin=None, additional_headers={"Authorization": f"Bearer {token}"}
    )
    assert (await expect(ws, "ready"))["user"]


async def test_cookies_are_never_credentials(module_server: LiveServer) -> None:
    token = await _token(module_server)
    cookie = f"access_token={token}; token={token}; session={token}"
    await _refused(module_server, 401, origin=None, additional_headers={"Cookie": cookie})
    async with module_server.http() as http:
        answer = await http.get("/api/v1/channels", headers={"Cookie": cookie})
        with_header = await http.get(
            "/api/v1/channels", headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 401
    assert with_header.status_code == 200
    assert "set-cookie" not in answer.headers
    assert "set-cookie" not in with_header.headers
