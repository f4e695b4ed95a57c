"""The persistence worker commits in groups and never loses or doubles a message."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from server.auth.authority import scope_for_operator, scope_for_system
from server.broker.base import Draft
from server.broker.memory import MemoryBroker
from server.chat import seed_source
from storage.keys import MasterKeyring, TenantKeyStore
from storage.models import Message
from storage.store import Store
from storage.worker import LogEntry, PersistenceWorker


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store.from_url(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        MasterKeyring({1: secrets.token_bytes(32)}, 1),
        TenantKeyStore(tmp_path / "keys"),
    )
    await store.open(migrate_schema=True)
    yield store
    await store.close()


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[Message] = []
        self.persisted: list[Message] = []

    def on_message(self, message: Message) -> None:
        self.delivered.append(message)

    def on_persisted(self, messages: Sequence[Message]) -> None:
        self.persisted.extend(messages)

    def on_ephemeral(self, tenant_id: str, channel_id: str, frame: bytes, origin: str) -> None:
        pass

    def on_control(self, event: object) -> None:
        pass


async def test_a_burst_is_committed_in_few_batches(store: Store) -> None:
    tenant = await store.tenants.create("acme")
    scope = scope_for_operator(tenant.id)
    channel = await store.channels.create(scope, "burst", private=False, created_by="u")
    broker = MemoryBroker(seed_source(store))
    recorder = Recorder()
    await broker.start(recorder)
    batches: list[int] = []
    worker = PersistenceWorker(
        broker, store, scope_for_system, on_batch=lambda n, _: batches.append(n)
    )
    for i in range(500):
        await broker.publish(Draft(tenant.id, channel.id, "burst", "u", f"m{i}", None))
    task = asyncio.create_task(worker.run())
    while len(recorder.persisted) < 500:
        await asyncio.sleep(0.01)
    worker.stop()
    task.cancel()

    assert sum(batches) == 500
    assert len(batches) < 50  # group commit: far fewer transactions than messages
    assert [m.seq for m in recorder.delivered] == list(range(1, 501))
    stored = await store.messages.after(scope, channel.id, "burst", 0, 1000)
    assert [m.body for m in stored] == [f"m{i}" for i in range(500)]


async def test_a_replayed_batch_is_stored_once(store: Store) -> None:
    tenant = await store.tenants.create("acme")
    scope = scope_for_operator(tenant.id)
    channel = await store.channels.create(scope, "c", private=False, created_by="u")
    message = Message(tenant.id, channel.id, "c", 1, "mid-1", "u", "hello", 1)
    batch = [(scope_for_system(tenant.id), message)]
    await store.messages.insert_batch(batch)
    await store.messages.insert_batch(batch)  # the worker crashed before marking it done
    assert len(await store.messages.after(scope, channel.id, "c", 0, 10)) == 1


class FlakyLog:
    """A log whose first `done` fails after the commit, as a crash between the two would."""

    def __init__(self, entries: list[LogEntry]) -> None:
        self.entries = entries
        self.done_calls = 0

    async def read(self, max_count: int, block_ms: int) -> list[LogEntry]:
        if self.entries:
            return list(self.entries)
        await asyncio.sleep(block_ms / 1000)
        return []

    async def done(self, entries: Sequence[LogEntry]) -> None:
        self.done_calls += 1
        if self.done_calls == 1:
            raise ConnectionError("log unavailable")
        self.entries = []


async def test_a_batch_whose_done_failed_is_retried_without_duplicates(store: Store) -> None:
    tenant = await store.tenants.create("acme")
    scope = scope_for_operator(tenant.id)
    channel = await store.channels.create(scope, "c", private=False, created_by="u")
    entries = [
        LogEntry(f"e{i}", Message(tenant.id, channel.id, "c", i, f"m{i}", "u", f"b{i}", i), "n")
        for i in range(1, 4)
    ]
    log = FlakyLog(entries)
    worker = PersistenceWorker(log, store, scope_for_system, block_ms=10)
    task = asyncio.create_task(worker.run())
    while log.done_calls < 2:
        await asyncio.sleep(0.01)
    worker.stop()
    task.cancel()
    stored = await store.messages.after(scope, channel.id, "c", 0, 10)
    assert [m.seq for m in stored] == [1, 2, 3]
