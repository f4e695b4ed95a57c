"""The route table: every HTTP operation of BayChat, once.

The starlette routes and the OpenAPI document (``/api/v1/openapi.json``) are both built
from ``OPERATIONS``; a test checks that every mounted route is in the document and the
reverse. To add an endpoint, add an ``Operation`` here.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from protocol.codes import ErrorCode
from server.api import agents, audit, auth, channels, health, me, sessions, users
from server.api.http import json_response
from server.api.operation import Limit, Operation, by_ip, by_principal, run
from server.api.schemas import (
    AgentCreate,
    AgentList,
    AgentOut,
    AgentPath,
    AgentTokenPath,
    AuditExportQuery,
    ChannelCreate,
    ChannelList,
    ChannelOut,
    ChannelPath,
    EraseRequest,
    EraseResponse,
    Health,
    KillResult,
    LoginRequest,
    MemberAdd,
    MemberOut,
    MessageAck,
    MessageList,
    MessagePost,
    MessagesQuery,
    PasswordChange,
    Readiness,
    RefreshRequest,
    RevokedSessions,
    RoleChange,
    SessionList,
    SessionPath,
    TokenCreate,
    TokenIssued,
    TokenList,
    TokenResponse,
    UserList,
    UserOut,
    UserPath,
)

API = "/api/v1"
OPENAPI_PATH = f"{API}/openapi.json"


async def openapi(request: Request) -> Response:
    document: dict[str, Any] = request.app.state.openapi
    return json_response(document)


OPERATIONS: list[Operation] = [
    Operation("GET", "/healthz", health.healthz, "Liveness", Health, auth=False, tags=("health",)),
    Operation(
        "GET",
        "/readyz",
        health.readyz,
        "Readiness: the store and the broker answer",
        Readiness,
        other_statuses=(503,),
        auth=False,
        tags=("health",),
    ),
    Operation(
        "GET",
        OPENAPI_PATH,
        openapi,
        "This document",
        dict[str, Any],
        auth=False,
        tags=("meta",),
    ),
    Operation(
        "POST",
        f"{API}/auth/login",
        auth.login,
        "Exchange a password for an access token and a refresh token",
        TokenResponse,
        body=LoginRequest,
        auth=False,
        errors=(ErrorCode.UNAUTHORIZED,),
        limits=(
            Limit("login_ip", by_ip),
            Limit("login_account_ip", auth.login_account_ip),
            Limit("login_account", auth.login_account),
        ),
        tags=("auth",),
    ),
    Operation(
        "POST",
        f"{API}/auth/refresh",
        auth.refresh,
        "Rotate a refresh token: a new access token and a new refresh token",
        TokenResponse,
        body=RefreshRequest,
        auth=False,
        errors=(ErrorCode.UNAUTHORIZED, ErrorCode.REVOKED),
        limits=(Limit("refresh", by_ip),),
        tags=("auth",),
    ),
    Operation(
        "GET",
        f"{API}/channels",
        channels.list_channels,
        "Channels the caller can see",
        ChannelList,
        tags=("channels",),
    ),
    Operation(
        "POST",
        f"{API}/channels",
        channels.create_channel,
        "Create a channel",
        ChannelOut,
        status=201,
        body=ChannelCreate,
        errors=(ErrorCode.FORBIDDEN, ErrorCode.CONFLICT),
        tags=("channels",),
    ),
    Operation(
        "POST",
        f"{API}/channels/{{name}}/members",
        channels.add_member,
        "Add a user of the tenant to a channel",
        MemberOut,
        status=201,
        other_statuses=(200,),
        body=MemberAdd,
        params=ChannelPath,
        errors=(ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND),
        tags=("channels",),
    ),
    Operation(
        "GET",
        f"{API}/channels/{{name}}/messages",
        channels.list_messages,
        "A page of a channel's history, newest last",
        MessageList,
        query=MessagesQuery,
        params=ChannelPath,
        errors=(ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND),
        tags=("channels",),
    ),
    Operation(
        "POST",
        f"{API}/channels/{{name}}/messages",
        channels.post_message,
        "Publish a message over HTTP (for bots without a socket); answers once it is stored",
        MessageAck,
        status=201,
        other_statuses=(200,),
        body=MessagePost,
        params=ChannelPath,
        errors=(ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE),
        limits=(Limit("publish_user", by_principal),),
        tags=("channels",),
    ),
    Operation(
        "POST",
        f"{API}/auth/logout",
        auth.logout,
        "End the current session",
        None,
        status=204,
        errors=(ErrorCode.REVOKED,),
        tags=("auth",),
    ),
    Operation(
        "GET",
        f"{API}/sessions",
        sessions.list_sessions,
        "The caller's sessions",
        SessionList,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN),
        tags=("sessions",),
    ),
    Operation(
        "POST",
        f"{API}/sessions/revoke-others",
        sessions.revoke_others,
        "Revoke every session of the caller but the current one",
        RevokedSessions,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN),
        tags=("sessions",),
    ),
    Operation(
        "DELETE",
        f"{API}/sessions/{{session_id}}",
        sessions.revoke_session,
        "Revoke one of the caller's sessions",
        None,
        status=204,
        params=SessionPath,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND),
        tags=("sessions",),
    ),
    Operation(
        "POST",
        f"{API}/me/password",
        sessions.change_password,
        "Change the caller's password; every other session ends",
        RevokedSessions,
        body=PasswordChange,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN),
        limits=(Limit("login_account", by_principal),),
        tags=("sessions",),
    ),
    Operation(
        "GET",
        f"{API}/users",
        users.list_users,
        "Users of the tenant (admins)",
        UserList,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN),
        tags=("users",),
    ),
    Operation(
        "PUT",
        f"{API}/users/{{user_id}}/role",
        users.set_role,
        "Change a user's role (admins; owners for owners); audited",
        UserOut,
        body=RoleChange,
        params=UserPath,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT),
        tags=("users",),
    ),
    Operation(
        "POST",
        f"{API}/users/{{user_id}}/disable",
        users.disable,
        "Disable a user: sessions revoked, sockets closed; audited",
        RevokedSessions,
        params=UserPath,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT),
        tags=("users",),
    ),
    Operation(
        "POST",
        f"{API}/users/{{user_id}}/enable",
        users.enable,
        "Re-enable a user; audited",
        None,
        status=204,
        params=UserPath,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT),
        tags=("users",),
    ),
    Operation(
        "GET",
        f"{API}/agents",
        agents.list_agents,
        "Agents of the tenant (admins)",
        AgentList,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN),
        tags=("agents",),
    ),
    Operation(
        "POST",
        f"{API}/agents",
        agents.create_agent,
        "Create an agent (admins); audited",
        AgentOut,
        status=201,
        body=AgentCreate,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.CONFLICT),
        tags=("agents",),
    ),
    Operation(
        "GET",
        f"{API}/agents/{{agent_id}}/tokens",
        agents.list_tokens,
        "An agent's tokens: prefix and last four characters only",
        TokenList,
        params=AgentPath,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND),
        tags=("agents",),
    ),
    Operation(
        "POST",
        f"{API}/agents/{{agent_id}}/tokens",
        agents.create_token,
        "Create a bay_ token for an agent; the plaintext is in this answer only; audited",
        TokenIssued,
        status=201,
        body=TokenCreate,
        params=AgentPath,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT),
        limits=(Limit("token_create", by_principal),),
        tags=("agents",),
    ),
    Operation(
        "DELETE",
        f"{API}/agents/{{agent_id}}/tokens/{{token_id}}",
        agents.revoke_token,
        "Revoke one agent token; audited",
        None,
        status=204,
        params=AgentTokenPath,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND),
        tags=("agents",),
    ),
    Operation(
        "POST",
        f"{API}/agents/{{agent_id}}/kill",
        agents.kill,
        "Kill switch: disable the agent, revoke every token, close its sockets; audited",
        KillResult,
        params=AgentPath,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND),
        tags=("agents",),
    ),
    Operation(
        "POST",
        f"{API}/agents/{{agent_id}}/enable",
        agents.enable,
        "Re-enable a killed agent (its old tokens stay revoked); audited",
        AgentOut,
        params=AgentPath,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND),
        tags=("agents",),
    ),
    Operation(
        "GET",
        f"{API}/audit/export",
        audit.export_audit,
        "Stream the tenant's audit chain as JSON lines or CSV (paid plan; owners and admins)",
        None,
        query=AuditExportQuery,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN),
        tags=("audit",),
    ),
    Operation(
        "GET",
        f"{API}/me/export",
        me.export,
        "GDPR export: everything held about the caller (profile, sessions, memberships,"
        " the messages they wrote, decrypted), and nothing about anyone else",
        dict[str, Any],
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN),
        tags=("me",),
    ),
    Operation(
        "DELETE",
        f"{API}/me",
        me.erase,
        "GDPR erasure of the caller (password required): sessions revoked, sockets closed,"
        " profile deleted, messages replaced by tombstones; audited without personal data",
        EraseResponse,
        body=EraseRequest,
        errors=(ErrorCode.REVOKED, ErrorCode.FORBIDDEN, ErrorCode.CONFLICT),
        limits=(Limit("login_account", by_principal),),
        tags=("me",),
    ),
]


def _endpoint(by_method: dict[str, Operation]) -> Any:
    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await run(by_method[method], request)

    return endpoint


def build_routes(operations: list[Operation]) -> list[BaseRoute]:
    """One starlette route per path, dispatching on the method (405 lists them all)."""
    by_path: dict[str, dict[str, Operation]] = defaultdict(dict)
    for op in operations:
        if op.method in by_path[op.path]:
            raise ValueError(f"{op.method} {op.path} is in the route table twice")
        by_path[op.path][op.method] = op
    return [
        Route(path, _endpoint(ops), methods=list(ops), name=path) for path, ops in by_path.items()
    ]
