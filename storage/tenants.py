"""Tenants: the directory. Looking one up by slug is how a login finds its scope."""

from __future__ import annotations

from protocol.errors import ConflictError, NotFoundError
from storage.audit import append_entry
from storage.auditchain import OPERATOR, Actor, AuditRecord
from storage.engine import Engine, Row
from storage.ids import new_id, now_ms
from storage.keys import TenantKeyStore
from storage.models import Plan, Tenant


def _tenant(row: Row) -> Tenant:
    return Tenant(row["id"], row["slug"], row["plan"], int(row["created_at"]))


class Tenants:
    def __init__(self, engine: Engine, keystore: TenantKeyStore) -> None:
        self._engine = engine
        self._keystore = keystore

    async def create(self, slug: str, plan: Plan = "free", *, actor: Actor = OPERATOR) -> Tenant:
        """Create a tenant; its audit chain starts with this action."""
        tenant = Tenant(new_id(), slug, plan, now_ms())
        async with self._engine.transaction("tenant_create", write=True) as tx:
            if await tx.fetchval("SELECT 1 FROM tenants WHERE slug = $1", slug):
                raise ConflictError("a tenant with this slug exists")
            # Key material first: a tenant row never exists without its key.
            self._keystore.create(tenant.id)
            await tx.execute(
                "INSERT INTO tenants (id, slug, plan, created_at) VALUES ($1, $2, $3, $4)",
                tenant.id,
                tenant.slug,
                tenant.plan,
                tenant.created_at,
            )
            await tx.set_tenant(tenant.id)
            await append_entry(
                tx,
                tenant.id,
                AuditRecord(
                    actor,
                    "tenant.create",
                    f"tenant:{tenant.id}",
                    detail={"slug": slug, "plan": plan},
                ),
            )
        return tenant

    async def by_slug(self, slug: str) -> Tenant:
        async with self._engine.transaction("tenant_by_slug") as tx:
            row = await tx.fetchrow("SELECT * FROM tenants WHERE slug = $1", slug)
        if row is None:
            raise NotFoundError("no such tenant")
        return _tenant(row)

    async def get(self, tenant_id: str) -> Tenant:
        async with self._engine.transaction("tenant_get") as tx:
            row = await tx.fetchrow("SELECT * FROM tenants WHERE id = $1", tenant_id)
        if row is None:
            raise NotFoundError("no such tenant")
        return _tenant(row)

    async def all(self) -> list[Tenant]:
        async with self._engine.transaction("tenant_list") as tx:
            rows = await tx.fetch("SELECT * FROM tenants ORDER BY slug")
        return [_tenant(row) for row in rows]
