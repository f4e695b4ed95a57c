"""In-process broker: one node, no setup. The embedded default.

Its persistence log is a bounded in-memory queue drained by the in-process worker. Because
that log does not survive the process, this broker releases fan-out only once the worker
has committed a message (in ``done``): nobody ever sees a message that a crash could take
back, so a seq seen by a client is never reused after a restart.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.broker.base import (
    Broker,
    BrokerHandler,
    ChannelSeed,
    ControlEvent,
    Draft,
    Published,
    SeedSource,
)
from storage.ids import new_message_id, now_ms
from storage.models import Message
from storage.worker import LogEntry, PersistenceLog

IDEMPOTENCY_WINDOW = 1000  # per channel: retries older than this many messages are new
LOG_CAPACITY = 100_000


@dataclass(slots=True)
class _ChannelState:
    last_seq: int
    keys: OrderedDict[tuple[str, str], Message] = field(default_factory=OrderedDict)


class MemoryBroker:
    def __init__(
        self, seed: SeedSource, *, node_id: str = "local", log_capacity: int = LOG_CAPACITY
    ) -> None:
        self.node_id = node_id
        self._seed = seed
        self._handler: BrokerHandler | None = None
        self._channels: dict[tuple[str, str], _ChannelState] = {}
        self._seeding: dict[tuple[str, str], asyncio.Lock] = {}
        self._log: asyncio.Queue[LogEntry] = asyncio.Queue(maxsize=log_capacity)
        self._in_line = asyncio.Lock()  # publishers waiting for room in the log
        self._waiting = 0
        self._pending: set[str] = set()
        # Entries handed to the worker and not yet done: handed out again on the next read,
        # so a failed batch is retried rather than lost (one consumer per process).
        self._inflight: list[LogEntry] = []
        self._reader: asyncio.Future[None] | None = None  # the worker waiting in ``read``

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    async def _state(self, tenant_id: str, channel_id: str) -> _ChannelState:
        key = (tenant_id, channel_id)
        state = self._channels.get(key)
        if state is not None:
            return state
        lock = self._seeding.setdefault(key, asyncio.Lock())
        async with lock:
            state = self._channels.get(key)
            if state is None:
                seed: ChannelSeed = await self._seed(tenant_id, channel_id)
                state = _ChannelState(seed.last_seq)
                for record in reversed(seed.recent):  # oldest first, newest last
                    state.keys[(record.sender_id, record.client_msg_id)] = Message(
                        tenant_id=tenant_id,
                        channel_id=channel_id,
                        channel="",
                        seq=record.seq,
                        id=record.message_id,
                        sender_id=record.sender_id,
                        body="",
                        sent_at=record.sent_at,
                        client_msg_id=record.client_msg_id,
                    )
                self._channels[key] = state
        return state

    def publish_now(self, draft: Draft) -> Published | None:
        """``publish`` in the caller's step, or None where it would wait: the channel is not
        loaded yet, or the log is full or publishers wait for room in it (then ``publish``,
        which waits in line behind them, keeps each channel's log order)."""
        if draft.budget is not None:
            raise ValueError("the in-process broker keeps no shared rate-limit budgets")
        state = self._channels.get((draft.tenant_id, draft.channel_id))
        if state is None:
            return None
        if draft.client_msg_id is not None:
            original = state.keys.get((draft.sender_id, draft.client_msg_id))
            if original is not None:
                return Published(original, True, original.id not in self._pending)
        if self._waiting or self._log.full():
            return None
        entry = self._allocate(state, draft)
        self._log.put_nowait(entry)
        reader = self._reader
        if reader is not None:
            _wake(reader)
        return Published(entry.message, False, False)

    async def publish(self, draft: Draft) -> Published:
        published = self.publish_now(draft)
        if published is not None:
            return published
        state = self._channels.get((draft.tenant_id, draft.channel_id)) or await self._state(
            draft.tenant_id, draft.channel_id
        )
        if draft.client_msg_id is not None:
            original = state.keys.get((draft.sender_id, draft.client_msg_id))
            if original is not None:
                return Published(original, True, original.id not in self._pending)
        # From the allocation to the enqueue nothing awaits but the wait for room in the
        # log, which keeps arrival order (``_enqueue_in_line``).
        entry = self._allocate(state, draft)
        if self._waiting or self._log.full():
            await self._enqueue_in_line(entry)
        else:
            self._log.put_nowait(entry)
        reader = self._reader
        if reader is not None:
            _wake(reader)
        return Published(entry.message, False, False)

    def _allocate(self, state: _ChannelState, draft: Draft) -> LogEntry:
        """The channel's next seq and the message's log entry, remembered under its
        idempotency key (nothing here awaits, so seq allocation is atomic)."""
        state.last_seq += 1
        message = Message(
            tenant_id=draft.tenant_id,
            channel_id=draft.channel_id,
            channel=draft.channel,
            seq=state.last_seq,
            id=new_message_id(),
            sender_id=draft.sender_id,
            body=draft.body,
            sent_at=now_ms(),
            client_msg_id=draft.client_msg_id,
        )
        if draft.client_msg_id is not None:
            state.keys[(draft.sender_id, draft.client_msg_id)] = message
            if len(state.keys) > IDEMPOTENCY_WINDOW:
                state.keys.popitem(last=False)
        self._pending.add(message.id)
        return LogEntry(message.id, message, self.node_id)

    async def _enqueue_in_line(self, entry: LogEntry) -> None:
        """Backpressure: the publisher waits for the worker, behind every publisher already
        waiting. ``Queue.put`` alone does not keep that order (a slot freed for a waiter can
        be taken by a later ``put_nowait``, or by a waiter that went round again), and the
        log must hold a channel's messages in seq order: the lock is first come, first
        served, and nobody skips it while anyone waits."""
        self._waiting += 1
        try:
            async with self._in_line:
                await self._log.put(entry)
        finally:
            self._waiting -= 1

    async def subscribe(self, tenant_id: str, channel_id: str) -> None:
        return None  # one node: the hub already knows who listens

    async def unsubscribe(self, tenant_id: str, channel_id: str) -> None:
        return None

    async def publish_ephemeral(
        self, tenant_id: str, channel_id: str, frame: bytes, origin: str
    ) -> None:
        if self._handler is not None:
            self._handler.on_ephemeral(tenant_id, channel_id, frame, origin)

    async def publish_control(self, event: ControlEvent) -> None:
        if self._handler is not None:
            self._handler.on_control(event)

    async def recent(self, tenant_id: str, channel_id: str, since: int) -> list[Message] | None:
        return None  # everything fanned out is already in the store

    async def forget_recent(self, tenant_id: str) -> None:
        return None  # keeps no window: fan-out happens after the store has the message

    def ready(self) -> bool:
        return self._handler is not None

    def forget(self, tenant_id: str, channel_id: str) -> None:
        """Drop cached state for a channel (after a restore or a tenant deletion)."""
        self._channels.pop((tenant_id, channel_id), None)

    # -- PersistenceLog ---------------------------------------------------------------

    async def read(self, max_count: int, block_ms: int) -> list[LogEntry]:
        if self._inflight:
            return list(self._inflight)
        log = self._log
        if log.empty():
            # One future and one timer per wait, woken by ``publish``: ``wait_for`` on
            # ``Queue.get`` made a task per batch, and at low rates a batch is a message.
            loop = asyncio.get_running_loop()
            waiter = self._reader = loop.create_future()
            timer = loop.call_later(block_ms / 1000, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._reader = None
        batch: list[LogEntry] = []
        while len(batch) < max_count:
            try:
                batch.append(log.get_nowait())
            except asyncio.QueueEmpty:
                break
        self._inflight = batch
        return list(batch)

    async def done(self, entries: Sequence[LogEntry]) -> None:
        finished = {entry.entry_id for entry in entries}
        self._inflight = [e for e in self._inflight if e.entry_id not in finished]
        messages = [entry.message for entry in entries]
        for message in messages:
            self._pending.discard(message.id)
        handler = self._handler
        if handler is not None:
            for message in messages:
                handler.on_message(message)
            handler.on_persisted(messages)

    def backlog(self) -> int:
        return self._log.qsize()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_broker_check: type[Broker] = MemoryBroker
_log_check: type[PersistenceLog] = MemoryBroker
