"""Logins, refreshes and access-token checks, the one path from credentials to a Principal."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from protocol.codes import ErrorCode
from protocol.errors import AuthError, NotFoundError
from server.auth.authority import scope_for_login
from server.auth.passwords import Passwords
from server.auth.principal import Principal
from server.auth.tokens import (
    AccessTokens,
    new_refresh_token,
    refresh_token_tenant,
    token_digest,
)
from server.broker.base import Broker, ControlEvent
from storage.models import User
from storage.store import Store

_log = logging.getLogger("baychat.auth")
INVALID_CREDENTIALS = "invalid tenant, email or password"


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret


class AuthService:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        passwords: Passwords,
        access: AccessTokens,
        *,
        refresh_ttl_s: int,
    ) -> None:
        self.store = store
        self.broker = broker
        self.passwords = passwords
        self.access = access
        self.refresh_ttl_s = refresh_ttl_s

    async def login(
        self, tenant_slug: str, email: str, password: str, *, user_agent: str = "", ip: str = ""
    ) -> TokenPair:
        user: User | None = None
        try:
            tenant = await self.store.tenants.by_slug(tenant_slug)
            user = await self.store.users.by_email(scope_for_login(tenant.id), email.lower())
        except NotFoundError:
            user = None
        # Same work and the same answer for an unknown tenant, user or a wrong password.
        ok = await self.passwords.verify(user.password_hash if user else None, password)
        if not ok or user is None or user.disabled:
            _log.info("login failed", extra={"event": "auth.login_failed"})
            raise AuthError(INVALID_CREDENTIALS)
        scope = scope_for_login(user.tenant_id)
        if self.passwords.needs_rehash(user.password_hash):
            await self.store.users.set_password_hash(
                scope, user.id, await self.passwords.hash(password)
            )
        refresh = new_refresh_token(user.tenant_id)
        session = await self.store.sessions.create(
            scope,
            user.id,
            token_digest(refresh),
            lifetime_ms=self.refresh_ttl_s * 1000,
            user_agent=user_agent[:256],
            ip=ip[:64],
        )
        access = self.access.issue(
            tenant_id=user.tenant_id, subject=user.id, session_id=session.id, role=user.role
        )
        _log.info(
            "login succeeded",
            extra={"event": "auth.login", "tenant_id": user.tenant_id, "user_id": user.id},
        )
        return TokenPair(access.token, refresh, self.access.ttl_s)

    async def refresh(self, refresh_token: str) -> TokenPair:
        tenant_id = refresh_token_tenant(refresh_token)
        scope = scope_for_login(tenant_id)
        new_refresh = new_refresh_token(tenant_id)
        rotation = await self.store.sessions.rotate(
            scope, token_digest(refresh_token), token_digest(new_refresh)
        )
        session = rotation.session
        if rotation.reused:
            _log.warning(
                "refresh token reused; session revoked",
                extra={"event": "auth.refresh_reuse", "tenant_id": tenant_id},
            )
            await self.broker.publish_control(
                ControlEvent("session_revoked", tenant_id, session.id)
            )
            raise AuthError("refresh token already used; session revoked", code=ErrorCode.REVOKED)
        user = await self.store.users.get(scope, session.user_id)
        if user.disabled:
            raise AuthError(INVALID_CREDENTIALS)
        access = self.access.issue(
            tenant_id=tenant_id, subject=user.id, session_id=session.id, role=user.role
        )
        return TokenPair(access.token, new_refresh, self.access.ttl_s)

    def authenticate(self, token: str) -> Principal:
        """Verify an access token. Raises ``AuthError`` (unauthorized or token_expired)."""
        return self.access.verify(token)
