"""POST /api/v1/auth/login and /auth/refresh."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api.http import authenticate, client_ip, json_response, read_body, runtime_of
from server.api.schemas import LoginRequest, RefreshRequest, TokenResponse
from server.auth.service import TokenPair
from server.ratelimit import account_key


def _tokens(pair: TokenPair) -> Response:
    return json_response(
        TokenResponse(pair.access_token, pair.refresh_token, pair.expires_in, pair.token_type),
        headers={"Cache-Control": "no-store"},
    )


def login_account(request: Request) -> tuple[str, ...]:
    """Rate-limit key: the account a login names (hashed), whether or not it exists."""
    body: LoginRequest = request.state.body
    return (account_key(body.tenant, body.email),)


def login_account_ip(request: Request) -> tuple[str, ...]:
    return (*login_account(request), client_ip(request))


async def login(request: Request) -> Response:
    body = await read_body(request, LoginRequest)
    pair = await runtime_of(request).auth.login(
        body.tenant,
        body.email,
        body.password,
        user_agent=request.headers.get("user-agent", ""),
        ip=client_ip(request),
    )
    return _tokens(pair)


async def refresh(request: Request) -> Response:
    body = await read_body(request, RefreshRequest)
    return _tokens(
        await runtime_of(request).auth.refresh(body.refresh_token, ip=client_ip(request))
    )


async def logout(request: Request) -> Response:
    """End the session of the calling access token (its refresh token stops working and
    its live connections close)."""
    principal = await authenticate(request)
    await runtime_of(request).accounts.logout(principal, client_ip(request))
    return Response(status_code=204)
