"""Sessions end to end: listing and revoking them, logout, password change, account
disable and role changes; each one stops the access tokens already issued and closes the
affected live sockets."""

from __future__ import annotations

from typing import Any

import httpx

from protocol.codes import CloseCode
from server.auth.authority import scope_for_operator
from storage.models import Tenant, User
from tests.backends import on_every_store
from tests.harness import PASSWORD, LiveServer, assert_closed, expect, send
from tests.identity import admin, audit_actions, bearer

pytestmark = on_every_store


async def _login(server: LiveServer, tenant: Tenant, user: User, agent: str) -> dict[str, Any]:
    async with server.http() as http:
        response = await http.post(
            "/api/v1/auth/login",
            json={"tenant": tenant.slug, "email": user.email, "password": PASSWORD},
            headers={"User-Agent": agent},
        )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


async def _status(http: httpx.AsyncClient, tokens: dict[str, Any]) -> int:
    return (await http.get("/api/v1/channels", headers=bearer(tokens["access_token"]))).status_code


async def _refresh(http: httpx.AsyncClient, tokens: dict[str, Any]) -> httpx.Response:
    return await http.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})


async def _alive(ws: Any) -> None:
    await send(ws, {"type": "ping", "id": "alive"})
    assert (await expect(ws, "pong", skip=("presence",)))["id"] == "alive"


