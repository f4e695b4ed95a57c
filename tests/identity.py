"""Helpers for the identity tests: admins, agents and their tokens, over the real HTTP API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.models import Tenant, User
from tests.harness import LiveServer


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Admin:
    user: User
    tokens: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.tokens["access_token"])


async def admin(server: LiveServer, tenant: Tenant, role: str = "admin") -> Admin:
    user = await server.user(tenant, role=role)  # type: ignore[arg-type]
    return Admin(user, await server.login(tenant, user))


@dataclass
class IssuedToken:
    agent_id: str
    token: str
    token_id: str
    details: dict[str, Any]


async def agent_token(
    server: LiveServer,
    by: Admin,
    *,
    name: str | None = None,
    agent_id: str | None = None,
    scopes: list[dict[str, Any]] | None = None,
    expires_in: int | None = None,
) -> IssuedToken:
    """Create an agent (unless ``agent_id`` is given) and issue it a token."""
    async with server.http() as http:
        if agent_id is None:
            created = await http.post(
                "/api/v1/agents", json={"name": name or "bot"}, headers=by.headers
            )
            assert created.status_code == 201, created.text
            agent_id = created.json()["id"]
        body: dict[str, Any] = {}
        if scopes is not None:
            body["scopes"] = scopes
        if expires_in is not None:
            body["expires_in"] = expires_in
        issued = await http.post(f"/api/v1/agents/{agent_id}/tokens", json=body, headers=by.headers)
    assert issued.status_code == 201, issued.text
    doc = issued.json()
    return IssuedToken(agent_id, doc["token"], doc["details"]["id"], doc["details"])


async def audit_actions(server: LiveServer, tenant: Tenant) -> list[tuple[str, str, str]]:
    """(action, target, result) of the tenant's audit entries, oldest first."""
    from server.auth.authority import scope_for_operator

    scope = scope_for_operator(tenant.id)
    return [(e.action, e.target, e.result) async for e in server.runtime.store.audit.entries(scope)]


async def raw_sql(server: LiveServer, sql: str, *args: object) -> None:
    """Run a statement behind the application's back (``$1`` parameters): on the SQLite
    file, or on Postgres as the superuser."""
    if server.settings.database_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(server.settings.data_dir / "baychat.db")
        try:
            db.execute(sql.replace("$", "?"), args)
            db.commit()
        finally:
            db.close()
        return
    from urllib.parse import urlsplit

    import asyncpg

    from tests.backends import POSTGRES_ADMIN_URL

    name = urlsplit(server.settings.database_url).path.lstrip("/")
    admin_db = await asyncpg.connect(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    try:
        await admin_db.execute(sql, *args)
    finally:
        await admin_db.close()
