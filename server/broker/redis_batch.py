"""One Lua script run for many callers, many calls to a round trip.

Each ``submit`` queues one call and returns a future of its reply. The calls queued while
a batch is in flight (or in the same turn of the event loop as the first) go to Redis
together as one pipeline when the previous batch has returned, so under load a gateway
makes one round trip, one socket write and one connection checkout for as many publishes
as arrive meanwhile, instead of one each. Exactly one batch is in flight at a time and the
calls of a batch run in the order they were submitted, so calls reach Redis in submission
order: two publishes of one channel are given seqs in the order they were made.

A pipeline that fails as a whole (connection lost, timeout) fails every call in it with
``RedisError``; as with a single call, some of them may have run (the publish is then
found again by its idempotency key when the client retries). The script is sent by its
SHA (EVALSHA) and loaded when Redis answers NOSCRIPT, which it does for every call of a
batch at once after a restart, so the calls are retried in order. redis-py's own script
objects are not used in pipelines: they send SCRIPT EXISTS before every pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

ScriptArgs = Sequence[Any]  # the number of keys, the keys, then the arguments


class ScriptBatcher:
    def __init__(self, client: Redis, script: str) -> None:
        self._client = client
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._queue: list[tuple[ScriptArgs, asyncio.Future[Any]]] = []
        self._pump: asyncio.Task[None] | None = None
        self.batches = 0  # pipelines sent (for tests)

    def submit(self, args: ScriptArgs) -> asyncio.Future[Any]:
        """Queue one call; its reply (or error) comes in the future."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future))
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name="redis-script-batch")
        return future

    async def close(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        queued, self._queue = self._queue, []
        _fail(queued, RedisError("the broker is closing"))

    async def _run(self) -> None:
        batch: list[tuple[ScriptArgs, asyncio.Future[Any]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
                batch = []
        except asyncio.CancelledError:
            _fail(batch, RedisError("the broker is closing"))
            raise
        finally:
            self._pump = None

    async def _send(self, batch: list[tuple[ScriptArgs, asyncio.Future[Any]]]) -> None:
        self.batches += 1
        try:
            replies = await self._execute([args for args, _ in batch])
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # Redis restarted (or its script cache was flushed): none of them ran.
                await self._client.script_load(self._script)
                calls = zip(batch, replies, strict=True)
                again = iter(await self._execute([a for (a, _), r in calls if _noscript(r)]))
                replies = [next(again) if _noscript(r) else r for r in replies]
        except (RedisError, OSError) as exc:
            _fail(batch, exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # the caller was cancelled
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, calls: list[ScriptArgs]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for args in calls:
                pipe.evalsha(self._sha, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


def _noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError)


def _fail(batch: list[tuple[ScriptArgs, asyncio.Future[Any]]], cause: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            error = RedisError(f"pipeline failed: {cause!r}")
            error.__cause__ = cause
            future.set_exception(error)
