"""Liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api.http import json_response, runtime_of
from server.api.schemas import Health, Readiness


async def healthz(request: Request) -> Response:
    return json_response(Health("ok"))


async def readyz(request: Request) -> Response:
    runtime = runtime_of(request)
    checks: dict[str, bool] = {"broker": runtime.broker.ready()}
    try:
        # No slug starts with "-"; a NUL would do too on SQLite but Postgres rejects it.
        await runtime.store.tenants.by_slug("-readiness-probe")
    except Exception as exc:  # a NotFoundError means the store answered
        checks["store"] = exc.__class__.__name__ == "NotFoundError"
    ready = all(checks.values())
    return json_response(Readiness(ready, checks), 200 if ready else 503)