async def test_a_user_lists_their_sessions(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    await _login(server, tenant, alice, "phone/1.0")
    laptop = await _login(server, tenant, alice, "laptop/2.0")
    await server.login(tenant, await server.user(tenant))  # someone else's session
    async with server.http() as http:
        response = await http.get("/api/v1/sessions", headers=bearer(laptop["access_token"]))
    assert response.status_code == 200
    sessions = response.json()["sessions"]
    assert sorted(s["user_agent"] for s in sessions) == ["laptop/2.0", "phone/1.0"]
    [current] = [s for s in sessions if s["current"]]
    assert current["user_agent"] == "laptop/2.0"
    assert {s["ip"] for s in sessions} == {"127.0.0.1"}
    for s in sessions:
        assert s["created_at"] <= s["last_used_at"] < s["expires_at"]


async def test_revoking_a_session_stops_its_tokens_and_closes_its_socket(
    server: LiveServer,
) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    mine = await _login(server, tenant, alice, "laptop")
    stolen = await _login(server, tenant, alice, "unknown")
    ws = await server.connect(stolen["access_token"])
    keep = await server.connect(mine["access_token"])
    async with server.http() as http:
        listed = await http.get("/api/v1/sessions", headers=bearer(mine["access_token"]))
        [target] = [s["id"] for s in listed.json()["sessions"] if not s["current"]]
        revoked = await http.delete(
            f"/api/v1/sessions/{target}", headers=bearer(mine["access_token"])
        )
        assert revoked.status_code == 204
        await assert_closed(ws, CloseCode.REVOKED)
        assert await _status(http, stolen) == 401
        assert (await _refresh(http, stolen)).status_code == 401
        assert await _status(http, mine) == 200
    await _alive(keep)
    assert (await audit_actions(server, tenant))[-1] == (
        "session.revoke",
        f"session:{target}",
        "success",
    )


async def test_another_users_session_cannot_be_revoked(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    alice_tokens = await server.login(tenant, alice)
    bob_tokens = await server.login(tenant, bob)
    async with server.http() as http:
        listed = await http.get("/api/v1/sessions", headers=bearer(bob_tokens["access_token"]))
        [bobs] = [s["id"] for s in listed.json()["sessions"]]
        response = await http.delete(
            f"/api/v1/sessions/{bobs}", headers=bearer(alice_tokens["access_token"])
        )
        assert response.status_code == 404
        assert await _status(http, bob_tokens) == 200


async def test_revoke_all_other_sessions(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    current = await server.login(tenant, alice)
    others = [await server.login(tenant, alice) for _ in range(2)]
    sockets = [await server.connect(t["access_token"]) for t in others]
    async with server.http() as http:
        response = await http.post(
            "/api/v1/sessions/revoke-others", headers=bearer(current["access_token"])
        )
        assert response.status_code == 200
        assert len(response.json()["revoked"]) == 2
        for ws in sockets:
            await assert_closed(ws, CloseCode.REVOKED)
        assert [await _status(http, t) for t in others] == [401, 401]
        assert await _status(http, current) == 200
        listed = await http.get("/api/v1/sessions", headers=bearer(current["access_token"]))
    assert [s["current"] for s in listed.json()["sessions"]] == [True]


async def test_logout_ends_the_current_session(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    tokens = await server.login(tenant, alice)
    ws = await server.connect(tokens["access_token"])
    async with server.http() as http:
        response = await http.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
        assert response.status_code == 204
        await assert_closed(ws, CloseCode.REVOKED)
        assert await _status(http, tokens) == 401
        assert (await _refresh(http, tokens)).status_code == 401
    assert (await audit_actions(server, tenant))[-1][0] == "session.logout"


async def test_a_replayed_refresh_token_kills_its_family_and_its_socket(
    server: LiveServer,
) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    first = await server.login(tenant, alice)
    ws = await server.connect(first["access_token"])
    async with server.http() as http:
        rotated = await _refresh(http, first)
        assert rotated.status_code == 200
        second = rotated.json()
        replayed = await _refresh(http, first)
        assert replayed.status_code == 401
        assert replayed.json()["error"]["code"] == "revoked"
        await assert_closed(ws, CloseCode.REVOKED)
        assert (await _refresh(http, second)).status_code == 401
        assert await _status(http, first) == 401
        assert await _status(http, second) == 401
    assert (await audit_actions(server, tenant))[-1][0] == "session.revoke_reused"


async def test_changing_the_password_ends_the_other_sessions(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant)
    current = await server.login(tenant, alice)
    other = await server.login(tenant, alice)
    ws = await server.connect(other["access_token"])
    headers = bearer(current["access_token"])
    new_password = "a much better passphrase"
    async with server.http() as http:
        wrong = await http.post(
            "/api/v1/me/password",
            json={"current_password": "not it at all", "new_password": new_password},
            headers=headers,
        )
        assert wrong.status_code == 403
        weak = await http.post(
            "/api/v1/me/password",
            json={"current_password": PASSWORD, "new_password": "short"},
            headers=headers,
        )
        assert weak.status_code == 422
        await _alive(ws)
        changed = await http.post(
            "/api/v1/me/password",
            json={"current_password": PASSWORD, "new_password": new_password},
            headers=headers,
        )
        assert changed.status_code == 200
        await assert_closed(ws, CloseCode.REVOKED)
        assert await _status(http, other) == 401
        assert await _status(http, current) == 200
        old = await http.post(
            "/api/v1/auth/login",
            json={"tenant": tenant.slug, "email": alice.email, "password": PASSWORD},
        )
        new = await http.post(
            "/api/v1/auth/login",
            json={"tenant": tenant.slug, "email": alice.email, "password": new_password},
        )
    assert (old.status_code, new.status_code) == (401, 200)
    trail = [(a, r) for a, _, r in await audit_actions(server, tenant)]
    assert trail[-2:] == [("user.password_change", "denied"), ("user.password_change", "success")]


async def test_disabling_an_account_closes_its_sockets_and_refuses_it(server: LiveServer) -> None:
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    bob = await server.user(tenant)
    bob_tokens = await server.login(tenant, bob)
    ws = await server.connect(bob_tokens["access_token"])
    async with server.http() as http:
        disabled = await http.post(f"/api/v1/users/{bob.id}/disable", headers=boss.headers)
        assert disabled.status_code == 200
        await assert_closed(ws, CloseCode.REVOKED)
        assert await _status(http, bob_tokens) == 401
        login = await http.post(
            "/api/v1/auth/login",
            json={"tenant": tenant.slug, "email": bob.email, "password": PASSWORD},
        )
        assert login.status_code == 401
        enabled = await http.post(f"/api/v1/users/{bob.id}/enable", headers=boss.headers)
        assert enabled.status_code == 204
        assert await _status(http, bob_tokens) == 401  # its sessions stay revoked
    await server.login(tenant, bob)
    trail = [a for a, _, _ in await audit_actions(server, tenant)]
    assert trail[-2:] == ["user.disable", "user.enable"]


async def test_admins_cannot_touch_owners_or_themselves(server: LiveServer) -> None:
    tenant = await server.tenant()
    owner = await admin(server, tenant, role="owner")
    boss = await admin(server, tenant)
    async with server.http() as http:
        on_owner = await http.post(f"/api/v1/users/{owner.user.id}/disable", headers=boss.headers)
        on_self = await http.post(f"/api/v1/users/{boss.user.id}/disable", headers=boss.headers)
        member = await admin(server, tenant, role="member")
        by_member = await http.post(f"/api/v1/users/{boss.user.id}/disable", headers=member.headers)
    assert (on_owner.status_code, on_self.status_code, by_member.status_code) == (403, 409, 403)


async def test_role_changes_apply_at_once_and_are_audited(server: LiveServer) -> None:
    tenant = await server.tenant()
    owner = await admin(server, tenant, role="owner")
    boss = await admin(server, tenant)
    carol = await admin(server, tenant, role="member")  # logged in as a member
    async with server.http() as http:
        assert (await http.get("/api/v1/users", headers=carol.headers)).status_code == 403
        promoted = await http.put(
            f"/api/v1/users/{carol.user.id}/role", json={"role": "admin"}, headers=boss.headers
        )
        assert promoted.json()["role"] == "admin"
        # Her access token still says "member"; her current role is what counts.
        assert (await http.get("/api/v1/users", headers=carol.headers)).status_code == 200
        to_owner = await http.put(
            f"/api/v1/users/{carol.user.id}/role", json={"role": "owner"}, headers=boss.headers
        )
        assert to_owner.status_code == 403
        demoted = await http.put(
            f"/api/v1/users/{carol.user.id}/role", json={"role": "member"}, headers=owner.headers
        )
        assert demoted.status_code == 200
        assert (await http.get("/api/v1/users", headers=carol.headers)).status_code == 403
        last_owner = await http.put(
            f"/api/v1/users/{owner.user.id}/role", json={"role": "admin"}, headers=owner.headers
        )
        assert last_owner.status_code == 409
    trail = await audit_actions(server, tenant)
    changes = [
        (a, r) for a, t, r in trail if t == f"user:{carol.user.id}" and a == "user.role_change"
    ]
    assert changes == [
        ("user.role_change", "success"),
        ("user.role_change", "denied"),
        ("user.role_change", "success"),
    ]
    entries = [
        e
        async for e in server.runtime.store.audit.entries(scope_for_operator(tenant.id))
        if e.action == "user.role_change" and e.result == "success"
    ]
    assert [dict(e.detail) for e in entries] == [
        {"from": "member", "to": "admin"},
        {"from": "admin", "to": "member"},
    ]
    assert {e.actor_id for e in entries} == {boss.user.id, owner.user.id}
