"""People's accounts: their sessions and passwords, and what admins may change about them
(roles, disabling).

Every change that ends a session publishes a control event after it commits, so each node
closes the affected WebSocket connections and drops its cached credential state.

Role rules: owners and admins may change roles and disable accounts; only an owner may make
someone an owner or change or disable an owner; a tenant always keeps an enabled owner.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.codes import ErrorCode
from protocol.errors import ConflictError, NotFoundError, ProtocolError
from server.audit import actor_of, refuse, require_admin, require_user
from server.auth.authority import scope_for
from server.auth.credentials import PRINCIPAL_CHANGED, PRINCIPAL_DISABLED, SESSION_REVOKED
from server.auth.passwords import PasswordPolicyError, Passwords
from server.auth.principal import Principal
from server.broker.base import Broker, ControlEvent
from storage.models import Role, Session, User
from storage.store import Store


class Accounts:
    def __init__(self, store: Store, broker: Broker, passwords: Passwords) -> None:
        self.store = store
        self.broker = broker
        self.passwords = passwords

    async def _revoked(self, tenant_id: str, session_ids: Iterable[str]) -> None:
        for session_id in session_ids:
            await self.broker.publish_control(ControlEvent(SESSION_REVOKED, tenant_id, session_id))

    # -- one's own account ------------------------------------------------------------

    async def sessions(self, principal: Principal) -> list[Session]:
        require_user(principal)
        return await self.store.sessions.for_user(scope_for(principal), principal.id)

    async def revoke_session(self, principal: Principal, session_id: str, ip: str) -> None:
        """Revoke one of the caller's live sessions (any other id is not found)."""
        require_user(principal)
        revoked = await self.store.sessions.revoke(
            scope_for(principal),
            session_id,
            user_id=principal.id,
            actor=actor_of(principal, ip),
        )
        if not revoked:
            raise NotFoundError("no such session")
        await self._revoked(principal.tenant_id, [session_id])

    async def revoke_others(self, principal: Principal, ip: str) -> list[str]:
        require_user(principal)
        revoked = await self.store.sessions.revoke_others(
            scope_for(principal),
            principal.id,
            keep=principal.session_id,
            actor=actor_of(principal, ip),
        )
        await self._revoked(principal.tenant_id, revoked)
        return revoked

    async def logout(self, principal: Principal, ip: str) -> None:
        require_user(principal)
        await self.store.sessions.revoke(
            scope_for(principal),
            principal.session_id,
            user_id=principal.id,
            actor=actor_of(principal, ip),
            action="session.logout",
        )
        await self._revoked(principal.tenant_id, [principal.session_id])

    async def change_password(
        self, principal: Principal, current: str, new: str, ip: str
    ) -> list[str]:
        """Check the current password, store the new one, and end every other session."""
        require_user(principal)
        scope = scope_for(principal)
        user = await self.store.users.get(scope, principal.id)
        if not await self.passwords.verify(user.password_hash, current):
            await refuse(
                self.store,
                principal,
                ip,
                "user.password_change",
                f"user:{principal.id}",
                "the current password is wrong",
            )
        try:
            self.passwords.check_policy(new)
        except PasswordPolicyError as exc:
            raise ProtocolError(str(exc), code=ErrorCode.INVALID_FIELD) from None
        revoked = await self.store.users.change_password(
            scope,
            principal.id,
            await self.passwords.hash(new),
            keep_session=principal.session_id,
            actor=actor_of(principal, ip),
        )
        await self._revoked(principal.tenant_id, revoked)
        return revoked

    # -- administration ---------------------------------------------------------------

    async def users(self, principal: Principal, ip: str) -> list[User]:
        await require_admin(self.store, principal, ip, "user.list", f"tenant:{principal.tenant_id}")
        return await self.store.users.for_tenant(scope_for(principal))

    async def _target(self, principal: Principal, ip: str, user_id: str, action: str) -> User:
        await require_admin(self.store, principal, ip, action, f"user:{user_id}")
        return await self.store.users.get(scope_for(principal), user_id)

    async def set_role(self, principal: Principal, user_id: str, role: Role, ip: str) -> User:
        """Change a user's role; return the user as it now is."""
        action = "user.role_change"
        target = await self._target(principal, ip, user_id, action)
        if (target.role == "owner" or role == "owner") and principal.role != "owner":
            await refuse(
                self.store, principal, ip, action, f"user:{user_id}", "only owners manage owners"
            )
        await self.store.users.set_role(
            scope_for(principal), user_id, role, actor=actor_of(principal, ip)
        )
        await self.broker.publish_control(
            ControlEvent(PRINCIPAL_CHANGED, principal.tenant_id, user_id)
        )
        return await self.store.users.get(scope_for(principal), user_id)

    async def set_disabled(
        self, principal: Principal, user_id: str, disabled: bool, ip: str
    ) -> list[str]:
        """Disable an account (ending all its sessions) or enable it again."""
        action = "user.disable" if disabled else "user.enable"
        target = await self._target(principal, ip, user_id, action)
        if target.role == "owner" and principal.role != "owner":
            await refuse(
                self.store, principal, ip, action, f"user:{user_id}", "only owners manage owners"
            )
        if disabled and user_id == principal.id:
            raise ConflictError("you cannot disable your own account")
        revoked = await self.store.users.set_disabled(
            scope_for(principal), user_id, disabled, actor=actor_of(principal, ip)
        )
        if disabled:
            await self.broker.publish_control(
                ControlEvent(PRINCIPAL_DISABLED, principal.tenant_id, user_id)
            )
        else:
            await self.broker.publish_control(
                ControlEvent(PRINCIPAL_CHANGED, principal.tenant_id, user_id)
            )
        return revoked
