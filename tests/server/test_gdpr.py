"""GDPR: a user exports everything held about them (and nothing about anyone else), and
erasing them revokes their access, closes their sockets and leaves no personal data."""

from __future__ import annotations

import json

import pytest

from protocol.codes import CloseCode
from protocol.errors import NotFoundError
from server.auth.authority import scope_for_operator
from storage.erasure import ERASED
from tests.backends import on_every_store
from tests.harness import (
    PASSWORD,
    LiveServer,
    assert_closed,
    expect,
    publish,
    send,
    subscribe,
)

pytestmark = on_every_store


def bearer(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def test_export_holds_the_callers_data_and_nobody_elses(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice = await server.user(tenant, "alice@example.com")
    bob = await server.user(tenant, "bob@example.com")
    general = await server.channel(tenant, "general", alice)
    secret = await server.channel(tenant, "secret", alice, private=True)
    await server.add_member(tenant, secret, bob)
    wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
    await publish(wa, "general", "alice says hi")
    await publish(wa, "secret", "alice's private note")
    await publish(wb, "general", "bob's reply, not alice's data")
    await publish(wb, "secret", "bob's secret")

    tokens = await server.login(tenant, alice)
    async with server.http() as http:
        response = await http.get("/api/v1/me/export", headers=bearer(tokens))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    doc = response.json()

    assert doc["user"]["id"] == alice.id
    assert doc["user"]["email"] == "alice@example.com"
    assert len(doc["sessions"]) == 2  # the websocket login and this one
    assert {s["user_agent"] for s in doc["sessions"]}
    assert {m["channel"] for m in doc["memberships"]} == {"secret"}
    assert {c["channel"] for c in doc["channels_created"]} == {"general", "secret"}
    assert {e["action"] for e in doc["audit_entries"]} >= {"user.create"}
    assert all(e["by"] != "you" or e["ip"] is not None for e in doc["audit_entries"])
    assert [(m["channel"], m["body"]) for m in doc["messages"]] == [
        ("general", "alice says hi"),
        ("secret", "alice's private note"),
    ]
    assert general.id in {m["channel_id"] for m in doc["messages"]}
    text = json.dumps(doc)
    for foreign in (bob.id, bob.email, "bob's reply", "bob's secret", bob.password_hash):
        assert foreign not in text
    assert alice.password_hash not in text


async def test_erasure_revokes_closes_tombstones_and_forgets(server: LiveServer) -> None:
    tenant = await server.tenant()
    owner = await server.user(tenant, "owner@example.com", role="owner")
    alice = await server.user(tenant, "alice.erased@example.com")
    await server.channel(tenant, "general", owner)
    secret = await server.channel(tenant, "secret", owner, private=True)
    await server.add_member(tenant, secret, alice)
    wa = await server.session(tenant, alice)
    wo = await server.session(tenant, owner)
    await subscribe(wo, "general")
    await publish(wo, "general", "before")
    for i in range(3):
        await publish(wa, "general", f"alice wrote {i}")
    await publish(wo, "general", "after")
    tokens = await server.login(tenant, alice)

    async with server.http() as http:
        wrong = await http.request(
            "DELETE", "/api/v1/me", headers=bearer(tokens), json={"password": "not it"}
        )
        assert wrong.status_code == 403
        erased = await http.request(
            "DELETE", "/api/v1/me", headers=bearer(tokens), json={"password": PASSWORD}
        )
        assert erased.status_code == 200, erased.text
        assert erased.json() == {"erased": True, "messages_tombstoned": 3, "sessions_revoked": 2}
        await assert_closed(wa, CloseCode.REVOKED)
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 401
        login = await http.post(
            "/api/v1/auth/login",
            json={"tenant": tenant.slug, "email": alice.email, "password": PASSWORD},
        )
        assert login.status_code == 401

    # Others still recover a gap-free channel: alice's messages are tombstones in place.
    await send(wo, {"type": "history", "channel": "general", "id": "h"})
    history = await expect(wo, "history", skip=("presence", "typing"))
    rows = sorted(history["messages"], key=lambda m: m["seq"])
    assert [m["seq"] for m in rows] == [1, 2, 3, 4, 5]
    assert [(m["sender"], m["body"]) for m in rows[1:4]] == [(ERASED, "")] * 3
    assert rows[0]["body"] == "before"

    scope = scope_for_operator(tenant.id)
    store = server.runtime.store
    with pytest.raises(NotFoundError):
        await store.users.by_email(scope, alice.email)
    assert await store.sessions.for_user(scope, alice.id) == []
    entries = [e async for e in store.audit.entries(scope)]
    erasure = entries[-1]
    assert (erasure.action, erasure.target, erasure.ip) == ("user.erase", f"user:{alice.id}", "")
    assert alice.email not in json.dumps(erasure.detail)
    assert erasure.detail["messages_tombstoned"] == 3
    await server.stop()
    if server.settings.database_url.startswith("sqlite"):
        # secure_delete: the erased rows are overwritten in the file, not merely unlinked.
        # (The audit log keeps the pseudonymous id, never the email.)
        raw = (server.settings.data_dir / "baychat.db").read_bytes()
        for pii in (alice.email.encode(), alice.password_hash.encode()):
            assert pii not in raw
    ledger = (server.settings.keystore_dir / "erasures.jsonl").read_text()
    assert alice.id in ledger
    assert alice.email not in ledger


async def test_the_last_owner_cannot_erase_themselves(server: LiveServer) -> None:
    tenant = await server.tenant()
    owner = await server.user(tenant, role="owner")
    tokens = await server.login(tenant, owner)
    async with server.http() as http:
        refused = await http.request(
            "DELETE", "/api/v1/me", headers=bearer(tokens), json={"password": PASSWORD}
        )
    assert refused.status_code == 409
    assert "owner" in refused.json()["error"]["message"]
