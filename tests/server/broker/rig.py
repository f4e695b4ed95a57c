"""A broker under test, with the parts it needs: nodes that record what the broker hands
them, a real persistence worker draining the log, and a store (SQLite, or a recorder for
tests that need what no real store allows)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.auth.authority import scope_for_operator, scope_for_system
from server.broker.base import (
    Broker,
    ChannelSeed,
    ControlEvent,
    Draft,
    Published,
    SeedSource,
    open_log,
)
from server.broker.memory import MemoryBroker
from server.chat import seed_source
from storage.keys import MasterKeyring, TenantKeyStore
from storage.models import Message
from storage.store import Store
from storage.worker import PersistenceLog, PersistenceWorker
from tests.backends import shared_redis_url

TIMEOUT = 10.0
KINDS = ["memory", "redis"]


class Recorder:
    """A BrokerHandler that keeps everything and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.persisted: list[Message] = []
        self.ephemeral: list[tuple[str, str, bytes, str]] = []
        self.control: list[ControlEvent] = []
        self._changed = asyncio.Event()

    def _touch(self) -> None:
        self._changed.set()

    def on_message(self, message: Message) -> None:
        self.messages.append(message)
        self._touch()

    def on_persisted(self, messages: Sequence[Message]) -> None:
        self.persisted.extend(messages)
        self._touch()

    def on_ephemeral(self, tenant_id: str, channel_id: str, frame: bytes, origin: str) -> None:
        self.ephemeral.append((tenant_id, channel_id, frame, origin))
        self._touch()

    def on_control(self, event: ControlEvent) -> None:
        self.control.append(event)
        self._touch()

    async def until(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                # Also look again now and then: not every condition is a callback here.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

        await asyncio.wait_for(wait(), timeout)

    def seqs(self, tenant_id: str, channel_id: str) -> list[int]:
        return [
            m.seq for m in self.messages if (m.tenant_id, m.channel_id) == (tenant_id, channel_id)
        ]

    def persisted_ids(self) -> set[str]:
        return {m.id for m in self.persisted}


@dataclass
class Node:
    broker: Broker
    handler: Recorder

    async def publish(
        self,
        tenant_id: str,
        channel_id: str,
        body: str,
        *,
        sender: str = "alice",
        client_msg_id: str | None = None,
    ) -> Published:
        return await self.broker.publish(
            Draft(tenant_id, channel_id, "general", sender, body, client_msg_id)
        )


class RecordingStore:
    """Stands in for the store where a real one cannot hold the case (the same channel id
    in two tenants): remembers the batches the worker writes."""

    def __init__(self) -> None:
        self.messages = self
        self.rows: dict[str, Message] = {}

    async def insert_batch(self, batch: Sequence[tuple[Any, Message]]) -> None:
        for scope, message in batch:
            assert scope.tenant_id == message.tenant_id
            self.rows.setdefault(message.id, message)


async def _empty_seed(tenant_id: str, channel_id: str) -> ChannelSeed:
    return ChannelSeed(0, [])


@dataclass
class Rig:
    kind: str
    store: Any
    seed: SeedSource
    url: str = ""
    nodes_: list[Node] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    workers: list[PersistenceWorker] = field(default_factory=list)

    @property
    def multi_node(self) -> bool:
        return self.kind != "memory"

    @property
    def has_window(self) -> bool:
        return self.kind == "redis"

    async def node(self) -> Node:
        """A started node. The in-process broker serves one node: asking it for another
        returns the same one."""
        if self.kind == "memory" and self.nodes_:
            return self.nodes_[0]
        handler = Recorder()
        broker: Broker
        if self.kind == "memory":
            broker = MemoryBroker(self.seed, node_id="n0")
        else:
            from server.broker.redis import RedisBroker

            broker = RedisBroker(self.url, self.seed, node_id=f"n{len(self.nodes_)}")
        await broker.start(handler)
        node = Node(broker, handler)
        self.nodes_.append(node)
        await handler.until(broker.ready)
        if self.kind == "memory":
            self.start_worker(broker)  # type: ignore[arg-type]
        return node

    def start_worker(self, log: PersistenceLog | None = None) -> PersistenceWorker:
        if log is None:
            log = open_log(self.url, consumer=f"w{len(self.logs)}-{secrets.token_hex(2)}")
            self.logs.append(log)
        worker = PersistenceWorker(log, self.store, scope_for_system, block_ms=50)
        self.workers.append(worker)
        self.tasks.append(asyncio.create_task(worker.run()))
        return worker

    async def close(self) -> None:
        # Stop before cancelling, as the runtime does: on Python 3.11 a cancellation that
        # lands while asyncio.wait_for completes is swallowed.
        for worker in self.workers:
            worker.stop()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for log in self.logs:
            await log.close()
        for node in self.nodes_:
            await node.broker.close()

    async def lose_state(self, tenant_id: str, channel_id: str) -> None:
        """What a broker restart that kept nothing of this tenant looks like."""
        if self.kind == "memory":
            broker = self.nodes_[0].broker
            assert isinstance(broker, MemoryBroker)
            broker.forget(tenant_id, channel_id)
            return
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.url.split("?")[0])
        try:
            namespace = self.url.split("namespace=")[1].split("&")[0]
            keys = [k async for k in client.scan_iter(f"{namespace}:{{{tenant_id}}}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


async def redis_url(**options: object) -> str:
    base = await shared_redis_url()
    query = "&".join(f"{k}={v}" for k, v in {"claim_idle_ms": 500, **options}.items())
    return f"{base}?namespace=test-{secrets.token_hex(6)}&{query}"


async def drop_namespace(url: str) -> None:
    import redis.asyncio as aioredis

    namespace = url.split("namespace=")[1].split("&")[0]
    client = aioredis.from_url(url.split("?")[0])
    try:
        keys = [k async for k in client.scan_iter(f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def open_rig(
    kind: str, store: Any, seed: SeedSource | None = None, url: str | None = None
) -> AsyncIterator[Rig]:
    if kind == "redis" and url is None:
        url = await redis_url()
    rig = Rig(kind, store, seed or _empty_seed, url or "")
    if kind == "redis":
        rig.start_worker()
    try:
        yield rig
    finally:
        await rig.close()
        if kind == "redis" and rig.url.startswith("redis://"):
            await drop_namespace(rig.url)


async def sqlite_store(directory: Path) -> Store:
    store = Store.from_url(
        f"sqlite:///{directory / 'baychat.db'}",
        MasterKeyring({1: secrets.token_bytes(32)}, 1),
        TenantKeyStore(directory / "keys"),
    )
    await store.open(migrate_schema=True)
    return store


async def make_channel(store: Store, name: str = "general") -> tuple[str, str]:
    """A new tenant with one channel: (tenant id, channel id)."""
    tenant = await store.tenants.create(f"t-{secrets.token_hex(4)}")
    channel = await store.channels.create(
        scope_for_operator(tenant.id), name, private=False, created_by="someone"
    )
    return tenant.id, channel.id


def store_seed(store: Store) -> SeedSource:
    return seed_source(store)
