"""One Lua script run for many callers, many calls to a round trip.

Each ``submit`` queues one call and returns a future of its reply (or of what the call's
``finish`` makes of it, so that a caller can take the answer by a done callback instead of a
task of its own). The calls queued while
a batch is in flight (or in the same turn of the event loop as the first) go to Redis
together as one pipeline when the previous batch has returned, so under load a gateway
makes one round trip, one socket write and one connection checkout for as many publishes
as arrive meanwhile, instead of one each. Exactly one batch is in flight at a time and the
calls of a batch run in the order they were submitted, so calls reach Redis in submission
order: two publishes of one channel are given seqs in the order they were made.

A call may be answered "not yet" (``retry_tag``: the publish script's ``noseq``, the
channel's seq is not in Redis). The batcher then awaits ``before_retry`` with those calls'
contexts (the broker seeds the channels from the store) and runs the calls again before
any later call goes out, so a retried publish keeps its place in line.

A pipeline that fails as a whole (connection lost, timeout) fails every call in it with
``RedisError``; as with a single call, some of them may have run (the publish is then
found again by its idempotency key when the client retries). The script is sent by its
SHA (EVALSHA) and loaded when Redis answers NOSCRIPT, which it does for every call of a
batch at once after a restart, so the calls are retried in order. redis-py's own script
objects are not used in pipelines: they send SCRIPT EXISTS before every pipeline. The
replies of a batch are read under one deadline (the client's socket timeout), not one
timeout context per reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from hiredis import pack_command
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class ScriptArgs(NamedTuple):
    """One call's number of keys, keys and arguments, ``size`` of them, already in Redis's
    wire form (``pack``): a caller packs the parts that never change once and reuses them."""

    size: int
    data: bytes


def pack(*args: Any) -> bytes:
    """``args`` as the bulk strings of a command, without the command's header: packed by
    hiredis, whose header (up to its first line end) is dropped."""
    packed: bytes = pack_command(args)
    return packed[packed.index(b"\r\n") + 2 :]


RETRIES = 2
Finish = Callable[[Any], Any]  # a reply -> the future's result (or raises its error)
_Call = tuple[ScriptArgs, Any, "Finish | None", "asyncio.Future[Any]"]  # args, context, reply


class ScriptBatcher:
    def __init__(
        self,
        client: Redis,
        script: str,
        *,
        retry_tag: bytes | None = None,
        before_retry: Callable[[list[Any]], Awaitable[None]] | None = None,
        error: Callable[[BaseException], BaseException] | None = None,
        read_timeout_s: float = 10.0,
    ) -> None:
        self._client = client
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._head = pack("EVALSHA", self._sha)
        self._retry_tag = retry_tag
        self._before_retry = before_retry
        self._error = error
        self._read_timeout_s = read_timeout_s
        self._queue: list[_Call] = []
        self._pump: asyncio.Task[None] | None = None
        self.batches = 0  # pipelines sent (for tests)

    def submit(
        self, args: ScriptArgs, context: Any = None, finish: Finish | None = None
    ) -> asyncio.Future[Any]:
        """Queue one call; its reply (or error) comes in the future, passed through
        ``finish`` if given (what it raises is the future's error). ``context`` is what
        ``before_retry`` is given for this call. Errors are passed through ``error``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, context, finish, future))
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
        self._fail(queued, RedisError("the broker is closing"))

    async def _run(self) -> None:
        batch: list[_Call] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
                batch = []
        except asyncio.CancelledError:
            self._fail(batch, RedisError("the broker is closing"))
            raise
        finally:
            self._pump = None

    async def _send(self, batch: list[_Call]) -> None:
        self.batches += 1
        try:
            replies = await self._execute([call[0] for call in batch])
            for _ in range(RETRIES):
                again = [i for i, reply in enumerate(replies) if self._again(reply)]
                if not again:
                    break
                if self._before_retry is not None:
                    try:
                        await self._before_retry([batch[i][1] for i in again])
                    except Exception as exc:  # those calls did not run; the rest did
                        for i in again:
                            replies[i] = exc
                        break
                retried = await self._execute([batch[i][0] for i in again])
                for i, reply in zip(again, retried, strict=True):
                    replies[i] = reply
        except (RedisError, OSError) as exc:
            self._fail(batch, exc)
            return
        for (_, _, finish, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # the caller was cancelled
            if isinstance(reply, BaseException):
                future.set_exception(self._mapped(reply))
            elif finish is None:
                future.set_result(reply)
            else:
                try:
                    result = finish(reply)
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)

    def _mapped(self, error: BaseException) -> BaseException:
        if self._error is None:
            return error
        mapped = self._error(error)
        mapped.__cause__ = error
        return mapped

    def _fail(self, batch: list[_Call], cause: BaseException) -> None:
        for *_, future in batch:
            if not future.done():
                error = RedisError(f"pipeline failed: {cause!r}")
                error.__cause__ = cause
                future.set_exception(self._mapped(error))

    def _again(self, reply: Any) -> bool:
        return (
            self._retry_tag is not None
            and isinstance(reply, list)
            and bool(reply)
            and reply[0] == self._retry_tag
        )

    async def _execute(self, calls: list[ScriptArgs]) -> list[Any]:
        replies = await self._pipeline(calls)
        if any(_noscript(reply) for reply in replies):
            # Redis restarted (or its script cache was flushed): none of them ran.
            await self._client.script_load(self._script)
            pairs = list(zip(calls, replies, strict=True))
            again = iter(await self._pipeline([a for a, r in pairs if _noscript(r)]))
            replies = [next(again) if _noscript(r) else r for _, r in pairs]
        return replies

    async def _pipeline(self, calls: list[ScriptArgs]) -> list[Any]:
        # Packed by hiredis (C, the callers' ``pack``) and sent in one write on a pooled
        # connection: redis-py's own pipeline packs every argument in Python, which cost
        # more than the rest of a publish on the gateway (py-spy at 4,000 msgs/s: a sixth
        # of all its samples), and hiredis packing all 21 arguments of every publish was
        # still 7% of the gateway at 10,000 msgs/s.
        head = self._head
        packed = b"".join([b"*%d\r\n%b%b" % (n + 2, head, data) for n, data in calls])
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            # One deadline for the batch: ``timeout=math.inf`` reads a reply without
            # redis-py's own timeout context (a sixth of the batch's cost, py-spy).
            async with asyncio.timeout(self._read_timeout_s):
                for _ in calls:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as exc:  # that call's error; the connection is fine
                        replies.append(exc)
        except TimeoutError as exc:
            await connection.disconnect()
            raise RedisTimeoutError("timeout reading the batch's replies") from exc
        except BaseException:
            # Replies may be left unread on it: never hand it to another caller.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        return replies


def _noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError)
