"""The persistence worker: drains the broker's log into the store in batches.

Group commit: whatever is waiting (up to ``max_batch``) is encrypted and written in one
transaction, then marked done in the log. The log entry is acknowledged only after the
commit, so a crash between the two replays the batch, and the idempotent insert keeps
each message exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from storage.models import Message
from storage.scope import TenantScope
from storage.store import Store

_log = logging.getLogger("baychat.worker")


class LogEntry(NamedTuple):  # a tuple: one per message, cheaper to make than a dataclass
    entry_id: str
    message: Message
    origin: str  # the node whose client sent it, to route the ack


class PersistenceLog(Protocol):
    """The durable log as its consumer sees it.

    ``read`` returns entries in append order per channel, at least once: an entry not marked
    done is eventually returned again (to this or another worker). ``done`` must only be
    called after the entries are committed to the store.
    """

    async def read(self, max_count: int, block_ms: int) -> list[LogEntry]: ...

    async def done(self, entries: Sequence[LogEntry]) -> None: ...


class PersistenceWorker:
    def __init__(
        self,
        log: PersistenceLog,
        store: Store,
        scope_for: Callable[[str], TenantScope],
        *,
        # A cap, never a wait: ``read`` returns what is already there, so a quiet log is
        # written (and its messages acknowledged) at once. Only a backlog fills a batch, and
        # there 2,000 rows cost ~10 % less CPU per message than 1,000 (fewer commits and
        # statements; docs/BENCHMARKS.md), draining it sooner.
        max_batch: int = 2000,
        block_ms: int = 1000,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._log = log
        self._store = store
        self._scope_for = scope_for
        self._max_batch = max_batch
        self._block_ms = block_ms
        self._on_batch = on_batch
        self._stopping = asyncio.Event()
        self.idle = True  # waiting on the log, holding nothing that a cancel could lose

    async def run(self) -> None:
        """Persist until stopped; after ``stop`` it keeps going until the log is empty."""
        backoff = 0.05
        while True:
            try:
                self.idle = True
                entries = await self._log.read(self._max_batch, self._block_ms)
                self.idle = False
                if entries:
                    await self.persist(entries)
                elif self._stopping.is_set():
                    return
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("persistence batch failed; retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def persist(self, entries: Sequence[LogEntry]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        scopes: dict[str, TenantScope] = {}
        batch = []
        for entry in entries:
            tenant_id = entry.message.tenant_id
            scope = scopes.get(tenant_id)
            if scope is None:
                scope = scopes[tenant_id] = self._scope_for(tenant_id)
            batch.append((scope, entry.message))
        await self._store.messages.insert_batch(batch)
        await self._log.done(entries)
        if self._on_batch is not None:
            self._on_batch(len(entries), loop.time() - started)

    def stop(self) -> None:
        self._stopping.set()

    async def drain(self, task: asyncio.Task[None], timeout: float) -> None:
        """Stop after the log is drained (at most ``timeout`` seconds), then cancel."""
        self.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not task.done() and loop.time() < deadline:
            if self.idle and self._log_is_empty():
                break
            await asyncio.sleep(0.01)
        task.cancel()

    def _log_is_empty(self) -> bool:
        backlog = getattr(self._log, "backlog", None)
        return bool(backlog is None or backlog() == 0)
