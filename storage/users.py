"""Users of a tenant. Every method is tenant-scoped."""

from __future__ import annotations

from protocol.errors import ConflictError, NotFoundError
from storage.engine import Engine, Row
from storage.ids import new_id, now_ms
from storage.models import Role, User
from storage.scope import TenantScope


def _user(row: Row) -> User:
    return User(
        row["tenant_id"],
        row["id"],
        row["email"],
        row["password_hash"],
        row["role"],
        bool(row["disabled"]),
        int(row["created_at"]),
    )


class Users:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def create(self, scope: TenantScope, email: str, password_hash: str, role: Role) -> User:
        user = User(scope.tenant_id, new_id(), email, password_hash, role, False, now_ms())
        async with self._engine.transaction(
            "user_create", tenant_id=scope.tenant_id, write=True
        ) as tx:
            taken = await tx.fetchval(
                "SELECT 1 FROM users WHERE tenant_id = $1 AND email = $2", scope.tenant_id, email
            )
            if taken:
                raise ConflictError("a user with this email exists in this tenant")
            await tx.execute(
                "INSERT INTO users (tenant_id, id, email, password_hash, role, disabled,"
                " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                user.tenant_id,
                user.id,
                user.email,
                user.password_hash,
                user.role,
                user.disabled,
                user.created_at,
            )
        return user

    async def by_email(self, scope: TenantScope, email: str) -> User:
        async with self._engine.transaction("user_by_email", tenant_id=scope.tenant_id) as tx:
            row = await tx.fetchrow(
                "SELECT * FROM users WHERE tenant_id = $1 AND email = $2", scope.tenant_id, email
            )
        if row is None:
            raise NotFoundError("no such user")
        return _user(scope.check(row))

    async def get(self, scope: TenantScope, user_id: str) -> User:
        async with self._engine.transaction("user_get", tenant_id=scope.tenant_id) as tx:
            row = await tx.fetchrow(
                "SELECT * FROM users WHERE tenant_id = $1 AND id = $2", scope.tenant_id, user_id
            )
        if row is None:
            raise NotFoundError("no such user")
        return _user(scope.check(row))

    async def set_password_hash(self, scope: TenantScope, user_id: str, password_hash: str) -> None:
        async with self._engine.transaction(
            "user_set_password_hash", tenant_id=scope.tenant_id, write=True
        ) as tx:
            await tx.execute(
                "UPDATE users SET password_hash = $3 WHERE tenant_id = $1 AND id = $2",
                scope.tenant_id,
                user_id,
                password_hash,
            )
