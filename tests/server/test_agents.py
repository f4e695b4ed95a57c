"""Agents end to end: scoped bay_ tokens over HTTP and WebSocket, refused tokens of every
kind, and the kill switch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from protocol.codes import CloseCode
from server.auth.agent_tokens import new_agent_token
from server.auth.authority import scope_for_operator
from server.auth.tokens import token_digest
from storage.auditchain import Actor
from tests.backends import PostgresDatabase, on_every_store
from tests.harness import (
    ORIGIN,
    LiveServer,
    assert_closed,
    expect,
    expect_messages,
    live_server,
    make_settings,
    publish,
    send,
    subscribe,
)
from tests.identity import admin, agent_token, audit_actions, bearer, raw_sql

pytestmark = on_every_store


@pytest.fixture
async def uncached(database: PostgresDatabase | None, tmp_path: Path) -> AsyncIterator[LiveServer]:
    """A server that caches no credential state: every request and frame reads the store."""
    settings = make_settings(tmp_path, credential_cache_s=0)
    if database is not None:
        settings = settings.with_(
            database_url=database.app_url, database_owner_url=database.owner_url
        )
    async with live_server(settings) as live:
        yield live


async def _error_for(ws: Any, frame: dict[str, Any]) -> str:
    await send(ws, {**frame, "id": "probe"})
    error = await expect(ws, "error", skip=("presence", "message"))
    assert error["id"] == "probe"
    return str(error["code"])


async def _agent_socket(server: LiveServer, token: str) -> Any:
    ws = await server.connect()
    await send(ws, {"type": "auth", "token": token})
    await expect(ws, "ready")
    return ws


async def test_a_token_is_shown_once_and_listed_by_prefix_and_last_four(
    server: LiveServer,
) -> None:
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    issued = await agent_token(server, boss, name="helpdesk")
    assert issued.token.startswith("bay_")
    async with server.http() as http:
        listed = await http.get(f"/api/v1/agents/{issued.agent_id}/tokens", headers=boss.headers)
        agents = await http.get("/api/v1/agents", headers=boss.headers)
    assert listed.status_code == 200
    assert issued.token not in listed.text
    [row] = listed.json()["tokens"]
    assert (row["prefix"], row["last_four"]) == (issued.token[:8], issued.token[-4:])
    assert row["scopes"] == [{"channel": "*", "actions": ["read", "history"]}]
    assert row["revoked"] is False
    assert [a["name"] for a in agents.json()["agents"]] == ["helpdesk"]
    actions = [a for a, _, _ in await audit_actions(server, tenant)]
    assert actions[-2:] == ["agent.create", "agent.token_create"]


async def test_members_cannot_manage_agents_and_the_attempt_is_audited(
    server: LiveServer,
) -> None:
    tenant = await server.tenant()
    member = await admin(server, tenant, role="member")
    async with server.http() as http:
        refused = await http.post("/api/v1/agents", json={"name": "x"}, headers=member.headers)
    assert refused.status_code == 403
    assert (await audit_actions(server, tenant))[-1] == (
        "agent.create",
        "agent-name:x",
        "denied",
    )


async def test_a_forged_token_is_refused(server: LiveServer) -> None:
    tenant = await server.tenant()
    creator = await server.user(tenant)
    await server.channel(tenant, "general", creator)
    forged = new_agent_token()  # well formed, valid checksum, never issued
    async with server.http() as http:
        response = await http.get("/api/v1/channels", headers=bearer(forged))
    assert response.status_code == 401
    ws = await server.connect()
    await send(ws, {"type": "auth", "token": forged})
    await assert_closed(ws, CloseCode.UNAUTHORIZED)


async def test_a_mistyped_token_is_refused_before_any_lookup(server: LiveServer) -> None:
    tenant = await server.tenant()
    issued = await agent_token(server, await admin(server, tenant))
    mistyped = issued.token[:12] + ("A" if issued.token[12] != "A" else "B") + issued.token[13:]
    lookups = 0
    directory = server.runtime.store.agents
    original = directory.tenant_of

    async def counting(digest: str) -> str | None:
        nonlocal lookups
        lookups += 1
        return await original(digest)

    directory.tenant_of = counting  # type: ignore[method-assign]
    async with server.http() as http:
        response = await http.get("/api/v1/channels", headers=bearer(mistyped))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "malformed agent token"
    assert lookups == 0


async def test_an_expired_token_closes_its_socket_and_is_refused(server: LiveServer) -> None:
    tenant = await server.tenant()
    issued = await agent_token(server, await admin(server, tenant), expires_in=2)
    ws = await server.connect()
    await send(ws, {"type": "auth", "token": issued.token})
    ready = await expect(ws, "ready")
    assert ready["expires_at"] == issued.details["expires_at"] // 1000
    await assert_closed(ws, CloseCode.TOKEN_EXPIRED)
    async with server.http() as http:
        response = await http.get("/api/v1/channels", headers=bearer(issued.token))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_expired"


async def test_a_revoked_token_closes_its_socket_and_is_refused(server: LiveServer) -> None:
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    issued = await agent_token(server, boss)
    other = await agent_token(server, boss, agent_id=issued.agent_id)
    ws = await _agent_socket(server, issued.token)
    still = await _agent_socket(server, other.token)
    async with server.http() as http:
        revoked = await http.delete(
            f"/api/v1/agents/{issued.agent_id}/tokens/{issued.token_id}", headers=boss.headers
        )
        assert revoked.status_code == 204
        await assert_closed(ws, CloseCode.REVOKED)
        refused = await http.get("/api/v1/channels", headers=bearer(issued.token))
        accepted = await http.get("/api/v1/channels", headers=bearer(other.token))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "revoked"
    assert accepted.status_code == 200
    await send(still, {"type": "ping", "id": 1})
    assert (await expect(still, "pong"))["id"] == 1
    assert (await audit_actions(server, tenant))[-1] == (
        "agent.token_revoke",
        f"agent_token:{issued.token_id}",
        "success",
    )


async def test_tokens_are_never_taken_from_the_url(server: LiveServer) -> None:
    tenant = await server.tenant()
    issued = await agent_token(server, await admin(server, tenant))
    async with server.http() as http:
        response = await http.get(
            "/api/v1/channels", params={"access_token": issued.token, "token": issued.token}
        )
    assert response.status_code == 401
    # Without an Origin (not a browser) the handshake needs a bearer header: a URL token
    # does not count, so it is refused before the upgrade.
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{server.ws_url}?token={issued.token}", close_timeout=0.5)
    assert refused.value.response.status_code == 401
    # From an allowed browser origin the first frame must be `auth`; the URL token is ignored.
    sneaky = await connect(
        f"{server.ws_url}?token={issued.token}", close_timeout=0.5, origin=ORIGIN
    )
    server.clients.append(sneaky)
    await send(sneaky, {"type": "ping"})
    await assert_closed(sneaky, CloseCode.UNAUTHORIZED)


async def test_cross_tenant_tokens_reach_nothing(server: LiveServer) -> None:
    tenant_a, tenant_b = await server.tenant(), await server.tenant()
    boss_a, boss_b = await admin(server, tenant_a), await admin(server, tenant_b)
    await server.channel(tenant_b, "payroll", boss_b.user)
    issued = await agent_token(server, boss_a, scopes=[{"channel": "*", "actions": ["read"]}])
    ws = await _agent_socket(server, issued.token)
    assert await _error_for(ws, {"type": "subscribe", "channel": "payroll"}) == "not_found"
    async with server.http() as http:
        for method, path in (
            ("GET", f"/api/v1/agents/{issued.agent_id}/tokens"),
            ("POST", f"/api/v1/agents/{issued.agent_id}/kill"),
            ("POST", f"/api/v1/agents/{issued.agent_id}/tokens"),
            ("DELETE", f"/api/v1/agents/{issued.agent_id}/tokens/{issued.token_id}"),
        ):
            response = await http.request(method, path, headers=boss_b.headers, json={})
            assert response.status_code == 404, (method, path, response.text)
        still_alive = await http.get("/api/v1/channels", headers=bearer(issued.token))
    assert still_alive.status_code == 200


async def test_a_directory_entry_pointing_at_another_tenant_is_refused(
    uncached: LiveServer,
) -> None:
    server = uncached
    tenant_a, tenant_b = await server.tenant(), await server.tenant()
    issued = await agent_token(server, await admin(server, tenant_a))
    await raw_sql(
        server,
        "UPDATE token_directory SET tenant_id = $1 WHERE token_hash = $2",
        tenant_b.id,
        token_digest(issued.token),
    )
    async with server.http() as http:
        response = await http.get("/api/v1/channels", headers=bearer(issued.token))
    assert response.status_code == 401


async def test_a_read_only_token_cannot_publish(server: LiveServer) -> None:
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    await server.channel(tenant, "general", boss.user)
    issued = await agent_token(server, boss)  # no scopes: read-only
    ws = await _agent_socket(server, issued.token)
    await subscribe(ws, "general")
    assert await _error_for(ws, {"type": "publish", "channel": "general", "body": "hi"}) == (
        "forbidden"
    )
    assert await _error_for(ws, {"type": "typing", "channel": "general"}) == "forbidden"
    human = await server.session(tenant, boss.user)
    await publish(human, "general", "hello bot")
    [seen] = await expect_messages(ws, 1)
    assert seen["body"] == "hello bot"
    await send(ws, {"type": "history", "channel": "general", "id": "h"})
    history = await expect(ws, "history", skip=("presence",))
    assert [m["body"] for m in history["messages"]] == ["hello bot"]
    async with server.http() as http:
        response = await http.post(
            "/api/v1/channels/general/messages", json={"body": "hi"}, headers=bearer(issued.token)
        )
        assert response.status_code == 403
        page = await http.get("/api/v1/channels/general/messages", headers=bearer(issued.token))
    assert [m["body"] for m in page.json()["messages"]] == ["hello bot"]


async def test_a_scope_for_one_channel_gives_nothing_on_another(server: LiveServer) -> None:
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    await server.channel(tenant, "x", boss.user)
    await server.channel(tenant, "y", boss.user)
    issued = await agent_token(
        server, boss, scopes=[{"channel": "x", "actions": ["read", "write", "history"]}]
    )
    ws = await _agent_socket(server, issued.token)
    await subscribe(ws, "x")
    ack = await publish(ws, "x", "on x")
    assert ack["seq"] == 1
    for frame in (
        {"type": "subscribe", "channel": "y"},
        {"type": "publish", "channel": "y", "body": "on y"},
        {"type": "history", "channel": "y"},
        {"type": "typing", "channel": "y"},
    ):
        assert await _error_for(ws, frame) == "not_found"
    async with server.http() as http:
        headers = bearer(issued.token)
        listed = await http.get("/api/v1/channels", headers=headers)
        read_y = await http.get("/api/v1/channels/y/messages", headers=headers)
        post_y = await http.post("/api/v1/channels/y/messages", json={"body": "y"}, headers=headers)
        members = await http.post(
            "/api/v1/channels/x/members", json={"email": boss.user.email}, headers=headers
        )
    assert [c["name"] for c in listed.json()["channels"]] == ["x"]
    assert (read_y.status_code, post_y.status_code) == (404, 404)
    assert members.status_code == 403


async def test_patterns_never_open_private_channels(server: LiveServer) -> None:
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    await server.channel(tenant, "support-eu", boss.user)
    await server.channel(tenant, "support-vip", boss.user, private=True)
    wildcard = await agent_token(
        server, boss, scopes=[{"channel": "support-*", "actions": ["read", "write"]}]
    )
    ws = await _agent_socket(server, wildcard.token)
    await publish(ws, "support-eu", "hello")
    assert await _error_for(ws, {"type": "subscribe", "channel": "support-vip"}) == "not_found"
    exact = await agent_token(
        server,
        boss,
        agent_id=wildcard.agent_id,
        scopes=[{"channel": "support-vip", "actions": ["write"]}],
    )
    ws2 = await _agent_socket(server, exact.token)
    assert (await publish(ws2, "support-vip", "vip"))["seq"] == 1


async def test_http_publish_answers_after_the_message_is_stored(server: LiveServer) -> None:
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    await server.channel(tenant, "alerts", boss.user)
    issued = await agent_token(server, boss, scopes=[{"channel": "alerts", "actions": ["write"]}])
    listener = await server.session(tenant, boss.user)
    await subscribe(listener, "alerts")
    async with server.http() as http:
        headers = bearer(issued.token)
        first = await http.post(
            "/api/v1/channels/alerts/messages",
            json={"body": "disk full", "client_msg_id": "alert-1"},
            headers=headers,
        )
        assert first.status_code == 201, first.text
        # Stored means readable from the store right away.
        stored = await server.runtime.store.messages.after(
            scope_for_operator(tenant.id),
            (
                await server.runtime.store.channels.by_name(scope_for_operator(tenant.id), "alerts")
            ).id,
            "alerts",
            0,
            10,
        )
        assert [m.id for m in stored] == [first.json()["message_id"]]
        again = await http.post(
            "/api/v1/channels/alerts/messages",
            json={"body": "disk full", "client_msg_id": "alert-1"},
            headers=headers,
        )
    assert again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    [message] = await expect_messages(listener, 1)
    assert (message["sender"], message["body"]) == (issued.agent_id, "disk full")


async def test_every_frame_is_authorised_when_it_arrives(uncached: LiveServer) -> None:
    """Even with no control event (say it was lost), the next frame sees the revocation."""
    server = uncached
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    await server.channel(tenant, "general", boss.user)
    issued = await agent_token(server, boss)
    ws = await _agent_socket(server, issued.token)
    await subscribe(ws, "general")
    await server.runtime.store.agents.revoke_token(  # behind the API's back: no event
        scope_for_operator(tenant.id),
        issued.agent_id,
        issued.token_id,
        actor=Actor("operator", "test"),
    )
    await send(ws, {"type": "ping"})
    await assert_closed(ws, CloseCode.REVOKED)


async def test_the_kill_switch(server: LiveServer) -> None:
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    await server.channel(tenant, "general", boss.user)
    scopes = [{"channel": "general", "actions": ["read", "write"]}]
    first = await agent_token(server, boss, name="rogue", scopes=scopes)
    second = await agent_token(server, boss, agent_id=first.agent_id, scopes=scopes)
    sockets = [await _agent_socket(server, t.token) for t in (first, second)]
    for ws in sockets:
        await subscribe(ws, "general")
    async with server.http() as http:
        killed = await http.post(f"/api/v1/agents/{first.agent_id}/kill", headers=boss.headers)
        assert killed.status_code == 200
        assert sorted(killed.json()["tokens_revoked"]) == sorted([first.token_id, second.token_id])
        await asyncio.gather(*(assert_closed(ws, CloseCode.REVOKED) for ws in sockets))
        for token in (first.token, second.token):
            for response in (
                await http.get("/api/v1/channels", headers=bearer(token)),
                await http.post(
                    "/api/v1/channels/general/messages", json={"body": "x"}, headers=bearer(token)
                ),
            ):
                assert response.status_code == 401
        refused = await http.post(
            f"/api/v1/agents/{first.agent_id}/tokens", json={}, headers=boss.headers
        )
        assert refused.status_code == 409
        enabled = await http.post(f"/api/v1/agents/{first.agent_id}/enable", headers=boss.headers)
        assert enabled.json()["disabled"] is False
        old = await http.get("/api/v1/channels", headers=bearer(first.token))
        assert old.status_code == 401  # re-enabling revives no token
    fresh = await agent_token(server, boss, agent_id=first.agent_id, scopes=scopes)
    ws = await _agent_socket(server, fresh.token)
    assert (await publish(ws, "general", "back"))["seq"] == 1
    trail = [(a, t) for a, t, _ in await audit_actions(server, tenant)]
    agent = f"agent:{first.agent_id}"
    assert trail.index(("agent.kill", agent)) < trail.index(("agent.enable", agent))


async def test_agents_are_never_admins(server: LiveServer) -> None:
    tenant = await server.tenant()
    boss = await admin(server, tenant)
    issued = await agent_token(
        server, boss, scopes=[{"channel": "*", "actions": ["read", "write", "history"]}]
    )
    async with server.http() as http:
        for method, path in (
            ("POST", "/api/v1/agents"),
            ("GET", "/api/v1/users"),
            ("GET", "/api/v1/sessions"),
            ("POST", f"/api/v1/agents/{issued.agent_id}/enable"),
        ):
            response = await http.request(
                method, path, headers=bearer(issued.token), json={"name": "x"}
            )
            assert response.status_code == 403, (method, path)
