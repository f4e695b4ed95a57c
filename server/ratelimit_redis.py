"""Shared rate-limit hits in Redis, many to a round trip.

``RateLimiter.hit`` on a Redis counter used the ``limits`` library's asynchronous
moving window: one ``EVALSHA`` through redis-py per hit, then, when refused, a second script
for the window's start. On a cluster gateway that one call per WebSocket connect cost more
than a third of the connect's CPU (py-spy: ``storm`` at ~1,900 connects/s with the per-IP
connect limit in Redis; the same gateway with the counters in memory held 3,200/s,
docs/BENCHMARKS.md). Here each hit is queued on a ``ScriptBatcher`` (the one the broker's
publishes use): the hits of one loop turn, and those made while a batch is out, go as one
pipeline, packed by hiredis.

The algorithm, key and list are the library's (``acquire_moving_window.lua``, one unit):
the same entries in the same list, so ``limits``' own checks of the policy (and the broker's
publish script, ``server.broker.redis_scripts.PUBLISH``) see every hit made here, and a
refused hit answers the window's oldest entry in the same call, from which the library
computes its reset time (the oldest entry plus the window).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from redis.asyncio import Redis

from server.broker.redis_batch import ScriptArgs, ScriptBatcher, pack
from server.broker.redis_scripts import MOVING_WINDOW_HIT

# KEYS: the counter's list. ARGV: now (unix seconds), limit, window seconds.
# -> 1 when the hit is counted, else {0, the oldest entry in the window}
ACQUIRE = (
    MOVING_WINDOW_HIT
    + """
local oldest = moving_window_hit(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if oldest then return {0, oldest} end
return 1
"""
)


class RedisWindowHits:
    """Moving-window hits on the counters of a ``limits`` Redis storage (its keys, its
    client: redis-py through the library's ``redispy`` bridge)."""

    def __init__(self, storage: RedisStorage, *, timeout_s: float) -> None:
        bridge = storage.bridge
        client: object = bridge.get_connection() if isinstance(bridge, RedispyBridge) else None
        if not isinstance(client, Redis):
            raise TypeError("shared rate limits need one Redis server through redis-py")
        self._bridge = bridge
        self._batcher = ScriptBatcher(client, ACQUIRE, read_timeout_s=timeout_s)

    def hit(self, item: RateLimitItem, *identifiers: str) -> asyncio.Future[float | None]:
        """One unit of ``item`` for ``identifiers``, as ``limits``' moving window counts it.
        The future's result: None if counted, else when the refused window frees a unit
        (unix seconds: its oldest entry plus the window). Redis errors are its error."""
        key = self._bridge.prefixed_key(item.key_for(*identifiers))
        expiry = item.get_expiry()
        args = ScriptArgs(5, pack(1, key, repr(time.time()), item.amount, expiry))
        return self._batcher.submit(args, finish=lambda reply: _reset_at(reply, expiry))

    async def close(self) -> None:
        await self._batcher.close()


def _reset_at(reply: Any, expiry: int) -> float | None:
    """None when the hit was counted, else when the window frees a unit (unix seconds)."""
    return None if reply == 1 else float(reply[1]) + expiry
