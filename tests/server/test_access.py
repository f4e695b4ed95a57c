"""Who may do what: private channels, and tenant isolation as seen from outside."""

from __future__ import annotations

from typing import Any

from tests.backends import on_every_store
from tests.harness import LiveServer, expect, publish, send, subscribe

pytestmark = on_every_store


async def _error_for(ws: Any, frame: dict[str, Any]) -> dict[str, Any]:
    await send(ws, {**frame, "id": "probe"})
    error = await expect(ws, "error", skip=("presence",))
    assert error["id"] == "probe"
    return {"code": error["code"], "message": error["message"]}


async def test_non_member_cannot_use_a_private_channel(server: LiveServer) -> None:
    tenant = await server.tenant()
    owner, member = await server.user(tenant), await server.user(tenant)
    outsider = await server.user(tenant)
    secret = await server.channel(tenant, "secret", owner, private=True)
    await server.add_member(tenant, secret, member)

    wm = await server.session(tenant, member)
    await subscribe(wm, "secret")
    wo = await server.session(tenant, outsider)
    for frame in (
        {"type": "subscribe", "channel": "secret"},
        {"type": "publish", "channel": "secret", "body": "let me in"},
        {"type": "history", "channel": "secret"},
        {"type": "typing", "channel": "secret"},
    ):
        assert (await _error_for(wo, frame))["code"] == "not_found"
    # The member saw nothing from the outsider, and can still talk.
    ack = await publish(wm, "secret", "members only")
    assert ack["seq"] == 1


async def test_adding_a_member_opens_the_private_channel(server: LiveServer) -> None:
    tenant = await server.tenant()
    owner, friend = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "club", owner, private=True)
    owner_tokens = await server.login(tenant, owner)
    friend_tokens = await server.login(tenant, friend)
    async with server.http() as http:
        listed = await http.get(
            "/api/v1/channels",
            headers={"Authorization": f"Bearer {friend_tokens['access_token']}"},
        )
        assert "club" not in [c["name"] for c in listed.json()["channels"]]
        added = await http.post(
            "/api/v1/channels/club/members",
            json={"email": friend.email},
            headers={"Authorization": f"Bearer {owner_tokens['access_token']}"},
        )
        assert added.status_code == 201
        listed = await http.get(
            "/api/v1/channels",
            headers={"Authorization": f"Bearer {friend_tokens['access_token']}"},
        )
    assert "club" in [c["name"] for c in listed.json()["channels"]]
    ws = await server.connect(friend_tokens["access_token"])
    assert (await subscribe(ws, "club"))["channel"] == "club"


async def test_cross_tenant_probes_look_like_missing_channels(server: LiveServer) -> None:
    tenant_a, tenant_b = await server.tenant(), await server.tenant()
    alice, mallory = await server.user(tenant_a), await server.user(tenant_b)
    await server.channel(tenant_a, "payroll", alice)
    ws = await server.session(tenant_b, mallory)
    for kind in ("subscribe", "publish", "history", "typing"):
        frame: dict[str, Any] = {"type": kind, "channel": "payroll"}
        missing: dict[str, Any] = {"type": kind, "channel": "no-such-channel"}
        if kind == "publish":
            frame["body"] = missing["body"] = "probe"
        assert await _error_for(ws, frame) == await _error_for(ws, missing)

    tokens = await server.login(tenant_b, mallory)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with server.http() as http:
        for method, path, body in (
            ("GET", "/api/v1/channels/{}/messages", None),
            ("POST", "/api/v1/channels/{}/members", {"email": alice.email}),
        ):
            real = await http.request(method, path.format("payroll"), json=body, headers=auth)
            fake = await http.request(method, path.format("nope"), json=body, headers=auth)
            # every error carries its own correlation id; the rest must be identical
            real_error, fake_error = real.json()["error"], fake.json()["error"]
            real_error.pop("correlation_id")
            fake_error.pop("correlation_id")
            assert (real.status_code, real_error) == (fake.status_code, fake_error)
            assert real.status_code == 404


async def test_same_channel_name_in_two_tenants_never_mixes(server: LiveServer) -> None:
    tenant_a, tenant_b = await server.tenant(), await server.tenant()
    alice, bob = await server.user(tenant_a), await server.user(tenant_b)
    await server.channel(tenant_a, "general", alice)
    await server.channel(tenant_b, "general", bob)
    wa, wb = await server.session(tenant_a, alice), await server.session(tenant_b, bob)
    await subscribe(wa, "general")
    await subscribe(wb, "general")
    ack_a = await publish(wa, "general", "tenant a only")
    ack_b = await publish(wb, "general", "tenant b only")
    # Each tenant's channel has its own seq, and each side saw only its own message.
    assert ack_a["seq"] == ack_b["seq"] == 1
    await send(wb, {"type": "history", "channel": "general", "id": 1})
    history = await expect(wb, "history", skip=("message",))
    assert [m["body"] for m in history["messages"]] == ["tenant b only"]


async def test_login_does_not_reveal_which_part_was_wrong(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    attempts = [
        {"tenant": tenant.slug, "email": alice.email, "password": "wrong password"},
        {"tenant": tenant.slug, "email": "nobody@example.com", "password": "wrong password"},
        {"tenant": "no-such-tenant", "email": alice.email, "password": "wrong password"},
    ]
    async with server.http() as http:
        answers = [await http.post("/api/v1/auth/login", json=body) for body in attempts]
    assert {a.status_code for a in answers} == {401}
    errors = [a.json()["error"] for a in answers]
    for error in errors:
        error.pop("correlation_id")  # each response has its own
    assert all(error == errors[0] for error in errors)


async def test_refresh_rotates_and_replay_revokes_the_session(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    tokens = await server.login(tenant, alice)
    async with server.http() as http:
        first = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert first.status_code == 200
        rotated = first.json()
        assert rotated["refresh_token"] != tokens["refresh_token"]
        replay = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert replay.status_code == 401
        assert replay.json()["error"]["code"] == "revoked"
        # The whole family is gone: the successor no longer works either.
        successor = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}
        )
        assert successor.status_code == 401
