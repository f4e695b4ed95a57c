"""Sessions and their refresh tokens. A session is one refresh-token family.

Rotation is one transaction that marks the presented token used *only if it was unused*:
of many parallel refreshes with one token, exactly one wins. Presenting a token that was
already used revokes the whole session (a stolen token was replayed).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.codes import ErrorCode
from protocol.errors import AuthError, NotFoundError
from storage.audit import AuditLog, take_head, write_entry
from storage.auditchain import OPERATOR, Actor, AuditRecord
from storage.engine import Engine, Row, Tx
from storage.ids import new_id, now_ms
from storage.models import Role, Session
from storage.scope import TenantScope


def _session(row: Row) -> Session:
    revoked = row["revoked_at"]
    return Session(
        row["tenant_id"],
        row["id"],
        row["user_id"],
        int(row["created_at"]),
        int(row["last_used_at"]),
        int(row["expires_at"]),
        None if revoked is None else int(revoked),
        row["user_agent"],
        row["ip"],
    )


@dataclass(frozen=True, slots=True)
class Rotation:
    session: Session
    reused: bool  # True: the token had been used before; the session is now revoked


@dataclass(frozen=True, slots=True)
class SessionState:
    """What authentication needs to know about a session and its user, read in one query."""

    session: Session
    role: Role
    user_disabled: bool

    def live(self, now: int) -> bool:
        s = self.session
        return s.revoked_at is None and s.expires_at > now and not self.user_disabled


async def revoke_user_sessions(
    tx: Tx, tenant_id: str, user_id: str, *, keep: str | None = None
) -> list[str]:
    """Revoke every live session of a user (but ``keep``) inside ``tx``; return their ids."""
    rows = await tx.fetch(
        "UPDATE sessions SET revoked_at = $4 WHERE tenant_id = $1 AND user_id = $2"
        " AND id <> $3 AND revoked_at IS NULL RETURNING id",
        tenant_id,
        user_id,
        keep or "",
        now_ms(),
    )
    return sorted(row["id"] for row in rows)


class Sessions:
    def __init__(self, engine: Engine, audit: AuditLog | None = None) -> None:
        self._engine = engine
        self._audit = audit or AuditLog(engine)

    async def create(
        self,
        scope: TenantScope,
        user_id: str,
        token_hash: str,
        *,
        lifetime_ms: int,
        user_agent: str,
        ip: str,
    ) -> Session:
        now = now_ms()
        session = Session(
            scope.tenant_id, new_id(), user_id, now, now, now + lifetime_ms, None, user_agent, ip
        )
        async with self._engine.transaction(
            "session_create", tenant_id=scope.tenant_id, write=True
        ) as tx:
            await tx.execute(
                "INSERT INTO sessions (tenant_id, id, user_id, created_at, last_used_at,"
                " expires_at, revoked_at, user_agent, ip)"
                " VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8)",
                session.tenant_id,
                session.id,
                session.user_id,
                session.created_at,
                session.last_used_at,
                session.expires_at,
                session.user_agent,
                session.ip,
            )
            await tx.execute(
                "INSERT INTO refresh_tokens (tenant_id, token_hash, session_id, created_at)"
                " VALUES ($1, $2, $3, $4)",
                scope.tenant_id,
                token_hash,
                session.id,
                now,
            )
        return session

    async def rotate(
        self, scope: TenantScope, old_hash: str, new_hash: str, *, ip: str = ""
    ) -> Rotation:
        """Exchange an unused refresh token for a new one in the same session. A reused
        token revokes the session and writes an audit entry (``ip``: who presented it)."""
        now = now_ms()
        async with self._engine.transaction(
            "session_rotate", tenant_id=scope.tenant_id, write=True
        ) as tx:
            won = await tx.fetchrow(
                "UPDATE refresh_tokens SET used_at = $3 WHERE tenant_id = $1"
                " AND token_hash = $2 AND used_at IS NULL RETURNING tenant_id, session_id",
                scope.tenant_id,
                old_hash,
                now,
            )
            if won is None:
                row = await tx.fetchrow(
                    "SELECT tenant_id, session_id FROM refresh_tokens"
                    " WHERE tenant_id = $1 AND token_hash = $2",
                    scope.tenant_id,
                    old_hash,
                )
                if row is None:
                    raise AuthError("invalid refresh token")
                session_id = scope.check(row)["session_id"]
                # The chain head first, as in every audited action (no lock-order cycles).
                head = await take_head(tx, scope.tenant_id)
                await tx.execute(
                    "UPDATE sessions SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2"
                    " AND revoked_at IS NULL",
                    scope.tenant_id,
                    session_id,
                    now,
                )
                await write_entry(
                    tx,
                    scope.tenant_id,
                    head,
                    AuditRecord(
                        Actor("system", "refresh-reuse", ip),
                        "session.revoke_reused",
                        f"session:{session_id}",
                    ),
                )
                srow = await tx.fetchrow(
                    "SELECT * FROM sessions WHERE tenant_id = $1 AND id = $2",
                    scope.tenant_id,
                    session_id,
                )
                assert srow is not None
                return Rotation(_session(scope.check(srow)), reused=True)
            session_id = scope.check(won)["session_id"]
            srow = await tx.fetchrow(
                "SELECT * FROM sessions WHERE tenant_id = $1 AND id = $2",
                scope.tenant_id,
                session_id,
            )
            if srow is None:
                raise AuthError("invalid refresh token")
            session = _session(scope.check(srow))
            if session.revoked_at is not None:
                raise AuthError("session revoked", code=ErrorCode.REVOKED)
            if session.expires_at <= now:
                raise AuthError("session expired", code=ErrorCode.TOKEN_EXPIRED)
            await tx.execute(
                "INSERT INTO refresh_tokens (tenant_id, token_hash, session_id, created_at)"
                " VALUES ($1, $2, $3, $4)",
                scope.tenant_id,
                new_hash,
                session_id,
                now,
            )
            await tx.execute(
                "UPDATE sessions SET last_used_at = $3 WHERE tenant_id = $1 AND id = $2",
                scope.tenant_id,
                session_id,
                now,
            )
        return Rotation(session, reused=False)

    async def get(self, scope: TenantScope, session_id: str) -> Session:
        async with self._engine.transaction("session_get", tenant_id=scope.tenant_id) as tx:
            row = await tx.fetchrow(
                "SELECT * FROM sessions WHERE tenant_id = $1 AND id = $2",
                scope.tenant_id,
                session_id,
            )
        if row is None:
            raise NotFoundError("no such session")
        return _session(scope.check(row))

    async def for_user(self, scope: TenantScope, user_id: str) -> list[Session]:
        """The user's live sessions (not revoked, not expired), newest first."""
        async with self._engine.transaction("session_list", tenant_id=scope.tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT * FROM sessions WHERE tenant_id = $1 AND user_id = $2"
                " AND revoked_at IS NULL AND expires_at > $3 ORDER BY created_at DESC",
                scope.tenant_id,
                user_id,
                now_ms(),
            )
        return [_session(row) for row in scope.check_all(rows)]

    async def state(self, scope: TenantScope, session_id: str) -> SessionState | None:
        async with self._engine.transaction("session_state", tenant_id=scope.tenant_id) as tx:
            row = await tx.fetchrow(
                "SELECT s.*, u.role AS user_role, u.disabled AS user_disabled FROM sessions s"
                " JOIN users u ON u.tenant_id = s.tenant_id AND u.id = s.user_id"
                " WHERE s.tenant_id = $1 AND s.id = $2",
                scope.tenant_id,
                session_id,
            )
        if row is None:
            return None
        return SessionState(
            _session(scope.check(row)), row["user_role"], bool(row["user_disabled"])
        )

    async def revoke(
        self,
        scope: TenantScope,
        session_id: str,
        *,
        user_id: str | None = None,
        actor: Actor = OPERATOR,
        action: str = "session.revoke",
    ) -> bool:
        """Revoke a live session (of ``user_id``, when given). False when there is no such
        live session: missing, another user's or tenant's, or already revoked."""
        async with self._audit.action("session_revoke", scope) as act:
            tx = act.tx
            row = await tx.fetchrow(
                "UPDATE sessions SET revoked_at = $4 WHERE tenant_id = $1 AND id = $2"
                " AND user_id = COALESCE($3, user_id) AND revoked_at IS NULL"
                " RETURNING tenant_id, id",
                scope.tenant_id,
                session_id,
                user_id,
                now_ms(),
            )
            if row is None:
                act.nothing_changed()
                return False
            scope.check(row)
            act.state(AuditRecord(actor, action, f"session:{session_id}"))
        return True

    async def revoke_others(
        self, scope: TenantScope, user_id: str, *, keep: str, actor: Actor
    ) -> list[str]:
        """Revoke every live session of ``user_id`` except ``keep``; return their ids."""
        async with self._audit.action("session_revoke_others", scope) as act:
            tx = act.tx
            revoked = await revoke_user_sessions(tx, scope.tenant_id, user_id, keep=keep)
            act.state(
                AuditRecord(
                    actor,
                    "session.revoke_others",
                    f"user:{user_id}",
                    detail={"kept": keep, "revoked": revoked},
                )
            )
        return revoked
