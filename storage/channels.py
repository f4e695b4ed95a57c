"""Channels and their members. Every method is tenant-scoped; a channel of another tenant
is indistinguishable from one that does not exist."""

from __future__ import annotations

from protocol.errors import ConflictError, NotFoundError
from storage.audit import AuditLog
from storage.auditchain import OPERATOR, Actor, AuditRecord
from storage.engine import Engine, Row
from storage.ids import new_id, now_ms
from storage.models import Channel
from storage.scope import TenantScope


def _channel(row: Row) -> Channel:
    return Channel(
        row["tenant_id"],
        row["id"],
        row["name"],
        bool(row["private"]),
        row["created_by"],
        int(row["created_at"]),
    )


class Channels:
    def __init__(self, engine: Engine, audit: AuditLog | None = None) -> None:
        self._engine = engine
        self._audit = audit or AuditLog(engine)

    async def create(
        self, scope: TenantScope, name: str, *, private: bool, created_by: str
    ) -> Channel:
        channel = Channel(scope.tenant_id, new_id(), name, private, created_by, now_ms())
        async with self._engine.transaction(
            "channel_create", tenant_id=scope.tenant_id, write=True
        ) as tx:
            taken = await tx.fetchval(
                "SELECT 1 FROM channels WHERE tenant_id = $1 AND name = $2", scope.tenant_id, name
            )
            if taken:
                raise ConflictError("a channel with this name exists")
            await tx.execute(
                "INSERT INTO channels (tenant_id, id, name, private, created_by, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                channel.tenant_id,
                channel.id,
                channel.name,
                channel.private,
                channel.created_by,
                channel.created_at,
            )
            # The creator of a private channel is its first member.
            if private:
                await tx.execute(
                    "INSERT INTO channel_members (tenant_id, channel_id, user_id, added_at)"
                    " VALUES ($1, $2, $3, $4)",
                    scope.tenant_id,
                    channel.id,
                    created_by,
                    channel.created_at,
                )
        return channel

    async def by_name(self, scope: TenantScope, name: str) -> Channel:
        async with self._engine.transaction("channel_by_name", tenant_id=scope.tenant_id) as tx:
            row = await tx.fetchrow(
                "SELECT * FROM channels WHERE tenant_id = $1 AND name = $2", scope.tenant_id, name
            )
        if row is None:
            raise NotFoundError("no such channel")
        return _channel(scope.check(row))

    async def visible_to(self, scope: TenantScope, user_id: str) -> list[Channel]:
        """Public channels and the private channels ``user_id`` is a member of."""
        async with self._engine.transaction("channel_list", tenant_id=scope.tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT c.* FROM channels c WHERE c.tenant_id = $1 AND (NOT c.private OR"
                " EXISTS (SELECT 1 FROM channel_members m WHERE m.tenant_id = $1"
                " AND m.channel_id = c.id AND m.user_id = $2)) ORDER BY c.name",
                scope.tenant_id,
                user_id,
            )
        return [_channel(row) for row in scope.check_all(rows)]

    async def add_member(
        self, scope: TenantScope, channel_id: str, user_id: str, *, actor: Actor = OPERATOR
    ) -> bool:
        """Add a member (a permission change: audited); False if they already were one."""
        async with self._audit.action("channel_add_member", scope) as act:
            tx = act.tx
            present = await tx.fetchval(
                "SELECT 1 FROM channel_members WHERE tenant_id = $1 AND channel_id = $2"
                " AND user_id = $3",
                scope.tenant_id,
                channel_id,
                user_id,
            )
            if present:
                act.nothing_changed()
                return False
            await tx.execute(
                "INSERT INTO channel_members (tenant_id, channel_id, user_id, added_at)"
                " VALUES ($1, $2, $3, $4)",
                scope.tenant_id,
                channel_id,
                user_id,
                now_ms(),
            )
            act.state(
                AuditRecord(
                    actor,
                    "channel.member_add",
                    f"channel:{channel_id}",
                    detail={"user_id": user_id},
                )
            )
        return True

    async def is_member(self, scope: TenantScope, channel_id: str, user_id: str) -> bool:
        async with self._engine.transaction("channel_is_member", tenant_id=scope.tenant_id) as tx:
            return bool(
                await tx.fetchval(
                    "SELECT 1 FROM channel_members WHERE tenant_id = $1 AND channel_id = $2"
                    " AND user_id = $3",
                    scope.tenant_id,
                    channel_id,
                    user_id,
                )
            )
