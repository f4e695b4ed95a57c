"""A person's own sessions and password: list, revoke one, revoke all others, change the
password."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api.http import authenticate, client_ip, json_response, read_body, runtime_of
from server.api.schemas import (
    PasswordChange,
    RevokedSessions,
    SessionList,
    SessionOut,
)


async def list_sessions(request: Request) -> Response:
    principal = await authenticate(request)
    sessions = await runtime_of(request).accounts.sessions(principal)
    return json_response(
        SessionList(
            [
                SessionOut(
                    s.id,
                    s.created_at,
                    s.last_used_at,
                    s.expires_at,
                    s.user_agent,
                    s.ip,
                    s.id == principal.session_id,
                )
                for s in sessions
            ]
        )
    )


async def revoke_session(request: Request) -> Response:
    principal = await authenticate(request)
    await runtime_of(request).accounts.revoke_session(
        principal, request.path_params["session_id"], client_ip(request)
    )
    return Response(status_code=204)


async def revoke_others(request: Request) -> Response:
    principal = await authenticate(request)
    revoked = await runtime_of(request).accounts.revoke_others(principal, client_ip(request))
    return json_response(RevokedSessions(revoked))


async def change_password(request: Request) -> Response:
    principal = await authenticate(request)
    body = await read_body(request, PasswordChange)
    revoked = await runtime_of(request).accounts.change_password(
        principal, body.current_password, body.new_password, client_ip(request)
    )
    return json_response(RevokedSessions(revoked))
