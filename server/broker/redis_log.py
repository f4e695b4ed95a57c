"""The persistence log in Redis as one worker consumes it (``storage.worker.PersistenceLog``).

Layout: one stream per tenant, ``<ns>:{<tenant>}:log``, each with the consumer group
``persist``. A single shared stream (or a fixed set of shard streams) would be simpler to
consume, but the publish script appends to the log in the same atomic step as it takes
the channel's seq, and a script may only touch keys of one Redis Cluster slot: the log
must live in the tenant's slot. Workers find the streams through the set
``<ns>:log:tenants``, which publishers add to before a tenant's first message.

Delivery is at least once. ``read`` returns new entries (XREADGROUP) and entries that a
dead or stuck consumer has held longer than ``claim_idle_ms`` (XAUTOCLAIM). A batch that
was read but not ``done`` (the commit failed) is returned again by the next ``read``.
``done``, called after the commit, deletes the entries from the stream and acknowledges
them (in that order: a crash in between leaves a deleted entry in the pending list, which
XAUTOCLAIM clears; the other order could leave an acknowledged entry in the stream for
ever), then tells each origin node which of its messages are stored. The store is keyed
by (channel, seq) and ignores a message id it already has, so two workers committing the
same entries, or committing out of order, leave each message stored exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from server.broker.redis_keys import GROUP, Namespace, decode_line, encode_lines
from storage.models import Message
from storage.worker import LogEntry, PersistenceLog

_log = logging.getLogger("baychat.broker.redis")

TENANTS_REFRESH_S = 30.0
MAX_BLOCK_MS = 500  # new tenants' streams join the blocking read at most this late
MAX_STREAMS_PER_READ = 512


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisLog:
    def __init__(
        self,
        client: Redis,
        names: Namespace,
        consumer: str,
        *,
        claim_idle_ms: int = 30_000,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._names = names
        self.consumer = consumer
        self._claim_idle_ms = claim_idle_ms
        self._owns_client = owns_client
        self._tenants: list[str] = []
        self._grouped: set[str] = set()  # tenants whose stream is known to have the group
        self._tenants_at = -1e9
        self._claimed_at = -1e9
        self._buffer: deque[LogEntry] = deque()  # read from Redis, not yet handed out
        self._inflight: list[LogEntry] = []  # handed out, not yet done
        self._stopped = False
        self._max_count = 0  # the batch size the worker reads (read ahead in ``done``)

    def stop(self) -> None:
        """Hand out no new entries (the worker is shutting down); a batch in hand is still
        returned until it is done."""
        self._stopped = True

    async def close(self) -> None:
        """Give back what this consumer holds and has not committed, so that another
        worker claims it at once rather than after ``claim_idle_ms``."""
        held = [*self._inflight, *self._buffer]
        self._inflight, self._buffer = [], deque()
        try:
            if held:
                await self._give_back(held)
        except RedisError:
            _log.warning("could not give back %d log entries; they are claimed later", len(held))
        finally:
            if self._owns_client:
                await self._client.aclose()

    async def _give_back(self, entries: list[LogEntry]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for tenant_id, ids in _by_tenant(entries).items():
                # Still ours, but idle for a day: the next XAUTOCLAIM of any worker takes it.
                pipe.xclaim(
                    self._names.tenant(tenant_id).log,
                    GROUP,
                    self.consumer,
                    0,
                    list[Any](ids),
                    idle=86_400_000,
                    justid=True,
                )
            await pipe.execute()

    # -- PersistenceLog -----------------------------------------------------------------

    async def read(self, max_count: int, block_ms: int) -> list[LogEntry]:
        if self._inflight:
            return list(self._inflight)
        if self._stopped:
            return []
        self._max_count = max_count
        if not self._buffer:
            await self._fill(max_count, block_ms)
        batch: list[LogEntry] = []
        while self._buffer and len(batch) < max_count:
            batch.append(self._buffer.popleft())
        self._inflight = batch
        return list(batch)

    async def done(self, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        by_origin: dict[str, list[Message]] = {}
        for entry in entries:
            by_origin.setdefault(entry.origin, []).append(entry.message)
        ahead = self._read_ahead_streams()
        async with self._client.pipeline(transaction=False) as pipe:
            for tenant_id, ids in _by_tenant(entries).items():
                log = self._names.tenant(tenant_id).log
                pipe.xdel(log, *ids)
                pipe.xack(log, GROUP, *ids)
            for origin, messages in by_origin.items():
                pipe.publish(self._names.node(origin), encode_lines(messages))
            if ahead is not None:
                pipe.scard(self._names.tenants)
                pipe.xreadgroup(GROUP, self.consumer, ahead, count=self._max_count)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        if ahead is not None:
            *results, count, reply = results
            # Before any error below: what was read is this consumer's now either way.
            self._take_ahead(count, reply)
        for result in results:
            if isinstance(result, Exception):
                raise result
        finished = {entry.entry_id for entry in entries}
        self._inflight = [e for e in self._inflight if e.entry_id not in finished]

    def _read_ahead_streams(self) -> dict[Any, Any] | None:
        """The streams to read the next batch from in ``done``'s own round trip, or None
        when the next ``read`` goes the usual way: something is still buffered, the worker
        is stopping, a claim or a refresh of the tenant list is due, or the streams need
        more than one read.

        Why: under load a worker's batch was six round trips in turn (SCARD and XREADGROUP
        to read, three for the transaction, this pipeline), each to a process that may be
        waiting for a core, and a message waits for the batch in hand and then its own
        (docs/BENCHMARKS.md, the seventh session). Reading ahead here makes it four. The
        entries read are this consumer's pending ones like any it reads: handed out by the
        next ``read``, given back by ``close``, claimed by another worker if this one dies."""
        if self._stopped or self._buffer or self._max_count <= 0:
            return None
        tenants = self._tenants
        if not tenants or len(tenants) > MAX_STREAMS_PER_READ:
            return None
        now = asyncio.get_running_loop().time()
        if now - self._tenants_at > TENANTS_REFRESH_S:
            return None
        if (now - self._claimed_at) * 1000 >= self._claim_idle_ms / 2:
            return None
        return self._unread(tenants)

    def _take_ahead(self, count: Any, reply: Any) -> None:
        if not isinstance(count, int) or count != len(self._tenants):
            # A tenant was added (or the count is unknown): the next read that finds
            # nothing buffered lists the tenants again first, and no read ahead happens
            # until it has.
            self._tenants_at = -1e9
        if not isinstance(reply, Exception):  # NOGROUP and the like: the next read's to fix
            self._accept_reply(reply)

    # -- reading ------------------------------------------------------------------------

    async def _fill(self, max_count: int, block_ms: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        # Tenants are only ever added: a changed count means a new stream to read.
        count = await self._client.scard(self._names.tenants)
        if count != len(self._tenants) or now - self._tenants_at > TENANTS_REFRESH_S:
            await self._refresh_tenants()
            self._tenants_at = now
        if not self._tenants:
            await asyncio.sleep(min(block_ms, 200) / 1000)
            return
        if (now - self._claimed_at) * 1000 >= self._claim_idle_ms / 2:
            self._claimed_at = now
            await self._claim(max_count)
            if self._buffer:
                return
        chunks = [
            self._tenants[i : i + MAX_STREAMS_PER_READ]
            for i in range(0, len(self._tenants), MAX_STREAMS_PER_READ)
        ]
        # One blocking read when every stream fits in it; otherwise sweep the chunks
        # without blocking and pause briefly when all were empty.
        block = max(1, min(block_ms, MAX_BLOCK_MS)) if len(chunks) == 1 else None
        for chunk in chunks:
            await self._read_new(chunk, max_count, block)
        if not self._buffer and len(chunks) > 1:
            await asyncio.sleep(min(block_ms, 100) / 1000)

    async def _refresh_tenants(self) -> None:
        members = await self._client.smembers(self._names.tenants)
        tenants = sorted(_decode(m) for m in members)
        fresh = [t for t in tenants if t not in self._grouped]
        if fresh:
            await self._ensure_groups(fresh)
        self._tenants = tenants

    async def _ensure_groups(self, tenants: list[str]) -> None:
        """A tenant is listed before its stream exists; create stream and group so that
        the blocking read over all streams never meets a missing group."""
        async with self._client.pipeline(transaction=False) as pipe:
            for tenant_id in tenants:
                pipe.xgroup_create(self._names.tenant(tenant_id).log, GROUP, id="0", mkstream=True)
            results = await pipe.execute(raise_on_error=False)
        for tenant_id, result in zip(tenants, results, strict=True):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
            self._grouped.add(tenant_id)

    async def _read_new(self, tenants: list[str], max_count: int, block: int | None) -> None:
        streams = self._unread(tenants)
        try:
            reply: Any = await self._client.xreadgroup(
                GROUP, self.consumer, streams, count=max_count, block=block
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A stream vanished (Redis lost data or an operator deleted it): recreate.
            self._grouped.difference_update(tenants)
            await self._ensure_groups(tenants)
            return
        self._accept_reply(reply)

    def _unread(self, tenants: list[str]) -> dict[Any, Any]:
        """XREADGROUP's streams argument: what this group has not yet read of each log."""
        return {self._names.tenant(t).log: ">" for t in tenants}

    def _accept_reply(self, reply: Any) -> None:
        """Buffer the entries of an XREADGROUP reply."""
        for stream, items in reply or []:
            tenant_id = self._tenant_of(stream)
            for entry_id, fields in items:
                self._accept(tenant_id, entry_id, fields)

    async def _claim(self, max_count: int) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for tenant_id in self._tenants:
                pipe.xautoclaim(
                    self._names.tenant(tenant_id).log,
                    GROUP,
                    self.consumer,
                    self._claim_idle_ms,
                    start_id="0-0",
                    count=max_count,
                )
            results: list[Any] = await pipe.execute(raise_on_error=False)
        claimed = 0
        for tenant_id, result in zip(self._tenants, results, strict=True):
            if isinstance(result, Exception):
                continue  # NOGROUP and the like: the next read recreates the group
            for entry_id, fields in result[1]:
                if fields:  # deleted entries come back without fields
                    self._accept(tenant_id, entry_id, fields)
                    claimed += 1
        if claimed:
            _log.info("claimed %d log entries left pending by another consumer", claimed)

    def _tenant_of(self, stream: bytes | str) -> str:
        name = _decode(stream)
        return name[name.index("{") + 1 : name.index("}")]

    def _accept(
        self, tenant_id: str, entry_id: bytes | str, fields: dict[bytes, bytes] | None
    ) -> None:
        if not fields:
            return
        message = decode_line(fields[b"m"])
        if message.tenant_id != tenant_id:
            _log.error("log entry of another tenant in %s's stream; skipped", tenant_id)
            return
        self._buffer.append(
            LogEntry(f"{tenant_id}/{_decode(entry_id)}", message, fields[b"o"].decode())
        )


def _by_tenant(entries: Sequence[LogEntry]) -> dict[str, list[str]]:
    """Stream entry ids by tenant (a LogEntry's id is ``<tenant>/<stream entry id>``)."""
    by_tenant: dict[str, list[str]] = {}
    for entry in entries:
        tenant_id, _, entry_id = entry.entry_id.partition("/")
        by_tenant.setdefault(tenant_id, []).append(entry_id)
    return by_tenant


_log_check: type[PersistenceLog] = RedisLog
