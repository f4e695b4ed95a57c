"""Agents: create and list them, issue, list and revoke their tokens, the kill switch and
re-enabling. Owners and admins only (server.agents)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api.http import authenticate, client_ip, json_response, read_body, runtime_of
from server.api.schemas import (
    AgentCreate,
    AgentList,
    AgentOut,
    KillResult,
    ScopeOut,
    TokenCreate,
    TokenIssued,
    TokenList,
    TokenOut,
)
from storage.agents import Agent, AgentToken, Grant

_NO_STORE = {"Cache-Control": "no-store"}


def _agent(agent: Agent) -> AgentOut:
    return AgentOut(
        agent.id, agent.name, agent.disabled_at is not None, agent.created_at, agent.created_by
    )


def _token(token: AgentToken) -> TokenOut:
    return TokenOut(
        id=token.id,
        agent_id=token.agent_id,
        prefix=token.prefix,
        last_four=token.last_four,
        scopes=[ScopeOut(g.channel, list(g.actions)) for g in token.scopes],
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked=token.revoked_at is not None,
    )


async def create_agent(request: Request) -> Response:
    principal = await authenticate(request)
    body = await read_body(request, AgentCreate)
    agent = await runtime_of(request).agents.create(principal, body.name, client_ip(request))
    return json_response(_agent(agent), 201)


async def list_agents(request: Request) -> Response:
    principal = await authenticate(request)
    agents = await runtime_of(request).agents.for_tenant(principal, client_ip(request))
    return json_response(AgentList([_agent(a) for a in agents]))


async def create_token(request: Request) -> Response:
    principal = await authenticate(request)
    body = await read_body(request, TokenCreate)
    scopes = (
        None
        if body.scopes is None
        else tuple(Grant(s.channel, tuple(s.actions)) for s in body.scopes)
    )
    issued = await runtime_of(request).agents.issue_token(
        principal, request.path_params["agent_id"], scopes, body.expires_in, client_ip(request)
    )
    return json_response(TokenIssued(issued.token, _token(issued.record)), 201, _NO_STORE)


async def list_tokens(request: Request) -> Response:
    principal = await authenticate(request)
    tokens = await runtime_of(request).agents.tokens(
        principal, request.path_params["agent_id"], client_ip(request)
    )
    return json_response(TokenList([_token(t) for t in tokens]))


async def revoke_token(request: Request) -> Response:
    principal = await authenticate(request)
    await runtime_of(request).agents.revoke_token(
        principal,
        request.path_params["agent_id"],
        request.path_params["token_id"],
        client_ip(request),
    )
    return Response(status_code=204)


async def kill(request: Request) -> Response:
    principal = await authenticate(request)
    agent_id = request.path_params["agent_id"]
    revoked = await runtime_of(request).agents.kill(principal, agent_id, client_ip(request))
    return json_response(KillResult(agent_id, True, revoked))


async def enable(request: Request) -> Response:
    principal = await authenticate(request)
    agent = await runtime_of(request).agents.enable(
        principal, request.path_params["agent_id"], client_ip(request)
    )
    return json_response(_agent(agent))
