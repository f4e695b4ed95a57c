"""Users of a tenant. Every method is tenant-scoped."""

from __future__ import annotations

from protocol.errors import ConflictError, NotFoundError
from storage.audit import AuditLog
from storage.auditchain import OPERATOR, Actor, AuditRecord
from storage.engine import Engine, Row, Tx
from storage.ids import new_id, now_ms
from storage.models import Role, User
from storage.scope import TenantScope
from storage.sessions import revoke_user_sessions


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
    def __init__(self, engine: Engine, audit: AuditLog | None = None) -> None:
        self._engine = engine
        self._audit = audit or AuditLog(engine)

    async def create(
        self,
        scope: TenantScope,
        email: str,
        password_hash: str,
        role: Role,
        *,
        actor: Actor = OPERATOR,
    ) -> User:
        """Add a user to the tenant (a privileged action: audited)."""
        user = User(scope.tenant_id, new_id(), email, password_hash, role, False, now_ms())
        async with self._audit.action("user_create", scope) as act:
            tx = act.tx
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
            act.state(AuditRecord(actor, "user.create", f"user:{user.id}", detail={"role": role}))
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

    async def for_tenant(self, scope: TenantScope) -> list[User]:
        async with self._engine.transaction("user_list", tenant_id=scope.tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT * FROM users WHERE tenant_id = $1 ORDER BY email", scope.tenant_id
            )
        return [_user(row) for row in scope.check_all(rows)]

    async def set_role(self, scope: TenantScope, user_id: str, role: Role, *, actor: Actor) -> Role:
        """Change a user's role; return the previous one. A tenant keeps at least one enabled
        owner (ConflictError)."""
        async with self._audit.action("user_set_role", scope) as act:
            tx = act.tx
            # Read under the chain head that `action` took: this tenant's privileged actions
            # are serialised, so the owner count below cannot race another demotion.
            user = await self._get(tx, scope, user_id)
            act.state(
                AuditRecord(
                    actor,
                    "user.role_change",
                    f"user:{user_id}",
                    detail={"from": user.role, "to": role},
                )
            )
            if user.role == "owner" and role != "owner":
                await self._keep_an_owner(tx, scope, user_id)
            await tx.execute(
                "UPDATE users SET role = $3 WHERE tenant_id = $1 AND id = $2",
                scope.tenant_id,
                user_id,
                role,
            )
        return user.role

    async def set_disabled(
        self, scope: TenantScope, user_id: str, disabled: bool, *, actor: Actor
    ) -> list[str]:
        """Disable (revoking every session) or re-enable a user; return the sessions
        revoked."""
        async with self._audit.action("user_set_disabled", scope) as act:
            tx = act.tx
            user = await self._get(tx, scope, user_id)
            revoked: list[str] = []
            if disabled:
                revoked = await revoke_user_sessions(tx, scope.tenant_id, user_id)
            act.state(
                AuditRecord(
                    actor,
                    "user.disable" if disabled else "user.enable",
                    f"user:{user_id}",
                    detail={"sessions_revoked": revoked} if disabled else {},
                )
            )
            if disabled and user.role == "owner":
                await self._keep_an_owner(tx, scope, user_id)
            await tx.execute(
                "UPDATE users SET disabled = $3 WHERE tenant_id = $1 AND id = $2",
                scope.tenant_id,
                user_id,
                disabled,
            )
        return revoked

    async def change_password(
        self,
        scope: TenantScope,
        user_id: str,
        password_hash: str,
        *,
        keep_session: str | None,
        actor: Actor,
    ) -> list[str]:
        """Set a new password hash and revoke every other session of the user."""
        async with self._audit.action("user_change_password", scope) as act:
            tx = act.tx
            await self._get(tx, scope, user_id)
            await tx.execute(
                "UPDATE users SET password_hash = $3 WHERE tenant_id = $1 AND id = $2",
                scope.tenant_id,
                user_id,
                password_hash,
            )
            revoked = await revoke_user_sessions(tx, scope.tenant_id, user_id, keep=keep_session)
            act.state(
                AuditRecord(
                    actor,
                    "user.password_change",
                    f"user:{user_id}",
                    detail={"sessions_revoked": revoked},
                )
            )
        return revoked

    async def _get(self, tx: Tx, scope: TenantScope, user_id: str) -> User:
        row = await tx.fetchrow(
            "SELECT * FROM users WHERE tenant_id = $1 AND id = $2", scope.tenant_id, user_id
        )
        if row is None:
            raise NotFoundError("no such user")
        return _user(scope.check(row))

    async def _keep_an_owner(self, tx: Tx, scope: TenantScope, leaving: str) -> None:
        others = await tx.fetchval(
            "SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND role = 'owner'"
            " AND NOT disabled AND id <> $2",
            scope.tenant_id,
            leaving,
        )
        if not others:
            raise ConflictError("a tenant needs at least one enabled owner")
