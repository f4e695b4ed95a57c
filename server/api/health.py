"""Liveness, readiness and the Prometheus metrics of this process."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server import metrics as process_metrics
from server.api.http import runtime_of


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    runtime = runtime_of(request)
    checks: dict[str, bool] = {"broker": runtime.broker.ready()}
    try:
        await runtime.store.tenants.by_slug("\x00readiness-probe")
    except Exception as exc:  # a NotFoundError means the store answered
        checks["store"] = exc.__class__.__name__ == "NotFoundError"
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503)


async def metrics(request: Request) -> Response:
    # Counters and process figures only: no label carries user content (server.metrics).
    return Response(process_metrics.render(), media_type=process_metrics.CONTENT_TYPE)
