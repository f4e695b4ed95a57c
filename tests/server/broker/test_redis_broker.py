"""What only the Redis broker has: its key layout, a connection that drops and comes back,
a worker that dies holding entries, a full log, and acks no notification brought."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from protocol.errors import RateLimitedError, UnavailableError
from server.auth.authority import scope_for_system
from server.broker import redis as redis_broker
from server.broker import redis_fanout
from server.broker.base import ControlEvent, Draft, Published, open_log
from server.broker.redis_batch import ScriptArgs, ScriptBatcher, pack
from server.broker.redis_keys import GROUP, encode_lines
from server.ratelimit import RateLimiter
from storage.ids import new_id
from storage.models import Message
from storage.store import Store
from storage.worker import LogEntry
from tests.backends import OwnRedis, own_redis
from tests.harness import make_settings
from tests.server.broker.rig import make_channel, open_rig, redis_url, sqlite_store, store_seed


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await sqlite_store(tmp_path)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def private_redis() -> Iterator[OwnRedis]:
    with own_redis() as server:
        yield server


@pytest.fixture
def reconnect_gate(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """While cleared, a listener that lost its connection does not reconnect: the test
    decides what is published while a node is deaf."""
    gate = asyncio.Event()
    gate.set()
    session = redis_fanout.Fanout._session

    async def gated(self: redis_fanout.Fanout, pubsub: Any) -> None:
        await gate.wait()
        await session(self, pubsub)

    monkeypatch.setattr(redis_fanout.Fanout, "_session", gated)
    return gate


def namespaced(base: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{base}?namespace=t{secrets.token_hex(4)}&{query}"


def test_broker_options_ride_in_the_url_and_the_rest_goes_to_redis() -> None:
    url, options = redis_broker.RedisOptions.split_url(
        "rediss://user:pw@redis:6380/2?namespace=prod&window=500&ssl_cert_reqs=required"
    )
    assert url == "rediss://user:pw@redis:6380/2?ssl_cert_reqs=required"
    assert (options.namespace, options.window) == ("prod", 500)
    assert options.claim_idle_ms == redis_broker.RedisOptions().claim_idle_ms
    with pytest.raises(ValueError, match="namespace"):
        redis_broker.RedisOptions.split_url("redis://x/0?namespace=a{b}")
    with pytest.raises(ValueError, match="positive"):
        redis_broker.RedisOptions.split_url("redis://x/0?window=0")


async def test_every_key_carries_its_tenant_as_a_hash_tag(store: Store) -> None:
    url = await redis_url()
    namespace = url.split("namespace=")[1].split("&")[0]
    async with open_rig("redis", store, store_seed(store), url=url) as rig:
        tenant_id, channel_id = await make_channel(store)
        node = await rig.node()
        await node.broker.subscribe(tenant_id, channel_id)
        sent = await node.publish(tenant_id, channel_id, "hi", client_msg_id="c1")
        await node.broker.publish_control(ControlEvent("x", tenant_id, "y"))
        await node.handler.until(lambda: sent.message.id in node.handler.persisted_ids())

        client = aioredis.from_url(url.split("?")[0])
        try:
            keys = {k.decode() async for k in client.scan_iter(f"{namespace}:*")}
            channels = {c.decode() for c in await client.pubsub_channels(f"{namespace}:*")}
        finally:
            await client.aclose()

    directory = {f"{namespace}:log:tenants", f"{namespace}:control:log"}
    tenant_keys = keys - directory
    assert tenant_keys, keys
    assert all(k.startswith(f"{namespace}:{{{tenant_id}}}:") for k in tenant_keys), keys
    assert f"{namespace}:{{{tenant_id}}}:ch:{channel_id}" in channels
    assert {c for c in channels if "{" not in c} == {
        f"{namespace}:control",
        f"{namespace}:node:{node.broker.node_id}",
    }


async def test_a_dropped_subscription_reconnects_and_delivers_what_it_missed_in_order(
    store: Store, private_redis: OwnRedis, reconnect_gate: asyncio.Event
) -> None:
    url = namespaced(private_redis.url, claim_idle_ms=500)
    async with open_rig("redis", store, store_seed(store), url=url) as rig:
        tenant_id, channel_id = await make_channel(store)
        listener, publisher = await rig.node(), await rig.node()
        await listener.broker.subscribe(tenant_id, channel_id)
        await publisher.publish(tenant_id, channel_id, "before")
        await listener.handler.until(lambda: listener.handler.seqs(tenant_id, channel_id) == [1])

        reconnect_gate.clear()
        admin = aioredis.from_url(private_redis.url)
        await admin.client_kill_filter(_type="pubsub")
        await admin.aclose()
        await listener.handler.until(lambda: not listener.broker.ready())
        for i in range(5):
            await publisher.publish(tenant_id, channel_id, f"while deaf {i}")
        reconnect_gate.set()

        # Nothing else is published: the catch-up alone must bring the missed ones.
        await listener.handler.until(listener.broker.ready)
        await listener.handler.until(lambda: len(listener.handler.seqs(tenant_id, channel_id)) > 5)
        await publisher.publish(tenant_id, channel_id, "after")
        await listener.handler.until(lambda: len(listener.handler.seqs(tenant_id, channel_id)) > 6)
        assert listener.handler.seqs(tenant_id, channel_id) == list(range(1, 8))


async def test_a_gap_beyond_the_window_sends_the_channels_subscribers_back_to_the_store(
    store: Store, private_redis: OwnRedis, reconnect_gate: asyncio.Event
) -> None:
    url = namespaced(private_redis.url, window=2)
    async with open_rig("redis", store, store_seed(store), url=url) as rig:
        tenant_id, channel_id = await make_channel(store)
        listener, publisher = await rig.node(), await rig.node()
        await listener.broker.subscribe(tenant_id, channel_id)
        await publisher.publish(tenant_id, channel_id, "seen")
        await listener.handler.until(lambda: listener.handler.seqs(tenant_id, channel_id) == [1])

        reconnect_gate.clear()
        admin = aioredis.from_url(private_redis.url)
        await admin.client_kill_filter(_type="pubsub")
        await admin.aclose()
        await listener.handler.until(lambda: not listener.broker.ready())
        for i in range(4):
            await publisher.publish(tenant_id, channel_id, f"missed {i}")
        reconnect_gate.set()
        await listener.handler.until(listener.broker.ready)

        resync = ControlEvent("channel_resync", tenant_id, channel_id)
        await listener.handler.until(lambda: resync in listener.handler.control)
        assert listener.handler.seqs(tenant_id, channel_id) == [1]


async def test_after_a_redis_restart_nodes_are_unready_then_resume_without_reusing_seqs(
    store: Store, private_redis: OwnRedis
) -> None:
    url = namespaced(private_redis.url, claim_idle_ms=500)
    async with open_rig("redis", store, store_seed(store), url=url) as rig:
        tenant_id, channel_id = await make_channel(store)
        listener, publisher = await rig.node(), await rig.node()
        await listener.broker.subscribe(tenant_id, channel_id)
        await publisher.publish(tenant_id, channel_id, "one")
        await listener.handler.until(lambda: listener.handler.seqs(tenant_id, channel_id) == [1])

        private_redis.stop(kill=True)  # appendfsync always: nothing answered is lost
        await listener.handler.until(lambda: not listener.broker.ready())
        with pytest.raises(UnavailableError):
            await publisher.publish(tenant_id, channel_id, "into the void")
        private_redis.start()

        await listener.handler.until(listener.broker.ready)
        await listener.handler.until(publisher.broker.ready)
        two = await publisher.publish(tenant_id, channel_id, "two")
        assert two.message.seq == 2
        await listener.handler.until(lambda: listener.handler.seqs(tenant_id, channel_id) == [1, 2])
        await publisher.handler.until(lambda: two.message.id in publisher.handler.persisted_ids())


async def test_entries_held_by_a_dead_worker_are_claimed_by_a_live_one(store: Store) -> None:
    url = await redis_url(claim_idle_ms=200)
    async with open_rig("redis", store, store_seed(store), url=url) as rig:
        rig.tasks[0].cancel()  # no worker of the rig's own: this test plays both
        tenant_id, channel_id = await make_channel(store)
        node = await rig.node()
        sent = [await node.publish(tenant_id, channel_id, f"m{i}") for i in range(3)]

        doomed = open_log(url, consumer="doomed")
        taken = await doomed.read(10, 1000)
        assert [e.message.id for e in taken] == [p.message.id for p in sent]
        await doomed.close()  # dies without marking anything done

        survivor = open_log(url, consumer="survivor")
        claimed = []
        while len(claimed) < 3:
            claimed = await survivor.read(10, 100)
        assert [e.message.id for e in claimed] == [p.message.id for p in sent]
        await survivor.done(claimed)
        await survivor.close()

        await node.handler.until(
            lambda: {p.message.id for p in sent} <= node.handler.persisted_ids()
        )
        client = aioredis.from_url(url.split("?")[0])
        namespace = url.split("namespace=")[1].split("&")[0]
        stream = f"{namespace}:{{{tenant_id}}}:log"
        try:
            assert await client.xlen(stream) == 0
            assert (await client.xpending(stream, GROUP))["pending"] == 0
        finally:
            await client.aclose()


def counting_reads(log: Any) -> list[int]:
    """Each XREADGROUP the log makes on its own (not in ``done``'s pipeline), counted."""
    calls: list[int] = []
    read = log._client.xreadgroup

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await read(*args, **kwargs)

    log._client.xreadgroup = counted
    return calls


async def cycle(log: Any, size: int) -> list[LogEntry]:
    """One worker cycle without the store: read a batch, mark it done."""
    batch: list[LogEntry] = await log.read(size, 100)
    await log.done(batch)
    return batch


@asynccontextmanager
async def worker_less_rig(
    store: Store, claim_idle_ms: int
) -> AsyncIterator[tuple[str, Any, str, str]]:
    """A Redis rig without a worker of its own (the test plays the worker), and a channel:
    (url, node, tenant id, channel id)."""
    url = await redis_url(claim_idle_ms=claim_idle_ms)
    async with open_rig("redis", store, store_seed(store), url=url) as rig:
        rig.tasks[0].cancel()
        tenant_id, channel_id = await make_channel(store)
        yield url, await rig.node(), tenant_id, channel_id


async def test_a_busy_logs_next_batch_comes_in_the_round_trip_of_the_last_ones_done(
    store: Store,
) -> None:
    async with worker_less_rig(store, 60_000) as (url, node, tenant_id, channel_id):
        sent = [await node.publish(tenant_id, channel_id, f"m{i}") for i in range(7)]
        log = open_log(url, consumer="busy")
        try:
            reads = counting_reads(log)
            taken = await cycle(log, 3)
            assert len(reads) == 1
            taken += await cycle(log, 3)  # read ahead by the first cycle's done
            assert len(reads) == 1
            taken += await cycle(log, 3)  # the last one, read ahead too
            assert len(reads) == 1
            assert [e.message.seq for e in taken] == [p.message.seq for p in sent]
            assert await cycle(log, 3) == []  # nothing left: a read of its own, which waits
        finally:
            await log.close()


async def test_a_tenant_added_while_the_log_is_busy_is_read_within_a_few_batches(
    store: Store,
) -> None:
    # The batch read ahead, the one after it (whose done sees the new count and does not
    # read ahead), then a read of its own that lists the tenants again and reads them all.
    async with worker_less_rig(store, 60_000) as (url, node, busy_tenant, busy_channel):
        for i in range(40):
            await node.publish(busy_tenant, busy_channel, f"m{i}")
        log = open_log(url, consumer="busy")
        try:
            await cycle(log, 2)
            await cycle(log, 2)
            new_tenant, new_channel = await make_channel(store)
            late = await node.publish(new_tenant, new_channel, "first of its tenant")
            seen: list[str] = []
            for _ in range(6):
                seen += [e.message.id for e in await cycle(log, 2)]
            assert late.message.id in seen
            assert len(seen) >= 10  # every batch was full or nearly: the log stayed busy
        finally:
            await log.close()


async def test_a_busy_log_still_claims_what_a_dead_worker_held(store: Store) -> None:
    async with worker_less_rig(store, 200) as (url, node, tenant_id, channel_id):
        held = [await node.publish(tenant_id, channel_id, f"held {i}") for i in range(2)]
        dead = open_log(url, consumer="dead")
        assert len(await dead.read(2, 1000)) == 2
        await dead._client.aclose()  # dies without giving anything back
        sent = [await node.publish(tenant_id, channel_id, f"m{i}") for i in range(60)]
        log = open_log(url, consumer="alive")
        try:
            taken: list[LogEntry] = []
            for _ in range(60):
                taken += await cycle(log, 2)  # never idle: each done reads the next batch
                await asyncio.sleep(0.02)
                if {p.message.id for p in held} <= {e.message.id for e in taken}:
                    break
            assert {p.message.id for p in held} <= {e.message.id for e in taken}
            assert len(taken) < len(held) + len(sent)  # claimed while the stream was busy
        finally:
            await log.close()


async def test_a_worker_shutting_down_gives_back_what_it_read_ahead(store: Store) -> None:
    url = await redis_url(claim_idle_ms=60_000)  # only a give-back makes this quick
    async with open_rig("redis", store, store_seed(store), url=url) as rig:
        rig.tasks[0].cancel()
        tenant_id, channel_id = await make_channel(store)
        node = await rig.node()
        sent = [await node.publish(tenant_id, channel_id, f"m{i}") for i in range(5)]

        leaving = open_log(url, consumer="leaving")
        batch = await leaving.read(2, 1000)
        assert len(batch) == 2
        leaving.stop()
        assert await leaving.read(2, 1000) == batch  # the batch in hand, nothing new
        await leaving.close()

        staying = open_log(url, consumer="staying")
        taken: list[LogEntry] = []
        for _ in range(20):
            more = await staying.read(10, 100)
            await staying.done(more)
            taken += more
            if len(taken) >= 5:
                break
        await staying.close()
        assert sorted(e.message.seq for e in taken) == [p.message.seq for p in sent]


async def test_a_full_log_refuses_new_messages_but_not_retries(store: Store) -> None:
    url = await redis_url(max_backlog=3)
    async with open_rig("redis", store, store_seed(store), url=url) as rig:
        rig.tasks[0].cancel()  # nobody drains the log
        tenant_id, channel_id = await make_channel(store)
        node = await rig.node()
        for i in range(3):
            await node.publish(tenant_id, channel_id, f"m{i}", client_msg_id=f"c{i}")

        with pytest.raises(RateLimitedError):
            await node.publish(tenant_id, channel_id, "one too many")
        retry = await node.publish(tenant_id, channel_id, "m0", client_msg_id="c0")
        assert retry.duplicate
        assert retry.message.seq == 1


async def test_an_ack_whose_notice_was_lost_is_found_by_the_sweep(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker, "SWEEP_EVERY_S", 0.2)
    async with open_rig("redis", store, store_seed(store)) as rig:
        rig.tasks[0].cancel()
        tenant_id, channel_id = await make_channel(store)
        node = await rig.node()
        sent = await node.publish(tenant_id, channel_id, "lost notice")

        log = open_log(rig.url, consumer="forgetful")
        entries: list[LogEntry] = []
        while not entries:
            entries = await log.read(10, 100)
        await store.messages.insert_batch(
            [(scope_for_system(tenant_id), e.message) for e in entries]
        )
        # The worker commits and tells a node that no longer exists.
        await log.done([LogEntry(e.entry_id, e.message, "gone") for e in entries])
        await log.close()

        await node.handler.until(lambda: sent.message.id in node.handler.persisted_ids())


async def test_publishing_without_redis_is_unavailable_not_lost(store: Store) -> None:
    url = namespaced("redis://127.0.0.1:1/0")  # nothing listens on port 1
    broker = redis_broker.RedisBroker(url, store_seed(store), node_id="lonely")
    tenant_id, channel_id = await make_channel(store)
    try:
        with pytest.raises(UnavailableError):
            await broker.publish(Draft(tenant_id, channel_id, "general", "alice", "hi", None))
        assert not broker.ready()
    finally:
        await broker.close()


async def test_a_burst_in_one_turn_shares_round_trips_and_keeps_call_order(store: Store) -> None:
    async with open_rig("redis", store, store_seed(store)) as rig:
        tenant_id, channel_id = await make_channel(store)
        listener, publisher = await rig.node(), await rig.node()
        await listener.broker.subscribe(tenant_id, channel_id)
        assert isinstance(publisher.broker, redis_broker.RedisBroker)
        batcher = publisher.broker._batcher
        before = batcher.batches
        # A channel Redis has never seen: every publish of the first batch is answered
        # 'noseq', and the reseeded retry must not let any of them change places.
        count = 60
        sent = await asyncio.gather(
            *(publisher.publish(tenant_id, channel_id, f"m{i}") for i in range(count))
        )
        assert [p.message.seq for p in sent] == list(range(1, count + 1))
        assert [p.message.body for p in sent] == [f"m{i}" for i in range(count)]
        assert batcher.batches - before < count // 10  # shared round trips, not one each
        want = list(range(1, count + 1))
        await listener.handler.until(lambda: listener.handler.seqs(tenant_id, channel_id) == want)
        bodies = [m.body for m in listener.handler.messages if m.channel_id == channel_id]
        assert bodies == [f"m{i}" for i in range(count)]
        ids = {p.message.id for p in sent}
        await publisher.handler.until(lambda: ids <= publisher.handler.persisted_ids())


async def test_bursts_around_a_redis_restart_lose_nothing_acked_and_reuse_no_seq(
    store: Store, private_redis: OwnRedis
) -> None:
    url = namespaced(private_redis.url, claim_idle_ms=500)
    async with open_rig("redis", store, store_seed(store), url=url) as rig:
        tenant_id, channel_id = await make_channel(store)
        node = await rig.node()
        bodies = [f"a{i}" for i in range(20)]
        first = await asyncio.gather(
            *(node.publish(tenant_id, channel_id, b, client_msg_id=b) for b in bodies)
        )
        assert [p.message.seq for p in first] == list(range(1, 21))

        private_redis.stop(kill=True)  # appendfsync always: nothing answered is lost
        outcome = await asyncio.gather(
            *(node.publish(tenant_id, channel_id, f"x{i}") for i in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(o, UnavailableError) for o in outcome)
        private_redis.start()  # the script cache is empty now: NOSCRIPT, loaded, retried
        await node.handler.until(node.broker.ready)

        second = await asyncio.gather(
            *(node.publish(tenant_id, channel_id, f"b{i}") for i in range(20))
        )
        assert [p.message.seq for p in second] == list(range(21, 41))
        retried = await node.publish(tenant_id, channel_id, "a3", client_msg_id="a3")
        assert retried.duplicate
        assert retried.message.seq == 4
        ids = {p.message.id for p in (*first, *second)}
        await node.handler.until(lambda: ids <= node.handler.persisted_ids(), timeout=20)


async def test_a_budget_is_spent_in_the_publish_on_the_window_limits_keeps(
    store: Store, tmp_path: Path
) -> None:
    async with open_rig("redis", store, store_seed(store)) as rig:
        settings = make_settings(
            tmp_path, broker_url=rig.url, rate_publish_user="3/minute", rate_limit_url=""
        )
        limiter = RateLimiter(settings)
        try:
            tenant_id, channel_id = await make_channel(store)
            node = await rig.node()
            key = (tenant_id, "user", f"u{secrets.token_hex(4)}")
            budget = limiter.deferred("publish_user", *key)
            assert budget is not None
            draft = Draft(tenant_id, channel_id, "general", "alice", "hi", None, budget)
            published = [await node.broker.publish(draft) for _ in range(3)]
            assert [p.message.seq for p in published] == [1, 2, 3]
            with pytest.raises(RateLimitedError) as refused:
                await node.broker.publish(draft)
            assert 1.0 <= refused.value.retry_after <= 60
            # Refused means not published: the next message of the channel is seq 4.
            assert (await node.publish(tenant_id, channel_id, "free")).message.seq == 4
            # The limits library's own check of the policy sees the hits made in Redis ...
            with pytest.raises(RateLimitedError):
                await limiter.hit("publish_user", *key)
            # ... and the publish script sees the hits the library made.
            other = (tenant_id, "user", f"v{secrets.token_hex(4)}")
            for _ in range(3):
                await limiter.hit("publish_user", *other)
            spent = limiter.deferred("publish_user", *other)
            with pytest.raises(RateLimitedError):
                await node.broker.publish(draft._replace(budget=spent))
            assert (await node.publish(tenant_id, channel_id, "free")).message.seq == 5
        finally:
            await limiter.close()


def test_budgets_ride_with_a_publish_only_to_the_brokers_own_redis(tmp_path: Path) -> None:
    redis = "redis://127.0.0.1:6379/0"
    cases = [
        ({"broker_url": redis}, True),
        ({"broker_url": redis, "rate_limit_url": redis}, False),  # a Redis of its own
        ({"broker_url": "memory://"}, False),
        ({"broker_url": "memory://", "rate_limit_url": redis}, False),
    ]
    for overrides, defers in cases:
        limiter = RateLimiter(make_settings(tmp_path, **overrides))
        assert (limiter.deferred("publish_user", "t", "user", "u") is not None) is defers
        assert limiter.deferred("publish_connection", "c") is None  # per connection: memory


async def test_publishes_are_queued_in_the_callers_step_and_answered_by_callbacks_in_order(
    store: Store,
) -> None:
    async with open_rig("redis", store, store_seed(store)) as rig:
        tenant_id, channel_id = await make_channel(store)
        node = await rig.node()
        answered: list[Published] = []
        futures = []
        for i in range(50):  # no await in between: each publish has its place already
            draft = Draft(tenant_id, channel_id, "general", "a", f"m{i}", None)
            future = node.broker.publish(draft)
            assert isinstance(future, asyncio.Future)
            future.add_done_callback(lambda f: answered.append(f.result()))
            futures.append(future)
        await asyncio.gather(*futures)
        await asyncio.sleep(0)  # the last callbacks run in the next turn
        assert [p.message.body for p in answered] == [f"m{i}" for i in range(50)]
        assert [p.message.seq for p in answered] == list(range(1, 51))


async def test_a_persisted_notice_hands_over_remembered_messages_and_decodes_the_rest(
    store: Store,
) -> None:
    async with open_rig("redis", store, store_seed(store)) as rig:
        rig.tasks[0].cancel()  # no worker: the test sends the notices
        tenant_id, channel_id = await make_channel(store)
        node = await rig.node()
        broker = node.broker
        assert isinstance(broker, redis_broker.RedisBroker)
        sent = await node.publish(tenant_id, channel_id, 'a "quoted" | body')
        stranger = Message(
            tenant_id, channel_id, 'odd|"name', 7, new_id(), "bob", 'b|"ody', 123, "c|1"
        )
        broker.persisted(encode_lines([sent.message, stranger]))
        assert node.handler.persisted == [sent.message, stranger]
        assert sent.message.id not in broker._unacked  # no sweep will report it again


async def test_a_batch_whose_replies_never_come_fails_after_its_deadline() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the client's handshake, then takes the scripts and never answers.
        connections.append(writer)
        while b"EVALSHA" not in (data := await reader.read(1 << 20)):
            if not data:
                return
            writer.write(b"+OK\r\n" * (data.count(b"\r\n*") + 1))  # one per command

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(port=port)
    batcher = ScriptBatcher(
        client, "return 1", error=lambda e: UnavailableError("down"), read_timeout_s=0.2
    )
    try:
        with pytest.raises(UnavailableError):
            await batcher.submit(ScriptArgs(1, pack(0)))
    finally:
        await batcher.close()
        await client.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_window_is_trimmed_by_the_eighth_and_keeps_its_expiry(
    store: Store, private_redis: OwnRedis
) -> None:
    """The channel's window keeps between ``window`` and ``window * 9/8`` messages, trimmed
    (and its expiry renewed) only when it passes the upper bound, and ``recent`` serves
    exactly what it holds: one LTRIM per eighth of a window of publishes, not one each, and
    the log stream is looked up only while it is empty."""
    url = namespaced(private_redis.url, window=16)
    admin = aioredis.from_url(private_redis.url)
    try:
        async with open_rig("redis", store, store_seed(store), url=url) as rig:
            rig.tasks[0].cancel()  # nobody drains the log: it is never empty again
            tenant_id, channel_id = await make_channel(store)
            node = await rig.node()
            await admin.config_resetstat()
            await node.publish(tenant_id, channel_id, "m1")
            (window_key,) = [k async for k in admin.scan_iter(f"*{channel_id}*", _type="list")]
            lengths = [await admin.llen(window_key)]
            for i in range(1, 60):
                await node.publish(tenant_id, channel_id, f"m{i + 1}")
                lengths.append(await admin.llen(window_key))
                assert 0 < await admin.ttl(window_key) <= 24 * 3600
            stats = await admin.info("commandstats")
            assert all(16 <= n <= 18 for n in lengths[17:]), lengths
            assert max(lengths) == 18
            assert stats["cmdstat_ltrim"]["calls"] <= 60 // 3  # old: one per publish
            assert stats["cmdstat_expire"]["calls"] <= 60 // 3
            assert stats["cmdstat_exists"]["calls"] == 1  # the first publish: no stream yet

            held = await admin.llen(window_key)
            newest_out = 60 - held  # the newest seq the window no longer has
            tail = await node.broker.recent(tenant_id, channel_id, newest_out)
            assert tail is not None
            assert [m.seq for m in tail] == list(range(newest_out + 1, 61))
            assert [m.body for m in tail][-1] == "m60"
            assert await node.broker.recent(tenant_id, channel_id, newest_out - 1) is None
    finally:
        await admin.aclose()
