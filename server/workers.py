"""The ``baychat worker`` process: persistence workers draining the shared log into the
store, and (when given a port) a small HTTP endpoint for health, readiness and metrics
(``server.worker_http``). SIGTERM or SIGINT lets each worker finish the batch in hand (commit,
acknowledge, notify), take nothing new, and give back what it read ahead, before the
process exits. Whatever a killed worker leaves pending is claimed by a live one after
``claim_idle_ms``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from server import metrics, worker_http
from server.auth.authority import scope_for_system
from server.broker.base import open_log
from server.config import Settings
from server.runtime import app_role, open_store
from storage.worker import PersistenceWorker

_log = logging.getLogger("baychat.worker")


async def run_workers(
    settings: Settings,
    count: int = 1,
    *,
    grace_s: float = 30.0,
    http: tuple[str, int] | None = None,
    log_config: dict[str, object] | None = None,
) -> None:
    """Run ``count`` workers until SIGTERM/SIGINT; ``http`` = (host, port) to serve
    ``/healthz``, ``/readyz`` and ``/metrics`` on."""
    logs = [open_log(settings.broker_url, consumer=f"{settings.node_id}-{i}") for i in range(count)]
    if settings.migrate_on_start:
        owner_store = open_store(settings, owner=True)
        await owner_store.open(migrate_schema=True, app_role=app_role(settings))
        await owner_store.close()
    store = open_store(settings)
    await store.open()
    workers = [
        PersistenceWorker(log, store, scope_for_system, on_batch=metrics.persisted_batch)
        for log in logs
    ]
    tasks = [
        asyncio.create_task(w.run(), name=f"persistence-worker-{i}") for i, w in enumerate(workers)
    ]
    serving: asyncio.Task[None] | None = None
    stop_serving = None
    if http is not None:
        app = worker_http.worker_app(tasks, store)
        serving, stop_serving = worker_http.start(app, http[0], http[1], log_config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    _log.info("%d persistence worker(s) running as %s", count, settings.node_id)
    try:
        stopper = asyncio.create_task(stopping.wait())
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for log, worker in zip(logs, workers, strict=True):
            log.stop()  # the batch in hand is finished; nothing new is taken
            worker.stop()
        _, unfinished = await asyncio.wait(tasks, timeout=grace_s)
        for task in unfinished:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task  # re-raises a worker's unexpected failure
    finally:
        if serving is not None and stop_serving is not None:
            stop_serving()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(serving, 5)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        for log in logs:
            await log.close()
        await store.close()
    _log.info("persistence workers stopped")
