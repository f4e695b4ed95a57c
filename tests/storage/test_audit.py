"""The audit log in a real database: appends chain per tenant in the action's transaction,
the database refuses changes, and tampering done behind its back (as the owner) is named by
verification. SQLite always; Postgres with its roles and row-level security when present."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import ConflictError
from server.auth.authority import scope_for_operator
from server.runtime import open_store
from storage.auditchain import Actor, AuditRecord
from storage.store import Store
from tests.backends import PostgresDatabase, fresh_postgres
from tests.harness import make_settings
from tests.storage.stores import opened_store

# Runs statements (``$1`` = the tenant id) as the database owner, append-only triggers off.
Tamper = Callable[[str, list[str]], Awaitable[None]]
ADMIN = Actor("user", "admin-1", "192.0.2.1")


@dataclass
class Backend:
    store: Store
    tamper: Tamper
    postgres: PostgresDatabase | None = None


@contextlib.asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[Backend]:
    settings = make_settings(tmp_path)
    store = open_store(settings)
    await store.open(migrate_schema=True)

    async def tamper(tenant_id: str, statements: list[str]) -> None:
        db = sqlite3.connect(settings.data_dir / "baychat.db")
        try:
            db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
            db.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
            for sql in statements:
                db.execute(sql.replace("$1", "?"), (tenant_id,))
            db.commit()
        finally:
            db.close()

    try:
        yield Backend(store, tamper)
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def _postgres(tmp_path: Path) -> AsyncIterator[Backend]:
    import asyncpg

    async with (
        fresh_postgres() as db,
        opened_store(db.owner_url, db.app_url, tmp_path / "keys") as store,
    ):

        async def tamper(tenant_id: str, statements: list[str]) -> None:
            owner = await asyncpg.connect(db.owner_url)
            try:
                async with owner.transaction():
                    await owner.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
                    await owner.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
                    for sql in statements:
                        await owner.execute(sql, tenant_id)
                    await owner.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
            finally:
                await owner.close()

        yield Backend(store, tamper, db)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opener = _sqlite if request.param == "sqlite" else _postgres
    async with opener(tmp_path) as found:
        yield found


async def _tenant_with_entries(store: Store, n: int) -> str:
    tenant = await store.tenants.create(f"t-{id(store)}-{n}")
    scope = scope_for_operator(tenant.id)
    for i in range(n - 1):  # the tenant's creation is entry 1
        await store.audit.record(scope, AuditRecord(ADMIN, "test.action", f"thing:{i}"))
    return tenant.id


async def test_appends_chain_per_tenant(backend: Backend) -> None:
    store = backend.store
    a = await _tenant_with_entries(store, 4)
    b = await _tenant_with_entries(store, 2)
    for tenant_id, count in ((a, 4), (b, 2)):
        scope = scope_for_operator(tenant_id)
        entries = [e async for e in store.audit.entries(scope)]
        assert [e.seq for e in entries] == list(range(1, count + 1))
        assert {e.tenant_id for e in entries} == {tenant_id}
        assert entries[0].action == "tenant.create"
        assert await store.audit.verify(scope) == (count, None)


async def test_concurrent_appends_keep_one_gap_free_chain(backend: Backend) -> None:
    store = backend.store
    tenant_id = await _tenant_with_entries(store, 1)
    scope = scope_for_operator(tenant_id)
    await asyncio.gather(
        *(store.audit.record(scope, AuditRecord(ADMIN, "x", f"t:{i}")) for i in range(20))
    )
    assert await store.audit.verify(scope) == (21, None)


async def test_an_entry_commits_and_rolls_back_with_its_action(backend: Backend) -> None:
    store = backend.store
    tenant_id = await _tenant_with_entries(store, 1)
    scope = scope_for_operator(tenant_id)
    agent = await store.agents.create(scope, "bot", actor=ADMIN)
    with pytest.raises(ConflictError):
        await store.agents.create(scope, "bot", actor=ADMIN)  # refused: no entry either
    entries = [e async for e in store.audit.entries(scope)]
    assert [(e.action, e.target) for e in entries[1:]] == [("agent.create", f"agent:{agent.id}")]
    assert (entries[1].actor_kind, entries[1].actor_id, entries[1].ip) == (
        "user",
        "admin-1",
        "192.0.2.1",
    )


TAMPERING = {
    "edited": (
        ["UPDATE audit_log SET target = 'thing:forged' WHERE tenant_id = $1 AND seq = 3"],
        ("altered", 3),
    ),
    "deleted": (["DELETE FROM audit_log WHERE tenant_id = $1 AND seq = 3"], ("removed", 3)),
    "reordered": (
        [
            "UPDATE audit_log SET seq = -seq WHERE tenant_id = $1 AND seq IN (2, 3)",
            "UPDATE audit_log SET seq = CASE seq WHEN -2 THEN 3 ELSE 2 END"
            " WHERE tenant_id = $1 AND seq < 0",
        ],
        ("reordered", 2),
    ),
}


@pytest.mark.parametrize("how", list(TAMPERING))
async def test_tampering_as_the_owner_is_named(backend: Backend, how: str) -> None:
    statements, expected = TAMPERING[how]
    store = backend.store
    tenant_id = await _tenant_with_entries(store, 5)
    other_id = await _tenant_with_entries(store, 3)
    await backend.tamper(tenant_id, statements)
    _, problem = await store.audit.verify(scope_for_operator(tenant_id))
    assert problem is not None
    assert (problem.kind, problem.seq) == expected
    assert await store.audit.verify(scope_for_operator(other_id)) == (3, None)


async def test_the_application_cannot_change_entries(backend: Backend) -> None:
    store = backend.store
    tenant_id = await _tenant_with_entries(store, 2)
    for sql in (
        "UPDATE audit_log SET result = 'denied' WHERE tenant_id = $1",
        "DELETE FROM audit_log WHERE tenant_id = $1",
    ):
        with pytest.raises(Exception, match=r"append-only|permission denied"):
            async with store.engine.transaction("tamper", tenant_id=tenant_id, write=True) as tx:
                await tx.execute(sql, tenant_id)
    assert await store.audit.verify(scope_for_operator(tenant_id)) == (2, None)


async def test_postgres_app_role_holds_only_insert_and_select(backend: Backend) -> None:
    db = backend.postgres
    if db is None:
        pytest.skip("Postgres only: SQLite has no roles")
    import asyncpg

    tenant_id = await _tenant_with_entries(backend.store, 2)
    app = await asyncpg.connect(db.app_url)
    try:
        privileges: dict[str, Any] = {
            p: await app.fetchval("SELECT has_table_privilege('audit_log', $1)", p)
            for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        }
        assert privileges == {
            "SELECT": True,
            "INSERT": True,
            "UPDATE": False,
            "DELETE": False,
            "TRUNCATE": False,
        }
        for sql in (
            "UPDATE audit_log SET result = 'denied'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            async with app.transaction():
                await app.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await app.execute(sql)
    finally:
        await app.close()
    # The triggers refuse even the owner, who would have to drop them (and leave a trace).
    owner = await asyncpg.connect(db.owner_url)
    try:
        for sql in (
            "UPDATE audit_log SET result = 'x'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            async with owner.transaction():
                await owner.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
                with pytest.raises(asyncpg.PostgresError, match="append-only"):
                    await owner.execute(sql)
    finally:
        await owner.close()
    assert await backend.store.audit.verify(scope_for_operator(tenant_id)) == (2, None)


async def test_an_audited_action_must_state_its_entry(backend: Backend) -> None:
    store = backend.store
    tenant_id = await _tenant_with_entries(store, 1)
    scope = scope_for_operator(tenant_id)
    with pytest.raises(RuntimeError, match="stated no audit entry"):
        async with store.audit.action("forgetful", scope) as act:
            await act.tx.execute("UPDATE agents SET name = name WHERE tenant_id = $1", tenant_id)
    agent = await store.agents.create(scope, "bot", actor=ADMIN)
    await store.agents.kill(scope, agent.id, actor=ADMIN)
    # Revoking what is already revoked changes nothing and records nothing.
    token = await store.agents.issue_token(
        scope,
        (await store.agents.enable(scope, agent.id, actor=ADMIN)).id,
        token_hash="0" * 64,
        prefix="bay_0000",
        last_four="0000",
        scopes=(),
        expires_at=None,
        actor=ADMIN,
    )
    assert await store.agents.revoke_token(scope, agent.id, token.id, actor=ADMIN)
    assert not await store.agents.revoke_token(scope, agent.id, token.id, actor=ADMIN)
    actions = [e.action async for e in store.audit.entries(scope)]
    assert actions[1:] == [
        "agent.create",
        "agent.kill",
        "agent.enable",
        "agent.token_create",
        "agent.token_revoke",
    ]
    assert await store.audit.verify(scope) == (6, None)


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(backend: Backend) -> None:
    store = backend.store
    tenant_id = await _tenant_with_entries(store, 1)
    scope = scope_for_operator(tenant_id)
    a = await store.users.create(scope, "a@example.com", "x", "owner")
    b = await store.users.create(scope, "b@example.com", "x", "owner")
    results = await asyncio.gather(
        store.users.set_role(scope, a.id, "admin", actor=Actor("user", b.id)),
        store.users.set_role(scope, b.id, "admin", actor=Actor("user", a.id)),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "str"]
    roles = sorted(u.role for u in await store.users.for_tenant(scope))
    assert roles == ["admin", "owner"]
    assert (await store.audit.verify(scope))[1] is None
