"""Tenant administration of people: list users, change a role, disable or enable an
account. Owners and admins only (server.accounts holds the rules)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api.http import authenticate, client_ip, json_response, read_body, runtime_of
from server.api.schemas import RevokedSessions, RoleChange, UserList, UserOut
from storage.models import User


def _user(user: User) -> UserOut:
    return UserOut(user.id, user.email, user.role, user.disabled, user.created_at)


async def list_users(request: Request) -> Response:
    principal = await authenticate(request)
    users = await runtime_of(request).accounts.users(principal, client_ip(request))
    return json_response(UserList([_user(u) for u in users]))


async def set_role(request: Request) -> Response:
    principal = await authenticate(request)
    body = await read_body(request, RoleChange)
    user = await runtime_of(request).accounts.set_role(
        principal, request.path_params["user_id"], body.role, client_ip(request)
    )
    return json_response(_user(user))


async def disable(request: Request) -> Response:
    principal = await authenticate(request)
    revoked = await runtime_of(request).accounts.set_disabled(
        principal, request.path_params["user_id"], True, client_ip(request)
    )
    return json_response(RevokedSessions(revoked))


async def enable(request: Request) -> Response:
    principal = await authenticate(request)
    await runtime_of(request).accounts.set_disabled(
        principal, request.path_params["user_id"], False, client_ip(request)
    )
    return Response(status_code=204)
