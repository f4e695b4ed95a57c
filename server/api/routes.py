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
from server.api import auth, channels, health
from server.api.http import json_response
from server.api.operation import Limit, Operation, by_ip, run
from server.api.schemas import (
    ChannelCreate,
    ChannelList,
    ChannelOut,
    ChannelPath,
    Health,
    LoginRequest,
    MemberAdd,
    MemberOut,
    MessageList,
    MessagesQuery,
    Readiness,
    RefreshRequest,
    TokenResponse,
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
