"""Agent administration: creating agents, issuing and revoking their tokens, and the kill
switch. Owners and admins only; every action is audited by the repository, in its own
transaction, and every refused attempt is audited as ``denied``.

The kill switch commits first (agent disabled, all tokens revoked, audit entry), then
publishes ``principal_disabled``: every node closes the agent's sockets and drops its cached
token state, so further calls are refused at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from server.audit import actor_of, require_admin
from server.auth.agent_tokens import display_parts, new_agent_token
from server.auth.authority import scope_for
from server.auth.credentials import PRINCIPAL_DISABLED, SESSION_REVOKED
from server.auth.principal import Principal
from server.auth.scopes import normalise
from server.auth.tokens import token_digest
from server.broker.base import Broker, ControlEvent
from storage.agents import Agent, AgentToken, Grant
from storage.store import Store


@dataclass(frozen=True, slots=True)
class IssuedAgentToken:
    token: str  # the plaintext, returned to the caller once and never stored
    record: AgentToken


class AgentAdmin:
    def __init__(self, store: Store, broker: Broker) -> None:
        self.store = store
        self.broker = broker

    async def create(self, principal: Principal, name: str, ip: str) -> Agent:
        await require_admin(self.store, principal, ip, "agent.create", f"agent-name:{name}")
        return await self.store.agents.create(
            scope_for(principal), name, actor=actor_of(principal, ip)
        )

    async def for_tenant(self, principal: Principal, ip: str) -> list[Agent]:
        await require_admin(
            self.store, principal, ip, "agent.list", f"tenant:{principal.tenant_id}"
        )
        return await self.store.agents.for_tenant(scope_for(principal))

    async def tokens(self, principal: Principal, agent_id: str, ip: str) -> list[AgentToken]:
        await require_admin(self.store, principal, ip, "agent.token_list", f"agent:{agent_id}")
        return await self.store.agents.tokens(scope_for(principal), agent_id)

    async def issue_token(
        self,
        principal: Principal,
        agent_id: str,
        scopes: tuple[Grant, ...] | None,
        expires_in_s: int | None,
        ip: str,
    ) -> IssuedAgentToken:
        await require_admin(self.store, principal, ip, "agent.token_create", f"agent:{agent_id}")
        grants = normalise(scopes)
        token = new_agent_token()
        prefix, last_four = display_parts(token)
        # Whole seconds, like every other expiry on the wire.
        expires_at = None if expires_in_s is None else (int(time.time()) + expires_in_s) * 1000
        record = await self.store.agents.issue_token(
            scope_for(principal),
            agent_id,
            token_hash=token_digest(token),
            prefix=prefix,
            last_four=last_four,
            scopes=grants,
            expires_at=expires_at,
            actor=actor_of(principal, ip),
        )
        return IssuedAgentToken(token, record)

    async def revoke_token(
        self, principal: Principal, agent_id: str, token_id: str, ip: str
    ) -> None:
        await require_admin(
            self.store, principal, ip, "agent.token_revoke", f"agent_token:{token_id}"
        )
        await self.store.agents.revoke_token(
            scope_for(principal), agent_id, token_id, actor=actor_of(principal, ip)
        )
        # An agent connection's session id is its token id: its sockets close.
        await self.broker.publish_control(
            ControlEvent(SESSION_REVOKED, principal.tenant_id, token_id)
        )

    async def kill(self, principal: Principal, agent_id: str, ip: str) -> list[str]:
        await require_admin(self.store, principal, ip, "agent.kill", f"agent:{agent_id}")
        revoked = await self.store.agents.kill(
            scope_for(principal), agent_id, actor=actor_of(principal, ip)
        )
        await self.broker.publish_control(
            ControlEvent(PRINCIPAL_DISABLED, principal.tenant_id, agent_id)
        )
        return revoked

    async def enable(self, principal: Principal, agent_id: str, ip: str) -> Agent:
        await require_admin(self.store, principal, ip, "agent.enable", f"agent:{agent_id}")
        return await self.store.agents.enable(
            scope_for(principal), agent_id, actor=actor_of(principal, ip)
        )
