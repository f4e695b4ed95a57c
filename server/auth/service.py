"""Logins, refreshes and access-token checks, the one path from credentials to a Principal."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from protocol.codes import ErrorCode
from protocol.errors import AuthError, NotFoundError
from server.auth.agent_tokens import check_agent_token, is_agent_token
from server.auth.authority import scope_for_login
from server.auth.credentials import SESSION_REVOKED, Credential, CredentialCache
from server.auth.passwords import Passwords
from server.auth.principal import NEVER, Principal
from server.auth.tokens import (
    AccessTokens,
    new_refresh_token,
    refresh_token_tenant,
    token_digest,
)
from server.broker.base import Broker, ControlEvent
from storage.agents import TokenState
from storage.models import User
from storage.sessions import SessionState
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
        credentials: CredentialCache | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.passwords = passwords
        self.access = access
        self.refresh_ttl_s = refresh_ttl_s
        self.credentials = credentials if credentials is not None else CredentialCache(0)

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

    async def refresh(self, refresh_token: str, *, ip: str = "") -> TokenPair:
        tenant_id = refresh_token_tenant(refresh_token)
        scope = scope_for_login(tenant_id)
        new_refresh = new_refresh_token(tenant_id)
        rotation = await self.store.sessions.rotate(
            scope, token_digest(refresh_token), token_digest(new_refresh), ip=ip[:64]
        )
        session = rotation.session
        if rotation.reused:
            _log.warning(
                "refresh token reused; session revoked",
                extra={"event": "auth.refresh_reuse", "tenant_id": tenant_id},
            )
            await self.broker.publish_control(ControlEvent(SESSION_REVOKED, tenant_id, session.id))
            raise AuthError("refresh token already used; session revoked", code=ErrorCode.REVOKED)
        user = await self.store.users.get(scope, session.user_id)
        if user.disabled:
            raise AuthError(INVALID_CREDENTIALS)
        access = self.access.issue(
            tenant_id=tenant_id, subject=user.id, session_id=session.id, role=user.role
        )
        return TokenPair(access.token, new_refresh, self.access.ttl_s)

    async def authenticate(self, token: str) -> Principal:
        """The principal behind an access token (JWT) or an agent token (``bay_``), checked
        against the live state of its session or token. Raises ``AuthError``
        (unauthorized, token_expired or revoked)."""
        if is_agent_token(token):
            return await self._agent(token)
        return await self.current(self.access.verify(token))

    async def current(self, principal: Principal) -> Principal:
        """Re-check a principal authenticated earlier (a live connection, before each
        frame): the same principal with its current role or scopes, or ``AuthError``."""
        credential = self.credentials.get((principal.tenant_id, principal.session_id))
        if credential is None:
            credential = await self._load(principal.tenant_id, principal.kind, principal.session_id)
        if credential is None or credential.principal_id != principal.id:
            raise AuthError("credential not accepted")
        self._check_live(credential)
        if credential.role == principal.role and credential.scopes == principal.scopes:
            return principal
        return replace(principal, role=credential.role, scopes=credential.scopes)

    async def _agent(self, token: str) -> Principal:
        check_agent_token(token)  # a mistyped token never reaches the database
        digest = token_digest(token)
        key = self.credentials.token_key(digest)
        credential = self.credentials.get(key) if key is not None else None
        if credential is None:
            epoch = self.credentials.epoch
            tenant_id = await self.store.agents.tenant_of(digest)
            state = (
                await self.store.agents.state_by_hash(scope_for_login(tenant_id), digest)
                if tenant_id is not None
                else None
            )
            if state is None:
                raise AuthError("token not accepted")
            credential = _agent_credential(state)
            key = (credential.tenant_id, credential.credential_id)
            self.credentials.remember_token(digest, key)
            self.credentials.put(key, credential, epoch)
        self._check_live(credential)
        expires_ms = credential.expires_at_ms
        return Principal(
            tenant_id=credential.tenant_id,
            id=credential.principal_id,
            kind="agent",
            role=credential.role,
            session_id=credential.credential_id,
            expires_at=NEVER if expires_ms is None else expires_ms // 1000,
            scopes=credential.scopes,
        )

    async def _load(self, tenant_id: str, kind: str, credential_id: str) -> Credential | None:
        epoch = self.credentials.epoch
        scope = scope_for_login(tenant_id)
        credential: Credential | None = None
        if kind == "user":
            session = await self.store.sessions.state(scope, credential_id)
            credential = None if session is None else _session_credential(session)
        else:
            token = await self.store.agents.state(scope, credential_id)
            credential = None if token is None else _agent_credential(token)
        if credential is not None:
            self.credentials.put((tenant_id, credential_id), credential, epoch)
        return credential

    @staticmethod
    def _check_live(credential: Credential) -> None:
        if credential.refused is not None:
            raise AuthError("credential revoked", code=credential.refused)
        expires = credential.expires_at_ms
        if expires is not None and expires <= time.time() * 1000:
            raise AuthError("credential expired", code=ErrorCode.TOKEN_EXPIRED)


def _session_credential(state: SessionState) -> Credential:
    session = state.session
    refused = None
    if session.revoked_at is not None or state.user_disabled:
        refused = ErrorCode.REVOKED
    return Credential(
        session.tenant_id,
        session.user_id,
        session.id,
        state.role,
        None,
        session.expires_at,
        refused,
    )


def _agent_credential(state: TokenState) -> Credential:
    token = state.token
    refused = None
    if token.revoked_at is not None or state.agent_disabled:
        refused = ErrorCode.REVOKED
    return Credential(
        token.tenant_id, token.agent_id, token.id, "member", token.scopes, token.expires_at, refused
    )
