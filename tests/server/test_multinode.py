"""The cluster as real OS processes: two gateways (`baychat serve`, Redis broker, no
embedded worker), one `baychat worker`, a private Redis that the tests kill and restart,
and Postgres (a fresh database, migrated by `baychat migrate` as the owner role; the
processes connect as the application role). Clients are real WebSocket clients that move
between gateways the way a chat app does: reconnect, resubscribe with ``since``, resend
what was not acked with the same ``client_msg_id``.

Every count is checked against the acks: an acked message is stored exactly once and
reaches every reader exactly once, in seq order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from server.auth.authority import scope_for_operator, scope_for_system
from server.auth.tokens import SigningKeys
from server.broker.redis_keys import GROUP
from server.config import Settings
from server.runtime import make_passwords, open_store
from storage.models import Channel, Tenant, User
from storage.store import Store
from tests.backends import OwnRedis, free_port, fresh_postgres, own_redis
from tests.processes import Processes, Service, baychat_command

PASSWORD = "correct horse battery staple"
TIMEOUT = 20.0
NAMESPACE = "mn"
T = TypeVar("T")


@dataclass
class Cluster:
    procs: Processes
    env: dict[str, str]
    settings: Settings
    store: Store
    redis: OwnRedis
    gateways: list[Service] = field(default_factory=list)
    workers: list[Service] = field(default_factory=list)

    async def start_gateway(self) -> Service:
        gateway = self.procs.gateway(f"gateway-{len(self.gateways)}", self.env)
        self.gateways.append(gateway)
        await gateway.wait_ready()
        return gateway

    def start_worker(self, http_port: int | None = None) -> Service:
        worker = self.procs.worker(f"worker-{len(self.workers)}", self.env, http_port)
        self.workers.append(worker)
        return worker

    async def tenant(self, *users: str, channel: str = "general") -> tuple[Tenant, list[User]]:
        tenant = await self.store.tenants.create(f"t-{secrets.token_hex(4)}")
        scope = scope_for_operator(tenant.id)
        hashed = await make_passwords(self.settings).hash(PASSWORD)
        created = [
            await self.store.users.create(scope, f"{name}@example.com", hashed, "member")
            for name in users
        ]
        await self.store.channels.create(scope, channel, private=False, created_by=created[0].id)
        return tenant, created

    async def channel(self, tenant: Tenant, name: str = "general") -> Channel:
        return await self.store.channels.by_name(scope_for_operator(tenant.id), name)

    async def stored(self, tenant: Tenant, name: str = "general") -> list[tuple[int, str]]:
        channel = await self.channel(tenant, name)
        messages = await self.store.messages.after(
            scope_for_system(tenant.id), channel.id, name, 0, 100_000
        )
        return [(m.seq, m.body) for m in messages]

    async def client(self, gateway: Service, tenant: Tenant, user: User) -> Client:
        async with httpx.AsyncClient(base_url=gateway.http_url, timeout=TIMEOUT) as http:
            response = await http.post(
                "/api/v1/auth/login",
                json={"tenant": tenant.slug, "email": user.email, "password": PASSWORD},
            )
        assert response.status_code == 200, response.text
        return Client(response.json()["access_token"])


class Client:
    """One user's chat app: a connection that can move to another gateway, the messages
    it saw (in arrival order) and the acks it got, by client_msg_id."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.ws: ClientConnection | None = None
        self.messages: list[dict[str, Any]] = []
        self.acks: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def connect(self, gateway: Service, channel: str | None = None) -> None:
        """Connect (again) and, with ``channel``, subscribe from the last seq seen."""
        await self.disconnect()
        ws = await websockets.connect(
            gateway.ws_url,
            open_timeout=TIMEOUT,
            close_timeout=0.5,
            additional_headers={"Authorization": f"Bearer {self.token}"},  # an app, no Origin
        )
        assert (await self._next(ws))["type"] == "ready"
        if channel is not None:
            request: dict[str, Any] = {"type": "subscribe", "channel": channel, "id": "sub"}
            if self.messages:
                request["since"] = self.messages[-1]["seq"]
            await ws.send(json.dumps(request))
            while True:
                frame = await self._next(ws)
                if frame["type"] == "subscribed":
                    break
                assert frame["type"] == "presence", frame
        self.ws = ws
        self._reader = asyncio.create_task(self._read(ws))

    async def _next(self, ws: ClientConnection) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        return frame

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "message":
                    self.messages.append(frame)
                elif frame["type"] == "ack":
                    self.acks[frame["id"]] = frame
                elif frame["type"] == "error":
                    self.errors.append(frame)
                self._changed.set()
        self._changed.set()

    async def disconnect(self) -> None:
        if self.ws is not None:
            self.ws.transport.abort()
        if self._reader is not None:
            await self._reader
        self.ws = self._reader = None

    async def closed(self) -> None:
        """Until the server side is gone."""
        if self._reader is not None:
            await asyncio.wait_for(self._reader, TIMEOUT)

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def send(self, channel: str, cmid: str) -> None:
        """Publish the body ``cmid`` with client_msg_id ``cmid``; do not wait for the ack."""
        assert self.ws is not None
        frame = {"type": "publish", "channel": channel, "body": cmid, "client_msg_id": cmid}
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.send(json.dumps({**frame, "id": cmid}))

    async def until(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.1)

        await asyncio.wait_for(wait(), timeout)

    async def publish(self, channel: str, cmid: str) -> dict[str, Any]:
        await self.send(channel, cmid)
        await self.until(lambda: cmid in self.acks)
        return self.acks[cmid]

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages]

    def bodies(self) -> list[str]:
        return [m["body"] for m in self.messages]


