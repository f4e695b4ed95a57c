"""Agents (bots of a tenant) and their API tokens. Every mutation is a privileged action and
writes its audit entry in the same transaction.

Only a token's SHA-256 digest is stored, with a display prefix and its last four
characters. ``token_directory`` maps a digest to its tenant so that a token can be looked
up before any tenant is known; it holds nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from protocol.errors import ConflictError, NotFoundError
from storage.audit import AuditLog
from storage.auditchain import Actor, AuditRecord
from storage.engine import Engine, Row, Tx
from storage.ids import new_id, now_ms
from storage.scope import TenantScope


@dataclass(frozen=True, slots=True)
class Grant:
    """Permission for ``actions`` on channels whose name matches ``channel`` (a name or an
    fnmatch pattern such as ``support-*``)."""

    channel: str
    actions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Agent:
    tenant_id: str
    id: str
    name: str
    created_by: str
    created_at: int
    disabled_at: int | None


@dataclass(frozen=True, slots=True)
class AgentToken:
    tenant_id: str
    id: str
    agent_id: str
    prefix: str
    last_four: str
    scopes: tuple[Grant, ...]
    created_by: str
    created_at: int
    expires_at: int | None  # unix milliseconds
    revoked_at: int | None


@dataclass(frozen=True, slots=True)
class TokenState:
    """What authentication needs to know about a token, read in one query."""

    token: AgentToken
    agent_disabled: bool


def _agent(row: Row) -> Agent:
    disabled = row["disabled_at"]
    return Agent(
        row["tenant_id"],
        row["id"],
        row["name"],
        row["created_by"],
        int(row["created_at"]),
        None if disabled is None else int(disabled),
    )


def _token(row: Row) -> AgentToken:
    scopes = tuple(Grant(g["channel"], tuple(g["actions"])) for g in json.loads(row["scopes"]))
    expires, revoked = row["expires_at"], row["revoked_at"]
    return AgentToken(
        row["tenant_id"],
        row["id"],
        row["agent_id"],
        row["prefix"],
        row["last_four"],
        scopes,
        row["created_by"],
        int(row["created_at"]),
        None if expires is None else int(expires),
        None if revoked is None else int(revoked),
    )


def _scopes_doc(scopes: tuple[Grant, ...]) -> list[dict[str, object]]:
    return [{"channel": g.channel, "actions": list(g.actions)} for g in scopes]


class Agents:
    def __init__(self, engine: Engine, audit: AuditLog) -> None:
        self._engine = engine
        self._audit = audit

    async def create(self, scope: TenantScope, name: str, *, actor: Actor) -> Agent:
        agent = Agent(scope.tenant_id, new_id(), name, actor.id, now_ms(), None)
        async with self._audit.action("agent_create", scope) as act:
            tx = act.tx
            taken = await tx.fetchval(
                "SELECT 1 FROM agents WHERE tenant_id = $1 AND name = $2", scope.tenant_id, name
            )
            if taken:
                raise ConflictError("an agent with this name exists")
            await tx.execute(
                "INSERT INTO agents (tenant_id, id, name, created_by, created_at, disabled_at)"
                " VALUES ($1, $2, $3, $4, $5, NULL)",
                agent.tenant_id,
                agent.id,
                agent.name,
                agent.created_by,
                agent.created_at,
            )
            act.state(
                AuditRecord(actor, "agent.create", f"agent:{agent.id}", detail={"name": name})
            )
        return agent

    async def for_tenant(self, scope: TenantScope) -> list[Agent]:
        async with self._engine.transaction("agent_list", tenant_id=scope.tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT * FROM agents WHERE tenant_id = $1 ORDER BY name", scope.tenant_id
            )
        return [_agent(row) for row in scope.check_all(rows)]

    async def get(self, scope: TenantScope, agent_id: str) -> Agent:
        async with self._engine.transaction("agent_get", tenant_id=scope.tenant_id) as tx:
            return await self._get(tx, scope, agent_id)

    async def _get(self, tx: Tx, scope: TenantScope, agent_id: str) -> Agent:
        row = await tx.fetchrow(
            "SELECT * FROM agents WHERE tenant_id = $1 AND id = $2", scope.tenant_id, agent_id
        )
        if row is None:
            raise NotFoundError("no such agent")
        return _agent(scope.check(row))

    async def issue_token(
        self,
        scope: TenantScope,
        agent_id: str,
        *,
        token_hash: str,
        prefix: str,
        last_four: str,
        scopes: tuple[Grant, ...],
        expires_at: int | None,
        actor: Actor,
    ) -> AgentToken:
        """Store a new token's digest for an enabled agent."""
        token = AgentToken(
            scope.tenant_id,
            new_id(),
            agent_id,
            prefix,
            last_four,
            scopes,
            actor.id,
            now_ms(),
            expires_at,
            None,
        )
        async with self._audit.action("agent_token_issue", scope) as act:
            tx = act.tx
            agent = await self._get(tx, scope, agent_id)
            if agent.disabled_at is not None:
                raise ConflictError("the agent is disabled; enable it first")
            await tx.execute(
                "INSERT INTO agent_tokens (tenant_id, id, agent_id, token_hash, prefix,"
                " last_four, scopes, created_by, created_at, expires_at, revoked_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)",
                token.tenant_id,
                token.id,
                token.agent_id,
                token_hash,
                token.prefix,
                token.last_four,
                json.dumps(_scopes_doc(scopes)),
                token.created_by,
                token.created_at,
                token.expires_at,
            )
            await tx.execute(
                "INSERT INTO token_directory (token_hash, tenant_id) VALUES ($1, $2)",
                token_hash,
                scope.tenant_id,
            )
            act.state(
                AuditRecord(
                    actor,
                    "agent.token_create",
                    f"agent_token:{token.id}",
                    detail={
                        "agent_id": agent_id,
                        "prefix": prefix,
                        "last_four": last_four,
                        "scopes": _scopes_doc(scopes),
                        "expires_at": expires_at,
                    },
                )
            )
        return token

    async def tokens(self, scope: TenantScope, agent_id: str) -> list[AgentToken]:
        async with self._engine.transaction("agent_tokens", tenant_id=scope.tenant_id) as tx:
            await self._get(tx, scope, agent_id)
            rows = await tx.fetch(
                "SELECT * FROM agent_tokens WHERE tenant_id = $1 AND agent_id = $2"
                " ORDER BY created_at",
                scope.tenant_id,
                agent_id,
            )
        return [_token(row) for row in scope.check_all(rows)]

    async def revoke_token(
        self, scope: TenantScope, agent_id: str, token_id: str, *, actor: Actor
    ) -> bool:
        """Revoke one token; False if it already was revoked."""
        async with self._audit.action("agent_token_revoke", scope) as act:
            tx = act.tx
            row = await tx.fetchrow(
                "SELECT tenant_id, revoked_at FROM agent_tokens WHERE tenant_id = $1"
                " AND agent_id = $2 AND id = $3",
                scope.tenant_id,
                agent_id,
                token_id,
            )
            if row is None:
                raise NotFoundError("no such token")
            scope.check(row)
            if row["revoked_at"] is not None:
                act.nothing_changed()
                return False
            await tx.execute(
                "UPDATE agent_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2",
                scope.tenant_id,
                token_id,
                now_ms(),
            )
            act.state(
                AuditRecord(
                    actor,
                    "agent.token_revoke",
                    f"agent_token:{token_id}",
                    detail={"agent_id": agent_id},
                )
            )
        return True

    async def kill(self, scope: TenantScope, agent_id: str, *, actor: Actor) -> list[str]:
        """The kill switch: disable the agent and revoke every live token of it, in one
        transaction. Returns the ids of the tokens it revoked."""
        now = now_ms()
        async with self._audit.action("agent_kill", scope) as act:
            tx = act.tx
            await self._get(tx, scope, agent_id)
            await tx.execute(
                "UPDATE agents SET disabled_at = $3 WHERE tenant_id = $1 AND id = $2"
                " AND disabled_at IS NULL",
                scope.tenant_id,
                agent_id,
                now,
            )
            rows = await tx.fetch(
                "UPDATE agent_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND agent_id = $2"
                " AND revoked_at IS NULL RETURNING tenant_id, id",
                scope.tenant_id,
                agent_id,
                now,
            )
            revoked = sorted(row["id"] for row in scope.check_all(rows))
            act.state(
                AuditRecord(
                    actor, "agent.kill", f"agent:{agent_id}", detail={"tokens_revoked": revoked}
                )
            )
        return revoked

    async def enable(self, scope: TenantScope, agent_id: str, *, actor: Actor) -> Agent:
        """Re-enable a disabled agent. Its revoked tokens stay revoked."""
        async with self._audit.action("agent_enable", scope) as act:
            tx = act.tx
            agent = await self._get(tx, scope, agent_id)
            await tx.execute(
                "UPDATE agents SET disabled_at = NULL WHERE tenant_id = $1 AND id = $2",
                scope.tenant_id,
                agent_id,
            )
            act.state(
                AuditRecord(
                    actor,
                    "agent.enable",
                    f"agent:{agent_id}",
                    detail={"was_disabled": agent.disabled_at is not None},
                )
            )
        return Agent(
            agent.tenant_id, agent.id, agent.name, agent.created_by, agent.created_at, None
        )

    async def tenant_of(self, token_hash: str) -> str | None:
        """The tenant a token digest belongs to (pre-authentication; no tenant yet)."""
        async with self._engine.transaction("token_directory_lookup") as tx:
            value = await tx.fetchval(
                "SELECT tenant_id FROM token_directory WHERE token_hash = $1", token_hash
            )
        return None if value is None else str(value)

    async def state_by_hash(self, scope: TenantScope, token_hash: str) -> TokenState | None:
        return await self._state(scope, _STATE_BY_HASH, token_hash)

    async def state(self, scope: TenantScope, token_id: str) -> TokenState | None:
        return await self._state(scope, _STATE_BY_ID, token_id)

    async def _state(self, scope: TenantScope, sql: str, value: str) -> TokenState | None:
        async with self._engine.transaction("agent_token_state", tenant_id=scope.tenant_id) as tx:
            row = await tx.fetchrow(sql, scope.tenant_id, value)
        if row is None:
            return None
        return TokenState(_token(scope.check(row)), row["agent_disabled_at"] is not None)


_STATE = (
    "SELECT t.*, a.disabled_at AS agent_disabled_at FROM agent_tokens t"
    " JOIN agents a ON a.tenant_id = t.tenant_id AND a.id = t.agent_id"
    " WHERE t.tenant_id = $1 AND "
)
_STATE_BY_HASH = _STATE + "t.token_hash = $2"
_STATE_BY_ID = _STATE + "t.id = $2"
