"""The ``baychat worker`` process's own small HTTP endpoint: health, readiness, metrics.

Why: in the cluster the persistence work (batch sizes, commit times) happens in the worker,
not in a gateway, so a gateway's ``/metrics`` cannot show it; and an orchestrator needs to
know when a worker has stopped working, which reaching Postgres and Redis does not tell.

* ``GET /healthz``: 200 while every persistence worker task of the process is running,
  503 once one has ended (it failed in a way it could not retry);
* ``GET /readyz``: also asks the store to answer (``server.api.health.store_answers``);
* ``GET /metrics``: the Prometheus exposition of this process (``server.metrics``).

Bound to ``127.0.0.1`` unless told otherwise: it carries no user content, but nobody
outside the host needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server import metrics
from server.api.health import store_answers
from server.api.http import json_response
from server.api.schemas import Health, Readiness
from storage.store import Store


def worker_app(tasks: Sequence[asyncio.Task[None]], store: Store) -> Starlette:
    def running() -> bool:
        return all(not task.done() for task in tasks)

    async def healthz(request: Request) -> Response:
        alive = running()
        return json_response(Health("ok" if alive else "stopped"), 200 if alive else 503)

    async def readyz(request: Request) -> Response:
        checks = {"workers": running(), "store": await store_answers(store)}
        ready = all(checks.values())
        return json_response(Readiness(ready, checks), 200 if ready else 503)

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
        ]
    )


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the worker process owns SIGTERM/SIGINT (it
    finishes the batch in hand before it exits)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def start(
    app: Starlette, host: str, port: int, log_config: dict[str, object] | None
) -> tuple[asyncio.Task[None], Callable[[], None]]:
    """Serve ``app`` in a task; return the task and a function that asks it to stop."""
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=log_config,
            access_log=False,
            server_header=False,
            lifespan="off",
        )
    )

    def stop() -> None:
        server.should_exit = True

    return asyncio.create_task(server.serve(), name="worker-http"), stop
