"""Liveness and readiness.

``/healthz`` answers while the process runs. ``/readyz`` answers 200 only when this node
can serve: the store answers within ``PROBE_TIMEOUT_S`` and the broker receives fan-out
(a gateway that lost its Redis subscription must not get traffic, even though it lives).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from protocol.errors import NotFoundError
from server.api.http import json_response, runtime_of
from server.api.schemas import Health, Readiness
from storage.store import Store

PROBE_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    return json_response(Health("ok"))


async def store_answers(store: Store) -> bool:
    """True if the store answers a lookup within ``PROBE_TIMEOUT_S`` (gateway and worker)."""
    try:
        # No slug starts with "-"; a NUL would do on SQLite but Postgres rejects it.
        await asyncio.wait_for(store.tenants.by_slug("-readiness-probe"), PROBE_TIMEOUT_S)
    except NotFoundError:
        return True  # the store answered
    except Exception:
        return False
    return True  # pragma: no cover - no tenant has this slug


async def readyz(request: Request) -> Response:
    runtime = runtime_of(request)
    checks = {"broker": runtime.broker.ready(), "store": await store_answers(runtime.store)}
    ready = all(checks.values())
    return json_response(Readiness(ready, checks), 200 if ready else 503)
