"""Shared rate-limit hits batched in Redis (server/ratelimit_redis.py) count exactly as the
``limits`` library's moving window does, in the same list, many hits to a round trip."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from protocol.errors import RateLimitedError
from server.ratelimit import RateLimiter
from server.ratelimit_redis import RedisWindowHits
from tests.backends import shared_redis_url
from tests.harness import make_settings


@pytest.fixture
async def storage() -> AsyncIterator[RedisStorage]:
    url = await shared_redis_url()
    store = RedisStorage(f"async+{url}", implementation="redispy", key_prefix="test-rl-batch")
    try:
        yield store
    finally:
        client = store.bridge.get_connection()  # type: ignore[attr-defined]
        await client.aclose()


async def test_concurrent_hits_share_round_trips_and_only_the_budget_passes(
    storage: RedisStorage,
) -> None:
    hits = RedisWindowHits(storage, timeout_s=5.0)
    item = parse("10/minute")
    key = secrets.token_hex(8)
    before = time.time()
    try:
        answers = await asyncio.gather(*(hits.hit(item, "connect", key) for _ in range(50)))
    finally:
        await hits.close()
    counted = [a for a in answers if a is None]
    refused = [a for a in answers if a is not None]
    assert len(counted) == 10
    assert len(refused) == 40
    # Refused until the oldest hit of the window leaves it: one minute after the first.
    assert all(before + 60 <= reset <= time.time() + 60 for reset in refused)
    assert hits._batcher.batches < 50  # many hits to a round trip


async def test_the_library_sees_batched_hits_and_the_batch_sees_the_library(
    storage: RedisStorage,
) -> None:
    hits = RedisWindowHits(storage, timeout_s=5.0)
    library = MovingWindowRateLimiter(storage)
    item = parse("5/minute")
    key = secrets.token_hex(8)
    try:
        for _ in range(3):
            assert await hits.hit(item, "login", key) is None
        stats = await library.get_window_stats(item, "login", key)
        assert stats.remaining == 2
        assert await library.hit(item, "login", key)
        assert await library.hit(item, "login", key)
        assert await hits.hit(item, "login", key) is not None  # the library spent the rest
        assert not await library.hit(item, "login", key)
    finally:
        await hits.close()


async def test_a_spent_connect_budget_is_refused_with_its_retry_time(tmp_path: Path) -> None:
    url = await shared_redis_url()
    settings = make_settings(tmp_path, rate_limit_url=url, rate_ws_connect="2/minute")
    settings = settings.with_(rate_limit_prefix=f"test-{secrets.token_hex(6)}")
    limiter = RateLimiter(settings)
    address = "198.51.100.7"
    try:
        await limiter.hit("ws_connect", address)
        await limiter.hit("ws_connect", address)
        with pytest.raises(RateLimitedError) as refused:
            await limiter.hit("ws_connect", address)
        await limiter.hit("ws_connect", "198.51.100.8")  # another address has its own
    finally:
        await limiter.close()
    assert 1.0 <= refused.value.retry_after <= 60.0
