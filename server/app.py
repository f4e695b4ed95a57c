"""The starlette application: routes, error handlers and the runtime's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute

from protocol.codes import ErrorCode
from protocol.errors import BayChatError
from server.api import agents, audit, auth, channels, health, me, sessions, users
from server.api.http import error_response, internal_error_response, json_response
from server.api.schemas import ErrorBody, ErrorResponse
from server.auth import redaction
from server.config import Settings
from server.gateway import websocket_endpoint
from server.runtime import Runtime


async def _bay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BayChatError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.BAD_FRAME}.get(
        exc.status_code, ErrorCode.BAD_FRAME
    )
    return json_response(
        ErrorResponse(ErrorBody(code=code, message=str(exc.detail))), exc.status_code
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    return internal_error_response()


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    redaction.install()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.stop()

    api = [
        Route("/auth/login", auth.login, methods=["POST"]),
        Route("/auth/refresh", auth.refresh, methods=["POST"]),
        Route("/channels", channels.list_channels, methods=["GET"]),
        Route("/channels", channels.create_channel, methods=["POST"]),
        Route("/channels/{name}/members", channels.add_member, methods=["POST"]),
        Route("/channels/{name}/messages", channels.list_messages, methods=["GET"]),
        Route("/channels/{name}/messages", channels.post_message, methods=["POST"]),
        Route("/auth/logout", auth.logout, methods=["POST"]),
        Route("/sessions", sessions.list_sessions, methods=["GET"]),
        Route("/sessions/revoke-others", sessions.revoke_others, methods=["POST"]),
        Route("/sessions/{session_id}", sessions.revoke_session, methods=["DELETE"]),
        Route("/me/password", sessions.change_password, methods=["POST"]),
        Route("/users", users.list_users, methods=["GET"]),
        Route("/users/{user_id}/role", users.set_role, methods=["PUT"]),
        Route("/users/{user_id}/disable", users.disable, methods=["POST"]),
        Route("/users/{user_id}/enable", users.enable, methods=["POST"]),
        Route("/agents", agents.list_agents, methods=["GET"]),
        Route("/agents", agents.create_agent, methods=["POST"]),
        Route("/agents/{agent_id}/tokens", agents.list_tokens, methods=["GET"]),
        Route("/agents/{agent_id}/tokens", agents.create_token, methods=["POST"]),
        Route("/agents/{agent_id}/tokens/{token_id}", agents.revoke_token, methods=["DELETE"]),
        Route("/agents/{agent_id}/kill", agents.kill, methods=["POST"]),
        Route("/agents/{agent_id}/enable", agents.enable, methods=["POST"]),
        Route("/audit/export", audit.export_audit, methods=["GET"]),
        Route("/me/export", me.export, methods=["GET"]),
        Route("/me", me.erase, methods=["DELETE"]),
    ]
    return Starlette(
        routes=[
            Route("/healthz", health.healthz),
            Route("/readyz", health.readyz),
            Mount("/api/v1", routes=api),
            WebSocketRoute("/ws", websocket_endpoint),
        ],
        exception_handlers={
            BayChatError: _bay_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