def _env(data_dir: Path, database_url: str, owner_url: str, broker_url: str) -> dict[str, str]:
    return {
        "BAYCHAT_DATA_DIR": str(data_dir),
        "BAYCHAT_DATABASE_URL": database_url,
        "BAYCHAT_DATABASE_OWNER_URL": owner_url,
        "BAYCHAT_BROKER_URL": broker_url,
        "BAYCHAT_EMBEDDED_WORKER": "0",
        "BAYCHAT_MIGRATE_ON_START": "0",
        "BAYCHAT_KEYSTORE_DIR": str(data_dir / "keys"),
        "BAYCHAT_MASTER_KEYS": "1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "BAYCHAT_JWT_KEYS": SigningKeys.generate().to_json().decode(),
        # These tests push hundreds of messages through one connection in a burst.
        "BAYCHAT_RATE_WS_FRAMES": "100000/10 seconds",
        "BAYCHAT_RATE_PUBLISH_CONNECTION": "100000/10 seconds",
        "BAYCHAT_RATE_PUBLISH_USER": "100000/10 seconds",
    }


def _migrate(env: dict[str, str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        done = subprocess.run(
            [*baychat_command(), "migrate"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    assert done.returncode == 0, log_path.read_text()


@contextlib.asynccontextmanager
async def database(logs: Path) -> AsyncIterator[tuple[str, str]]:
    """A fresh Postgres database migrated by `baychat migrate` as the owner role:
    (application URL, owner URL). Gateways and workers connect as the application role."""
    async with fresh_postgres() as db:
        env = {"BAYCHAT_DATABASE_URL": db.app_url, "BAYCHAT_DATABASE_OWNER_URL": db.owner_url}
        await asyncio.to_thread(_migrate, env, logs / "migrate.log")
        yield db.app_url, db.owner_url


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    with own_redis() as redis_server:
        async with database(tmp_path / "logs") as (app_url, owner_url):
            broker_url = f"{redis_server.url}?namespace={NAMESPACE}&claim_idle_ms=1000"
            env = _env(tmp_path, app_url, owner_url, broker_url)
            settings = Settings.from_env().with_(
                data_dir=tmp_path,
                database_url=app_url,
                database_owner_url=owner_url,
                broker_url=broker_url,
                keystore_dir=tmp_path / "keys",
                master_keys=env["BAYCHAT_MASTER_KEYS"],
                jwt_keys=env["BAYCHAT_JWT_KEYS"],
            )
            store = open_store(settings)
            await store.open()
            try:
                async with Processes(tmp_path / "logs") as procs:
                    cluster = Cluster(procs, env, settings, store, redis_server)
                    cluster.start_worker()
                    await asyncio.gather(cluster.start_gateway(), cluster.start_gateway())
                    yield cluster
            finally:
                await store.close()


def assert_exactly_once_in_order(reader: Client, expected: list[str]) -> None:
    assert reader.seqs() == list(range(1, len(expected) + 1))
    assert sorted(reader.bodies()) == sorted(expected)


async def test_two_gateways_chat_and_every_ack_means_stored(cluster: Cluster) -> None:
    a, b = cluster.gateways
    tenant, (alice, bob) = await cluster.tenant("alice", "bob")
    on_a = await cluster.client(a, tenant, alice)
    on_b = await cluster.client(b, tenant, bob)
    await on_a.connect(a, "general")
    await on_b.connect(b, "general")

    for i in range(10):
        await (on_a if i % 2 else on_b).publish("general", f"m{i}")

    expected = [f"m{i}" for i in range(10)]
    for reader in (on_a, on_b):
        await reader.until(lambda r=reader: len(r.messages) == 10)
        assert_exactly_once_in_order(reader, expected)
    assert sorted(body for _, body in await cluster.stored(tenant)) == sorted(expected)


async def test_clients_of_a_killed_gateway_recover_on_the_other_without_loss_or_duplicates(
    cluster: Cluster,
) -> None:
    a, b = cluster.gateways
    tenant, (alice, bob, carol) = await cluster.tenant("alice", "bob", "carol")
    writer = await cluster.client(a, tenant, alice)
    on_a = await cluster.client(a, tenant, carol)
    on_b = await cluster.client(b, tenant, bob)
    await writer.connect(a)
    await on_a.connect(a, "general")
    await on_b.connect(b, "general")

    for i in range(20):
        await writer.publish("general", f"m{i:02}")
    for i in range(20, 30):
        await writer.send("general", f"m{i:02}")  # in flight when the gateway dies
    a.kill()
    await writer.closed()
    await on_a.closed()

    await writer.connect(b)
    await on_a.connect(b, "general")  # resubscribes with since = the last seq it saw
    expected = [f"m{i:02}" for i in range(40)]
    for cmid in expected:
        if cmid not in writer.acks:
            await writer.publish("general", cmid)  # a retry of m20..m29, or new
    await writer.publish("general", "end")

    assert set(writer.acks) == {*expected, "end"}
    for reader in (on_a, on_b):
        await reader.until(lambda r=reader: "end" in r.bodies())
        assert_exactly_once_in_order(reader, [*expected, "end"])
        acked_ids = {ack["message_id"] for ack in writer.acks.values()}
        assert {m["message_id"] for m in reader.messages} == acked_ids
    stored = await cluster.stored(tenant)
    assert sorted(body for _, body in stored) == sorted([*expected, "end"])
    assert [seq for seq, _ in stored] == list(range(1, 42))


async def test_a_worker_killed_mid_batch_is_replaced_and_every_ack_is_stored_once(
    cluster: Cluster,
) -> None:
    a, b = cluster.gateways
    tenant, (alice, bob) = await cluster.tenant("alice", "bob")
    writer = await cluster.client(a, tenant, alice)
    reader = await cluster.client(b, tenant, bob)
    await writer.connect(a)
    await reader.connect(b, "general")
    expected = [f"m{i:03}" for i in range(300)]

    await writer.publish("general", expected[0])  # the worker is up and reading
    # Frozen inside its blocking read, the worker still gets the next entries from Redis
    # and holds them uncommitted when it is killed, exactly as in a crash mid-batch. A
    # freeze that missed the read (it was between two commands) is undone and retried.
    worker = cluster.workers[0]
    sent = 1
    for _ in range(5):
        await asyncio.sleep(0.2)
        worker.signal(signal.SIGSTOP)
        for cmid in expected[sent : sent + 50]:
            await writer.send("general", cmid)
        sent += 50
        if await _probe(lambda: _pending_entries(cluster, tenant), lambda held: held > 0):
            break
        worker.signal(signal.SIGCONT)
    else:
        pytest.fail("could not catch the worker inside a read")
    worker.kill()
    cluster.start_worker()
    for cmid in expected[sent:]:
        await writer.send("general", cmid)

    await writer.until(lambda: len(writer.acks) == len(expected), timeout=60)
    await reader.until(lambda: len(reader.messages) == len(expected))
    assert_exactly_once_in_order(reader, expected)
    stored = await cluster.stored(tenant)
    assert sorted(body for _, body in stored) == expected
    assert [seq for seq, _ in stored] == list(range(1, 301))
    # SIGTERM: the replacement finishes what it holds and exits cleanly.
    assert await asyncio.to_thread(cluster.workers[1].stop) == 0
    assert await _pending_entries(cluster, tenant) == 0


async def _probe(
    probe: Callable[[], Awaitable[T]], condition: Callable[[T], bool], timeout: float = 1.5
) -> bool:
    for _ in range(int(timeout / 0.05)):
        if condition(await probe()):
            return True
        await asyncio.sleep(0.05)
    return False


async def _pending_entries(cluster: Cluster, tenant: Tenant) -> int:
    """Log entries a worker has read and not marked done."""
    client = aioredis.from_url(cluster.redis.url)
    try:
        stream = f"{NAMESPACE}:{{{tenant.id}}}:log"
        return int((await client.xpending(stream, GROUP))["pending"])
    finally:
        await client.aclose()


async def test_a_redis_restart_makes_gateways_unready_then_resubscribe_without_losing_acks(
    cluster: Cluster,
) -> None:
    a, b = cluster.gateways
    tenant, (alice, bob) = await cluster.tenant("alice", "bob")
    writer = await cluster.client(a, tenant, alice)
    reader = await cluster.client(b, tenant, bob)
    await writer.connect(a)
    await reader.connect(b, "general")
    expected = [f"m{i:02}" for i in range(40)]

    for cmid in expected[:15]:
        await writer.publish("general", cmid)
    for cmid in expected[15:20]:
        await writer.send("general", cmid)
    cluster.redis.stop(kill=True)
    for gateway in (a, b):
        await _until_status(gateway, "/readyz", 503)
    cluster.redis.start()
    for gateway in (a, b):
        await gateway.wait_ready()

    # A publish that met the outage was answered with `unavailable` and the connection
    # closed with TRY_AGAIN; the app reconnects and resends whatever is not acked.
    if not writer.connected:
        await writer.connect(a)
    if not reader.connected:
        await reader.connect(b, "general")
    for cmid in expected:
        if cmid not in writer.acks:
            if not writer.connected:
                await writer.connect(a)
            await writer.publish("general", cmid)

    assert set(writer.acks) == set(expected)
    await reader.until(lambda: len(reader.messages) == len(expected))
    assert_exactly_once_in_order(reader, expected)
    stored = await cluster.stored(tenant)
    assert sorted(body for _, body in stored) == expected


async def _until_status(service: Service, path: str, status: int) -> None:
    for _ in range(int(TIMEOUT / 0.05)):
        if await service.status(path) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{service.name}{path} never answered {status}")


async def test_the_same_channel_name_in_two_tenants_never_crosses(cluster: Cluster) -> None:
    a, b = cluster.gateways
    one, (alice1, bob1) = await cluster.tenant("alice", "bob")
    two, (alice2, bob2) = await cluster.tenant("alice", "bob")
    writer1 = await cluster.client(b, one, alice1)
    writer2 = await cluster.client(a, two, alice2)
    reader1 = await cluster.client(a, one, bob1)
    reader2 = await cluster.client(b, two, bob2)
    for client, gateway in ((writer1, b), (writer2, a), (reader1, a), (reader2, b)):
        await client.connect(gateway, "general")

    for i in range(5):
        await writer1.publish("general", f"one-{i}")
        await writer2.publish("general", f"two-{i}")
    await writer1.publish("general", "one-end")
    await writer2.publish("general", "two-end")

    for reader, prefix in ((reader1, "one-"), (reader2, "two-")):
        await reader.until(lambda r=reader, p=prefix: f"{p}end" in r.bodies())
        assert_exactly_once_in_order(reader, [*(f"{prefix}{i}" for i in range(5)), f"{prefix}end"])
    assert all(body.startswith("one-") for _, body in await cluster.stored(one))
    assert all(body.startswith("two-") for _, body in await cluster.stored(two))


def _sample(text: str, name: str) -> float:
    """The value of one unlabelled sample in a Prometheus exposition (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return 0.0


async def test_the_worker_serves_health_and_its_own_persistence_metrics(cluster: Cluster) -> None:
    # The fixture's worker has no HTTP: stop it, and let one that serves HTTP take over.
    assert cluster.workers[0].stop() == 0
    worker = cluster.start_worker(http_port=free_port())
    await worker.wait_ready()
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=5) as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "checks": {"workers": True, "store": True}}

        gateway = cluster.gateways[0]
        tenant, (alice,) = await cluster.tenant("alice")
        writer = await cluster.client(gateway, tenant, alice)
        await writer.connect(gateway, "general")
        for i in range(5):
            await writer.publish("general", f"m{i}")  # each ack means the worker stored it

        # The batch is counted just after its entries are marked done, which is what lets
        # the ack go out: the last count can trail the last ack by a moment.
        async def counted() -> str:
            while True:
                text = (await http.get("/metrics")).text
                if _sample(text, "baychat_persistence_batch_size_sum") >= 5:
                    return text
                await asyncio.sleep(0.05)

        text = await asyncio.wait_for(counted(), TIMEOUT)
        assert _sample(text, "baychat_persistence_batch_size_sum") == 5
        assert _sample(text, "baychat_persistence_batch_size_count") >= 1
        assert _sample(text, "process_cpu_seconds_total") > 0
    # The gateway stored nothing itself: the persistence work shows on the worker only.
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=5) as http:
        gateway_text = (await http.get("/metrics")).text
    assert _sample(gateway_text, "baychat_persistence_batch_size_count") == 0

    assert worker.stop() == 0  # SIGTERM: finishes cleanly, and the endpoint goes with it
    assert await worker.status("/healthz") is None
