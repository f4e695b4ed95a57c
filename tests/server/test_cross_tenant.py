"""Cross-tenant probe: for every endpoint and frame that takes an id or a name, tenant B's
user tries tenant A's; every answer must be indistinguishable from "does not exist".

``test_every_identifying_input_is_probed`` keeps this honest: an operation or frame that
takes an id or a name and has no probe here fails the suite until one is added.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection

from protocol import frames
from server.api.routes import OPERATIONS
from storage.models import Tenant, User
from tests.harness import PASSWORD, LiveServer, expect, send

pytestmark = pytest.mark.asyncio(loop_scope="module")
IDENTIFYING = re.compile(r"(^|_)(id|name|email|tenant|token|channel)s?($|_)")

# (method, path) of every probed operation; client frame types probed below.
PROBED_OPERATIONS = {
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/channels"),
    ("POST", "/api/v1/channels/{name}/members"),
    ("GET", "/api/v1/channels/{name}/messages"),
    ("POST", "/api/v1/channels/{name}/messages"),
    ("POST", "/api/v1/agents"),
    ("GET", "/api/v1/agents/{agent_id}/tokens"),
    ("POST", "/api/v1/agents/{agent_id}/tokens"),
    ("DELETE", "/api/v1/agents/{agent_id}/tokens/{token_id}"),
    ("POST", "/api/v1/agents/{agent_id}/kill"),
    ("POST", "/api/v1/agents/{agent_id}/enable"),
    ("PUT", "/api/v1/users/{user_id}/role"),
    ("POST", "/api/v1/users/{user_id}/disable"),
    ("POST", "/api/v1/users/{user_id}/enable"),
    ("DELETE", "/api/v1/sessions/{session_id}"),
}
PROBED_FRAMES = {"subscribe", "unsubscribe", "publish", "history", "typing", "auth", "refresh"}


def _identifying(schema: type[Any] | None, ignore: tuple[str, ...] = ()) -> bool:
    return schema is not None and any(
        IDENTIFYING.search(name) for name in schema.__struct_fields__ if name not in ignore
    )


async def test_every_identifying_input_is_probed() -> None:
    takes_ids = {
        (op.method, op.path)
        for op in OPERATIONS
        if op.params or _identifying(op.body) or _identifying(op.query)
    }
    assert takes_ids <= PROBED_OPERATIONS, (
        f"add a cross-tenant probe for {takes_ids - PROBED_OPERATIONS}"
    )
    frame_types = {
        frame.__struct_config__.tag
        for frame in frames.ClientFrame.__args__  # type: ignore[attr-defined]
        if _identifying(frame, ignore=("id",))  # `id` is the request id, echoed back
    }
    assert frame_types <= PROBED_FRAMES, (
        f"add a cross-tenant probe for {frame_types - PROBED_FRAMES}"
    )


@dataclass
class World:
    a: Tenant
    alice: User
    b: Tenant
    bob: User
    bob_auth: dict[str, str]
    bob_token: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(module_server: LiveServer) -> AsyncIterator[World]:
    server = module_server
    a, b = await server.tenant(), await server.tenant()
    alice, bob = await server.user(a, role="admin"), await server.user(b, role="admin")
    public = await server.channel(a, "a-public", alice)
    await server.channel(a, "a-private", alice, private=True)
    await server.channel(a, "a-taken", alice)
    await server.add_member(a, public, alice)
    ws = await server.session(a, alice)
    await send(ws, {"type": "publish", "channel": "a-public", "body": "tenant A secret", "id": 1})
    await expect(ws, "ack")
    await server.channel(b, "b-own", bob)
    tokens = await server.login(b, bob)
    yield World(
        a,
        alice,
        b,
        bob,
        {"Authorization": f"Bearer {tokens['access_token']}"},
        tokens["access_token"],
    )


def same(theirs: httpx.Response, missing: httpx.Response) -> None:
    """Indistinguishable: same status, same error code and message (ids differ per request)."""
    assert theirs.status_code == missing.status_code
    body_a, body_b = theirs.json(), missing.json()
    for body in (body_a, body_b):
        body.get("error", {}).pop("correlation_id", None)
    assert body_a == body_b
    assert "tenant A secret" not in theirs.text


async def test_channel_history_by_name(module_server: LiveServer, world: World) -> None:
    async with module_server.http() as http:
        for name in ("a-public", "a-private"):
            theirs = await http.get(f"/api/v1/channels/{name}/messages", headers=world.bob_auth)
            missing = await http.get("/api/v1/channels/zz-none/messages", headers=world.bob_auth)
            same(theirs, missing)
            assert theirs.status_code == 404


async def test_adding_members_by_channel_name_and_by_email(
    module_server: LiveServer, world: World
) -> None:
    async with module_server.http() as http:
        theirs = await http.post(
            "/api/v1/channels/a-public/members",
            json={"email": world.bob.email},
            headers=world.bob_auth,
        )
        missing = await http.post(
            "/api/v1/channels/zz-none/members",
            json={"email": world.bob.email},
            headers=world.bob_auth,
        )
        same(theirs, missing)
        their_user = await http.post(
            "/api/v1/channels/b-own/members",
            json={"email": world.alice.email},
            headers=world.bob_auth,
        )
        no_user = await http.post(
            "/api/v1/channels/b-own/members",
            json={"email": "nobody-anywhere@example.com"},
            headers=world.bob_auth,
        )
        same(their_user, no_user)
        assert their_user.status_code == 404


async def test_creating_a_channel_with_another_tenants_name(
    module_server: LiveServer, world: World
) -> None:
    async with module_server.http() as http:
        theirs = await http.post(
            "/api/v1/channels", json={"name": "a-taken"}, headers=world.bob_auth
        )
        listing = await http.get("/api/v1/channels", headers=world.bob_auth)
    assert theirs.status_code == 201  # no "already exists": names are per tenant
    names = {c["name"] for c in listing.json()["channels"]}
    assert "a-public" not in names


async def test_login_into_another_tenant(module_server: LiveServer, world: World) -> None:
    async with module_server.http() as http:
        theirs = await http.post(
            "/api/v1/auth/login",
            json={"tenant": world.a.slug, "email": world.bob.email, "password": PASSWORD},
        )
        missing = await http.post(
            "/api/v1/auth/login",
            json={"tenant": "zz-no-tenant", "email": world.bob.email, "password": PASSWORD},
        )
        their_user = await http.post(
            "/api/v1/auth/login",
            json={"tenant": world.b.slug, "email": world.alice.email, "password": PASSWORD},
        )
    same(theirs, missing)
    same(their_user, missing)
    assert theirs.status_code == 401


async def test_refresh_tokens_naming_another_tenant(
    module_server: LiveServer, world: World
) -> None:
    secret = "x" * 43
    async with module_server.http() as http:
        theirs = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": f"rt1.{world.a.id}.{secret}"}
        )
        missing = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": f"rt1.no-such-tenant.{secret}"}
        )
    same(theirs, missing)
    assert theirs.status_code == 401


# -- frames --------------------------------------------------------------------------------


async def _reply(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await send(ws, frame)
    reply = await expect(ws, "error", skip=("presence",))
    reply.pop("id", None)
    return reply


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "subscribe"},
        {"type": "unsubscribe"},
        {"type": "publish", "body": "probe"},
        {"type": "history"},
        {"type": "typing"},
    ],
)
async def test_frames_naming_another_tenants_channel(
    module_server: LiveServer, world: World, frame: dict[str, Any]
) -> None:
    ws = await module_server.connect(world.bob_token)
    for name in ("a-public", "a-private"):
        theirs = await _reply(ws, {**frame, "channel": name, "id": 1})
        missing = await _reply(ws, {**frame, "channel": f"zz-{name}", "id": 2})
        assert theirs == missing
        assert theirs["code"] in ("not_found", "not_subscribed")


async def test_auth_and_refresh_frames_with_another_tenants_identity(
    module_server: LiveServer, world: World
) -> None:
    # A real, live token of alice's: only the identity differs from bob's connection.
    alice_token = (await module_server.login(world.a, world.alice))["access_token"]
    ws = await module_server.connect(world.bob_token)
    await send(ws, {"type": "refresh", "token": alice_token, "id": "r"})
    error = await expect(ws, "error")
    assert error["code"] == "forbidden"  # bob's connection does not become alice's
    # an auth frame on a live connection never switches identity either
    await send(ws, {"type": "auth", "token": alice_token, "id": "a"})
    assert (await expect(ws, "error"))["code"] == "bad_frame"


async def test_frame_schemas_carry_no_tenant() -> None:
    # The tenant never comes from a frame: it comes from the token.
    for frame in frames.ClientFrame.__args__:  # type: ignore[attr-defined]
        assert "tenant" not in frame.__struct_fields__
        assert "tenant_id" not in frame.__struct_fields__
    assert msgspec.json.decode(b'{"type":"ping"}', type=frames.ClientFrame) == frames.Ping()


async def test_publishing_over_http_into_another_tenants_channel(
    module_server: LiveServer, world: World
) -> None:
    async with module_server.http() as http:
        for name in ("a-public", "a-private"):
            theirs = await http.post(
                f"/api/v1/channels/{name}/messages", json={"body": "x"}, headers=world.bob_auth
            )
            missing = await http.post(
                "/api/v1/channels/zz-none/messages", json={"body": "x"}, headers=world.bob_auth
            )
            same(theirs, missing)
            assert theirs.status_code == 404


async def test_identity_ids_of_another_tenant(module_server: LiveServer, world: World) -> None:
    """Tenant A's agent, token, user and session ids, used by tenant B's admin, answer
    exactly like ids that never existed, and change nothing."""
    from tests.identity import admin, agent_token

    server = module_server
    boss_a = await admin(server, world.a)
    issued = await agent_token(server, boss_a)
    async with server.http() as http:
        sessions = await http.get("/api/v1/sessions", headers=boss_a.headers)
        a_session = sessions.json()["sessions"][0]["id"]
        fake = "00000000-0000-4000-8000-000000000000"
        probes: list[tuple[str, str, str, Any]] = [
            ("GET", "/api/v1/agents/{}/tokens", issued.agent_id, None),
            ("POST", "/api/v1/agents/{}/tokens", issued.agent_id, {}),
            ("POST", "/api/v1/agents/{}/kill", issued.agent_id, None),
            ("POST", "/api/v1/agents/{}/enable", issued.agent_id, None),
            ("PUT", "/api/v1/users/{}/role", world.alice.id, {"role": "member"}),
            ("POST", "/api/v1/users/{}/disable", world.alice.id, None),
            ("POST", "/api/v1/users/{}/enable", world.alice.id, None),
            ("DELETE", "/api/v1/sessions/{}", a_session, None),
        ]
        for method, path, theirs_id, body in probes:
            theirs = await http.request(
                method, path.format(theirs_id), json=body, headers=world.bob_auth
            )
            missing = await http.request(
                method, path.format(fake), json=body, headers=world.bob_auth
            )
            same(theirs, missing)
            assert theirs.status_code == 404, (method, path, theirs.text)
        token_path = f"/api/v1/agents/{issued.agent_id}/tokens/{issued.token_id}"
        theirs = await http.delete(token_path, headers=world.bob_auth)
        missing = await http.delete(f"/api/v1/agents/{fake}/tokens/{fake}", headers=world.bob_auth)
        same(theirs, missing)
        # Tenant A's agent name is free in tenant B: names are per tenant.
        created = await http.post(
            "/api/v1/agents",
            json={"name": issued.details.get("name", "probe")},
            headers=world.bob_auth,
        )
        assert created.status_code == 201
        # Nothing in tenant A changed: the agent's token still works, alice is still enabled.
        still = await http.get(
            "/api/v1/channels", headers={"Authorization": f"Bearer {issued.token}"}
        )
        assert still.status_code == 200
        alice_sessions = await http.get("/api/v1/sessions", headers=boss_a.headers)
        assert alice_sessions.status_code == 200
